"""The layer-wise warm start (mkvlib.training.layerwise), grouped query statistics and the query-aware key basis."""
import json
from pathlib import Path

import pytest
import torch

from helpers import needs_model, random_projections
from mkvlib.core import attention
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model
from mkvlib.core.pca import fit_pca, query_aware_projections, score_error
from mkvlib.core.projections import Projections, shipped_path
from mkvlib.core.stats import collect_kv_stats
from mkvlib.training import layerwise as lw
from mkvlib.training.layerwise import (Capture, CaptureMismatchError, LayerAttention, LayerwiseConfig,
                                       capture_layer_inputs, fit_layer, fit_layerwise, layer_objective)

FAST = LayerwiseConfig(steps=6, lr=1e-2, warmup_steps=1, batch_size=2, queries=16, eval_sequences=2)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny matrices: one thread (see conftest)."""


def _blocks(n=6, t=32, seed=3):
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(seed))


def _pca(model, blocks):
    return fit_pca(collect_kv_stats(model, blocks, 2, progress=False), model_name=model.mkv_name)


def test_layer_attention_reproduces_the_models_attention_output(any_model):
    """Scale, GQA pairing, causal and sliding-window masks: o_proj of our attention equals the model's."""
    blocks = _blocks(3, 24)
    cap = capture_layer_inputs(any_model, blocks, dtype=torch.float32)
    seen = {}
    hooks = [m.o_proj.register_forward_hook(lambda mod, i, o, l=m.layer_idx: seen.__setitem__(l, o))
             for m in attention.attention_modules(any_model)]
    with torch.no_grad():
        any_model(blocks, use_cache=False)
    for h in hooks:
        h.remove()
    for layer, x in cap.layers.items():
        ours = LayerAttention.of(any_model, layer).output(x.query, x.key, x.value)
        bias = any_model.model.layers[layer].self_attn.o_proj.bias
        theirs = seen[layer] - (bias if bias is not None else 0)
        assert torch.allclose(ours, theirs, atol=1e-6), layer


def test_objective_is_exactly_zero_at_full_rank(any_model):
    blocks = _blocks(3, 24)
    cap = capture_layer_inputs(any_model, blocks, dtype=torch.float32)
    proj = random_projections(any_model, value_mean=True)
    geom = KVGeometry.of(any_model)
    full = torch.full((geom.kv_heads, 2), geom.head_dim)
    for layer, x in cap.layers.items():
        attn = LayerAttention.of(any_model, layer)
        loss = layer_objective(attn, x.query, x.key, x.value, proj.keys[layer], proj.values[layer],
                               proj.value_mean[layer], full)
        assert float(loss) == 0.0
        half = torch.full((geom.kv_heads, 2), geom.head_dim // 2)
        assert float(layer_objective(attn, x.query, x.key, x.value, proj.keys[layer], proj.values[layer],
                                     proj.value_mean[layer], half)) > 1e-4


def test_objective_matches_the_compression_hook(llama):
    """Keys P_K k and values P_V (v - mu) + mu exactly as Compression does, at mixed ranks."""
    from mkvlib.core.compress import attach

    blocks = _blocks(2, 20)
    proj = random_projections(llama, value_mean=True)
    geom = KVGeometry.of(llama)
    ranks = torch.randint(1, geom.head_dim, geom.shape, generator=torch.Generator().manual_seed(0))
    cap = capture_layer_inputs(llama, blocks, dtype=torch.float32, positions="start")
    seen = {}
    hooks = [m.o_proj.register_forward_hook(lambda mod, i, o, l=m.layer_idx: seen.__setitem__(l, i[0]))
             for m in attention.attention_modules(llama)]
    with torch.no_grad(), attach(llama, proj, ranks):
        llama(blocks, use_cache=False)
    for h in hooks:
        h.remove()
    layer = 0   # layer 0's inputs do not depend on compression upstream
    x = cap.layers[layer]
    attn = LayerAttention.of(llama, layer)
    k, v = lw.compress_kv(x.key, x.value, proj.keys[layer], proj.values[layer], proj.value_mean[layer], ranks[layer])
    ours = attn.output(x.query, k, v)
    assert torch.allclose(ours, torch.nn.functional.linear(seen[layer], attn.o_weight), atol=1e-5)


@pytest.mark.parametrize("arch,heads,kv", [("llama", 4, 4), ("qwen2", 4, 2), ("mistral", 4, 1)],
                         ids=["mha", "gqa", "mqa"])
def test_objective_falls_and_rotations_stay_orthogonal(arch, heads, kv):
    model = tiny_model(arch, heads=heads, kv_heads=kv)
    blocks = _blocks(8, 32)
    init = _pca(model, blocks)
    cap = capture_layer_inputs(model, blocks, layers=[1])
    config = LayerwiseConfig(steps=40, lr=2e-2, warmup_steps=2, batch_size=2, queries=None, rank_samples=2,
                             eval_sequences=4)
    fit = fit_layer(cap.layers[1], LayerAttention.of(model, 1), init.keys[1], init.values[1], init.value_mean[1],
                    config, layer=1)
    assert fit.after < 0.9 * fit.before
    eye = torch.eye(init.keys.shape[-1])
    for u in (fit.keys, fit.values):
        assert (u.transpose(-1, -2) @ u - eye).abs().max() < 1e-5
    assert not torch.allclose(fit.keys, init.keys[1])


def test_a_fit_never_leaves_a_layer_worse_than_its_start():
    """A learning rate far too large throws the rotations around: the fit keeps the best bases it checked, the
    start when nothing beat it, and reports that objective."""
    model = tiny_model("llama", heads=4, kv_heads=2)
    blocks = _blocks(8, 32)
    init = _pca(model, blocks)
    cap = capture_layer_inputs(model, blocks, layers=[1])
    wild = LayerwiseConfig(steps=10, lr=200.0, warmup_steps=1, batch_size=2, queries=None, eval_sequences=4)
    fit = fit_layer(cap.layers[1], LayerAttention.of(model, 1), init.keys[1], init.values[1], init.value_mean[1],
                    wild, layer=1)
    assert fit.after == fit.before and torch.equal(fit.keys, init.keys[1].float()), "no check beat the start"
    assert max(fit.history) > 2 * fit.before, "the rotations really did go astray (sampled-rank losses)"
    half = torch.full((2, 2), 8, dtype=torch.long)
    attn, ev = LayerAttention.of(model, 1), [t[:4].float() for t in (cap.layers[1].query, cap.layers[1].key,
                                                              cap.layers[1].value)]
    kept = float(layer_objective(attn, *ev, fit.keys, fit.values, init.value_mean[1].float(), half))
    assert kept == pytest.approx(fit.after, rel=1e-4), "the bases returned are the ones whose objective is reported"


def test_a_layer_subset_leaves_the_other_layers_at_init(llama):
    blocks = _blocks()
    init = _pca(llama, blocks)
    cap = capture_layer_inputs(llama, blocks, layers=[1])
    proj = fit_layerwise(llama, cap, init, FAST, layers=[1], corpus="random")
    assert torch.equal(proj.keys[0], init.keys[0]) and torch.equal(proj.values[0], init.values[0])
    assert not torch.allclose(proj.keys[1], init.keys[1])
    assert torch.equal(proj.value_mean, init.value_mean)
    assert proj.orthogonality_error() < 1e-5
    assert proj.meta["kind"] == "layerwise" and proj.meta["layerwise"]["layers"] == [1]
    assert proj.meta["corpus"] == "random" and proj.meta["layerwise"]["steps_per_layer"] == FAST.steps
    with pytest.raises(ValueError, match="not in the capture"):
        fit_layerwise(llama, cap, init, FAST, layers=[0])
    with pytest.raises(ValueError, match="do not exist"):
        fit_layerwise(llama, cap, init, FAST, layers=[2])


def test_order_does_not_matter_and_resume_gives_the_same_result(llama, tmp_path):
    blocks = _blocks()
    init = _pca(llama, blocks)
    cap = capture_layer_inputs(llama, blocks)
    whole = fit_layerwise(llama, cap, init, FAST, folder=tmp_path / "a")
    # one layer first, then the rest (the finished layer is read back, not fitted again)
    fit_layerwise(llama, cap, init, FAST, layers=[1], folder=tmp_path / "b")
    lines = []
    resumed = fit_layerwise(llama, cap, init, FAST, folder=tmp_path / "b", log=lines.append)
    assert torch.equal(whole.keys, resumed.keys) and torch.equal(whole.values, resumed.values)
    assert resumed.meta["layerwise"]["resumed_layers"] == [1]
    assert len(lines) == 2 and "resumed" in lines[1] and "resumed" not in lines[0]
    # a finished layer fitted with other settings is an error, never mixed in
    with pytest.raises(ValueError, match="other config"):
        fit_layerwise(llama, cap, init, LayerwiseConfig(steps=7, lr=1e-2, queries=16), folder=tmp_path / "b")
    with pytest.raises(ValueError, match="other init"):
        fit_layerwise(llama, cap, random_projections(llama), FAST, folder=tmp_path / "b")


def test_an_interrupted_run_leaves_finished_layers_only_and_resumes(llama, tmp_path, monkeypatch):
    blocks = _blocks()
    init = _pca(llama, blocks)
    cap = capture_layer_inputs(llama, blocks)
    whole = fit_layerwise(llama, cap, init, FAST)
    real = lw.fit_layer

    def interrupt_layer_1(*args, **kw):
        if kw.get("layer", args[6] if len(args) > 6 else None) == 1:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(lw, "fit_layer", interrupt_layer_1)
    with pytest.raises(KeyboardInterrupt):
        fit_layerwise(llama, cap, init, FAST, folder=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["layer000.safetensors"]
    monkeypatch.setattr(lw, "fit_layer", real)

    def fail_write(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", fail_write)
    with pytest.raises(KeyboardInterrupt):   # interrupted while writing layer 1: nothing half-written
        fit_layerwise(llama, cap, init, FAST, folder=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["layer000.safetensors"]
    monkeypatch.undo()
    resumed = fit_layerwise(llama, cap, init, FAST, folder=tmp_path / "run")
    assert torch.equal(whole.keys, resumed.keys) and torch.equal(whole.values, resumed.values)


def test_capture_round_trip_and_another_models_capture_is_a_clear_error(tmp_path):
    model = tiny_model("llama", heads=4, kv_heads=2)
    blocks = _blocks(3, 16)
    cap = capture_layer_inputs(model, blocks, corpus="random")
    path = cap.save(tmp_path / "cap.safetensors")
    back = Capture.load(path, model)
    for layer in cap.layers:
        for name in ("query", "key", "value"):
            assert torch.equal(getattr(cap.layers[layer], name), getattr(back.layers[layer], name))
    assert back.info["corpus"] == "random" and back.tokens == 48 and back.seq_len == 16
    assert back.layers[0].query.dtype == torch.float16
    same_shape_other_weights = tiny_model("llama", heads=4, kv_heads=2, seed=1)
    with pytest.raises(CaptureMismatchError, match="another model.*attention_hash"):
        Capture.load(path, same_shape_other_weights)
    with pytest.raises(CaptureMismatchError, match="another model"):
        fit_layerwise(same_shape_other_weights, back, random_projections(same_shape_other_weights), FAST)
    other_layout = tiny_model("llama", heads=4, kv_heads=4)
    with pytest.raises(CaptureMismatchError, match="geometry"):
        back.check_model(other_layout)
    # truncated / not a capture: clear errors; an interrupted save leaves nothing behind
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):
        Capture.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="not a capture"):
        Capture.load(random_projections(model).save(tmp_path / "proj.safetensors"))


def test_capture_stops_after_the_last_layer_wanted_and_checks_float16_range(llama):
    blocks = _blocks(2, 16)
    cap = capture_layer_inputs(llama, blocks, layers=[0])
    assert sorted(cap.layers) == [0]
    full = capture_layer_inputs(llama, blocks, dtype=torch.float32)
    assert torch.allclose(cap.layers[0].key.float(), full.layers[0].key, atol=1e-3)
    with torch.no_grad():
        llama.model.layers[0].self_attn.q_proj.weight.mul_(1e7)
    with pytest.raises(ValueError, match="bfloat16"):
        capture_layer_inputs(llama, blocks, layers=[0])
    assert capture_layer_inputs(llama, blocks, layers=[0], dtype=torch.bfloat16).layers[0].query.isfinite().all()


def test_parse_layers():
    assert lw.parse_layers("0-2,5", 8) == [0, 1, 2, 5]
    assert lw.parse_layers(None, 3) == [0, 1, 2]
    for bad in ("3-1", "a", "", "0-9"):
        with pytest.raises(ValueError):
            lw.parse_layers(bad, 8)


# --- query statistics and the query-aware basis ------------------------------------------------------------

def test_grouped_query_moments_equal_brute_force(any_model):
    blocks = _blocks(3, 12)
    stats = collect_kv_stats(any_model, blocks, batch_size=2, progress=False, queries=True)
    cap = capture_layer_inputs(any_model, blocks, dtype=torch.float32)
    geom = KVGeometry.of(any_model)
    rep = geom.heads // geom.kv_heads
    for layer, x in cap.layers.items():
        q = x.query.double()                                              # (N, H, T, d)
        n = q.shape[0] * q.shape[2]
        for g in range(geom.kv_heads):
            heads = q[:, g * rep:(g + 1) * rep].reshape(-1, geom.head_dim)
            assert torch.allclose(stats.queries.second_moment()[layer, g], heads.T @ heads / n, atol=1e-6)
            assert torch.allclose(stats.queries.mean()[layer, g], heads.sum(0) / n, atol=1e-6)
    with pytest.raises(KeyError, match="queries=True"):
        collect_kv_stats(any_model, blocks, progress=False)["queries"]


def _empirical_score_error(cap, keys, key_mean, rank):
    """Mean over causal (query, key) pairs of (q^T (I - P)(k - mu_k))^2, summed over heads, per layer."""
    out = []
    for layer, x in sorted(cap.layers.items()):
        q, k = x.query.double(), x.key.double() - key_mean[layer][None, :, None, :].double()
        G, T = k.shape[1], k.shape[2]
        u = keys[layer].double()[..., :rank]
        res = k - torch.einsum("bgsd,gde->bgse", k, u @ u.transpose(-1, -2))
        qg = q.reshape(q.shape[0], G, -1, T, q.shape[-1])
        e = torch.einsum("bgrtd,bgsd->bgrts", qg, res)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        out.append(float(e.pow(2).masked_select(mask).mean()) * e.shape[1] * e.shape[2])
    return torch.tensor(out)


@pytest.mark.parametrize("arch,heads,kv", [("llama", 4, 4), ("llama", 4, 2), ("mistral", 4, 1), ("gemma3", 4, 2)],
                         ids=["mha", "gqa", "mqa", "gemma3"])
def test_query_aware_basis_is_orthogonal_and_keeps_scores_better_than_pca(arch, heads, kv):
    model = tiny_model(arch, heads=heads, kv_heads=kv)
    blocks = _blocks(8, 32)
    # positions from 0: the empirical check below pairs each query with the keys of its own block
    stats = collect_kv_stats(model, blocks, 2, progress=False, queries=True, model_name=model.mkv_name,
                             positions="start")
    pca = fit_pca(stats, model_name=model.mkv_name)
    qa = query_aware_projections(stats, model_name=model.mkv_name)
    assert qa.orthogonality_error() < 1e-5 and qa.meta["kind"] == "query-aware"
    assert torch.equal(qa.values, pca.values) and torch.equal(qa.value_mean, pca.value_mean)
    half = KVGeometry.of(model).head_dim // 2
    # the closed-form criterion it minimises over unconstrained maps, and the score error measured on the tokens
    assert (score_error(stats, qa.keys, half) <= score_error(stats, pca.keys, half) * (1 + 1e-9)).all()
    cap = capture_layer_inputs(model, blocks, dtype=torch.float32, positions="start")
    mu = stats.keys.mean()
    assert (_empirical_score_error(cap, qa.keys, mu, half) <= _empirical_score_error(cap, pca.keys, mu, half)).all()
    # nested: every prefix spans the query-side subspace of the optimal rank-r map, so rank d is exact
    assert score_error(stats, qa.keys, 2 * half).abs().max() < 1e-9


def test_other_query_aware_bases_and_bad_method(llama):
    stats = collect_kv_stats(llama, _blocks(4, 16), 2, progress=False, queries=True)
    for method in ("key-range", "whitened", "sym"):
        assert query_aware_projections(stats, method).orthogonality_error() < 1e-5
    with pytest.raises(ValueError, match="choose from"):
        query_aware_projections(stats, "nope")
    with pytest.raises(KeyError, match="queries"):
        query_aware_projections(collect_kv_stats(llama, _blocks(2, 16), 2, progress=False))


def test_capture_statistics_give_the_same_query_aware_basis(llama):
    blocks = _blocks(4, 16)
    cap = capture_layer_inputs(llama, blocks, dtype=torch.float32)
    a = query_aware_projections(cap.stats())
    b = query_aware_projections(collect_kv_stats(llama, blocks, 2, progress=False, queries=True))
    assert torch.allclose(a.keys, b.keys, atol=1e-4) and torch.allclose(a.values, b.values, atol=1e-4)


# --- the command line (embedded model) -----------------------------------------------------------------------

def test_warmstart_refuses_held_out_text_and_bad_arguments(tmp_path, capsys):
    from mkvlib.cli import main

    out = str(tmp_path / "w.safetensors")
    for argv, msg in ((["--corpus", "wikitext2-test"], "evaluation"), (["--corpus", "books-heldout"], "held"),
                      (["--corpus", "pydoc-train", "--out", "x.bin"], "safetensors"),
                      (["--corpus", "pydoc-train", "--init", "nope"], "query-aware")):
        argv = ["warmstart", "--out", out] + argv
        assert main(argv) == 2
        assert msg in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@needs_model
def test_warmstart_command_fits_a_layer_subset_and_resumes(tmp_path, capsys):
    from mkvlib.cli import main

    out = tmp_path / "w.safetensors"
    argv = ["warmstart", "--json", "--corpus", "pydoc-train", "--tokens", "512", "--seq-len", "128",
            "--steps", "2", "--queries", "16", "--layers", "1", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    proj = Projections.load(out)
    pca = Projections.load(shipped_path("pca", proj.meta["model"]))
    assert torch.equal(proj.keys[0], pca.keys[0]) and not torch.equal(proj.keys[1], pca.keys[1])
    record = json.loads(out.with_suffix(".json").read_text())
    for key in ("command", "tokens", "wall_time_s", "hardware", "objective_at_50"):
        assert key in record
    assert summary["layers_fitted"] == 1 and record["tokens"] == 512
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err      # finished layers, no --resume
    assert main(argv[:-2] + ["--layers", "0-1", "--resume", "--out", str(out)]) == 0
    capsys.readouterr()
    again = Projections.load(out)
    assert torch.equal(again.keys[1], proj.keys[1]) and not torch.equal(again.keys[0], pca.keys[0])
    assert json.loads(out.with_suffix(".json").read_text())["resumed_layers"] == [1]


@needs_model
def test_fit_pca_query_aware_command(tmp_path, capsys):
    from mkvlib.cli import main

    out = tmp_path / "qa.safetensors"
    assert main(["fit-pca", "--json", "--query-aware", "--corpus", "pydoc-train", "--tokens", "256",
                 "--seq-len", "128", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "query-aware" and result["score_error_vs_pca@50%"] < 1
    assert Projections.load(out).orthogonality_error() < 1e-5



@needs_model
def test_warmstart_from_the_query_aware_basis_of_the_same_text(tmp_path, capsys):
    from mkvlib.cli import main

    out, cap = tmp_path / "q.safetensors", tmp_path / "cap.safetensors"
    argv = ["warmstart", "--json", "--init", "query-aware", "--corpus", "pydoc-train", "--tokens", "256",
            "--seq-len", "128", "--steps", "1", "--queries", "8", "--layers", "29", "--capture", str(cap),
            "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    proj = Projections.load(out)
    assert proj.meta["kind"] == "layerwise" and proj.meta["layerwise"]["init_kind"] == "query-aware"
    assert proj.orthogonality_error() < 1e-5
    assert Capture.load(cap).tokens == 256        # the capture was kept; a second run reads it back
    out2 = tmp_path / "q2.safetensors"
    assert main(argv[:-1] + [str(out2)]) == 0
    assert "read the captured inputs" in capsys.readouterr().err
    assert torch.equal(Projections.load(out2).keys, proj.keys)
    # a capture at other positions is refused, and nothing is written
    out3 = tmp_path / "q3.safetensors"
    assert main(argv[:-1] + [str(out3), "--positions", "start"]) == 2
    assert "--positions spread" in capsys.readouterr().err and not out3.exists()

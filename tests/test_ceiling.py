"""The ceiling of fixed projections (mkvlib.ceiling) on tiny random models: the per-sequence oracle is exact at
full rank and reconstructs every sequence at least as well as any fixed basis, bad fractions are refused, and
the command writes its record."""
import json

import pytest
import torch

from helpers import random_projections
from mkvlib.core import attention
from mkvlib import ceiling
from mkvlib.core.geometry import KVGeometry
from mkvlib.core.pca import fit_pca
from mkvlib.core.stats import collect_kv_stats
from mkvlib.suite import evaluate_suite


def text(seed=0, n=3, seq_len=24):
    return torch.randint(0, 128, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def kv_before_and_after(model, hook, ids):
    """{layer: (key, value) as attention received them, (key, value) after ``hook``}."""
    seen = {}

    def before(module, q, k, v):
        seen[module.layer_idx] = [(k.detach().clone(), v.detach().clone())]
        return q, k, v

    def after(module, q, k, v):
        seen[module.layer_idx].append((k.detach().clone(), v.detach().clone()))
        return q, k, v

    with attention.install(model, hook=before), attention.install(model, hook=hook), \
            attention.install(model, hook=after), torch.no_grad():
        model(ids, use_cache=False)
    return seen


def fixed_basis(x, basis, rank, mean=None):
    """What simulated compression makes of keys or values (B, G, T, d): P (x - mu) + mu, P onto ``rank`` columns."""
    u = basis[..., :rank].to(x.dtype)                                         # (G, d, r)
    mu = torch.zeros(x.shape[1], x.shape[-1], dtype=x.dtype) if mean is None else mean.to(x.dtype)
    mu = mu[None, :, None, :]
    return (x - mu) @ u @ u.transpose(-1, -2) + mu


def per_sequence_error(x, y):
    """(B, G): Frobenius norm of each sequence's and head's reconstruction error, and the same with each error's
    mean over tokens removed (what attention sees of a key error: a constant offset only shifts the logits of
    every key of a query alike)."""
    e = (x - y).double()
    return e.pow(2).sum((-1, -2)).sqrt(), (e - e.mean(2, keepdim=True)).pow(2).sum((-1, -2)).sqrt()


def test_oracle_at_full_rank_is_exact(llama, one_thread):
    ids = text()
    with ceiling.SequenceSVDOracle(llama, 1.0) as oracle:
        rows = evaluate_suite(llama, oracle, [1.0, 0.5], {"a": ids, "b": text(1)}, batch_size=2)
    full = [r for r in rows if r["setting"] == 0]
    assert all(abs(r["kl_to_base"]) < 1e-6 and r["top1_agreement"] == 1.0 for r in full)
    assert all(abs(r["perplexity_ratio"] - 1) < 1e-5 for r in full)
    assert all(r["kl_to_base"] > 1e-4 for r in rows if r["setting"] == 1)         # rank d/2 is not free
    seen = kv_before_and_after(llama, ceiling.oracle_hook(1.0), ids)
    for (k, v), (k_out, v_out) in seen.values():
        assert torch.allclose(k_out, k, atol=1e-5) and torch.allclose(v_out, v, atol=1e-5)
    assert llama.config._attn_implementation == "sdpa"                          # detached: the model is as before


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_oracle_reconstructs_each_sequence_at_least_as_well_as_any_fixed_basis(llama, one_thread, fraction):
    ids = text(seq_len=32)
    d = KVGeometry.of(llama).head_dim
    rank = round(fraction * d)
    pca = fit_pca(collect_kv_stats(llama, ids, progress=False, positions="start"))   # fitted on this very text
    pca_centred = fit_pca(collect_kv_stats(llama, ids, progress=False, positions="start"), center_values=True)
    fixed = [random_projections(llama, seed) for seed in range(4)] + [pca, pca_centred]
    seen = kv_before_and_after(llama, ceiling.oracle_hook(fraction), ids)
    for layer, ((k, v), (k_oracle, v_oracle)) in seen.items():
        k_err, k_err_offset_free = per_sequence_error(k, k_oracle)
        v_err, _ = per_sequence_error(v, v_oracle)
        assert torch.allclose(k_oracle, ceiling.best_rank_reconstruction(k, rank), atol=1e-6)
        for proj in fixed:
            k_fixed = fixed_basis(k, proj.keys[layer], rank)                    # keys: P k, as compression does
            v_fixed = fixed_basis(v, proj.values[layer], rank, proj.value_mean[layer])
            fixed_k_err, fixed_k_offset_free = per_sequence_error(k, k_fixed)
            assert (k_err <= fixed_k_err * (1 + 1e-6) + 1e-6).all()
            assert (k_err_offset_free <= fixed_k_offset_free * (1 + 1e-6) + 1e-6).all()
            assert (v_err <= per_sequence_error(v, v_fixed)[0] * (1 + 1e-6) + 1e-6).all()
        assert (k_err > 0).all()                                                 # a real truncation happened


def test_oracle_ranks_per_entry_and_the_uniform_hook(llama, one_thread):
    """Ranks may differ per (layer, KV head, K/V); a uniform tensor gives what the uniform hook gives; switched off,
    the model is the uncompressed one."""
    ids = text(seq_len=20)
    geom = KVGeometry.of(llama)
    identity = lambda m, q, k, v: (q, k, v)                                      # noqa: E731
    plain = kv_before_and_after(llama, identity, ids)
    uniform = kv_before_and_after(llama, ceiling.oracle_hook(0.5), ids)
    ranks = torch.randint(0, geom.head_dim + 1, geom.shape, generator=torch.Generator().manual_seed(3))
    with ceiling.SequenceSVDOracle(llama, torch.full(geom.shape, geom.head_dim // 2)) as oracle:
        assert oracle.budget == 0.5
        same = kv_before_and_after(llama, identity, ids)                        # the oracle runs first
        oracle.set_ranks(ranks)
        mixed = kv_before_and_after(llama, identity, ids)
        oracle.enabled = False
        off = kv_before_and_after(llama, identity, ids)
    for layer in uniform:
        assert torch.allclose(same[layer][0][0], uniform[layer][1][0], atol=1e-6)
        assert torch.equal(off[layer][0][0], plain[layer][0][0]) and torch.equal(off[layer][0][1], plain[layer][0][1])
    (k, v), ((k_out, v_out), _) = plain[0][0], mixed[0]                         # layer 0 sees the same input
    for g in range(geom.kv_heads):
        assert torch.allclose(k_out[:, g:g + 1], ceiling.best_rank_reconstruction(k[:, g:g + 1], int(ranks[0, g, 0])),
                              atol=1e-6)
        assert torch.allclose(v_out[:, g:g + 1], ceiling.best_rank_reconstruction(v[:, g:g + 1], int(ranks[0, g, 1])),
                              atol=1e-6)


@pytest.mark.parametrize("fraction", [0, 0.0, -0.5, 1.5, float("nan"), "0.5", True, None])
def test_bad_fractions_are_clear_errors(llama, fraction):
    with pytest.raises(ValueError, match=r"fraction must be a fraction in \(0, 1\]"):
        ceiling.oracle_hook(fraction)
    if fraction != 0 or isinstance(fraction, float):                             # the int 0 is a rank: keep none
        with pytest.raises(ValueError, match="ranks must be|budget must be"):
            ceiling.SequenceSVDOracle(llama, fraction)
    with pytest.raises(ValueError, match="whole numbers|shape"):
        ceiling.SequenceSVDOracle(llama, torch.full((1, 1, 2), 0.5))
    assert llama.config._attn_implementation == "sdpa"                          # nothing was installed
    with pytest.raises(ValueError, match="ranks must be one int or 2 ints"):
        ceiling.best_rank_reconstruction(torch.zeros(1, 2, 8, 4), 5)
    with pytest.raises(ValueError, match=r"\(B, G, T, d\)"):
        ceiling.best_rank_reconstruction(torch.zeros(2, 8, 4), 2)


def test_oracle_refuses_a_cache_it_cannot_see_whole(llama, one_thread):
    with ceiling.SequenceSVDOracle(llama, 0.5), torch.no_grad(), pytest.raises(RuntimeError, match="whole sequence"):
        llama.generate(text(n=1, seq_len=8), max_new_tokens=2, do_sample=False)


def test_the_command_writes_a_record(tiny_model_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)                             # the suite is pydoc-test alone
    out = tmp_path / "ceiling.json"
    argv = ["--out", str(out), "--model", str(tiny_model_folder), "--projections",
            str(tiny_model_folder / "pca.safetensors"), "--allocation", "uniform", "--tokens", "128", "--seq-len",
            "64", "--budgets", "0.5,0.25", "--layerwise-steps", "2", "--kd-steps", "1", "--batch-size", "2"]
    assert ceiling.main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["command"] == "python -m mkvlib.ceiling " + " ".join(argv)
    assert rec["domains"] == ["pydoc-test"] and rec["budgets"] == [0.5, 0.25] and rec["schedule"] == [4, 8]
    labels = [m["label"] for m in rec["methods"]]
    assert labels == ["pca", ceiling.PCA_IN_SAMPLE, ceiling.LAYERWISE_IN_SAMPLE, ceiling.KD_IN_SAMPLE,
                      ceiling.ORACLE, ceiling.ORACLE_UNCENTRED]
    kinds = {m["label"]: m["kind"] for m in rec["methods"]}
    assert (kinds[ceiling.ORACLE], kinds[ceiling.KD_IN_SAMPLE], kinds["pca"]) == ("oracle", "in-sample", "shipped")
    assert len(rec["rows"]) == len(labels) * 2 * 2                               # methods x budgets x (domain, mean)
    for r in rec["rows"]:
        assert r["allocation"] == "uniform" and r["target_budget"] in (0.5, 0.25) and r["kl_to_base"] >= -1e-6
        assert 0 <= r["top1_agreement"] <= 1 and r["perplexity_ratio"] > 0
    assert rec["methods"][0]["fingerprint"] == {r["projections"] for r in rec["rows"] if r["method"] == "pca"}.pop()
    fitted = {m["label"]: m["fit_fingerprint"] for m in rec["methods"][1:]}          # fitted here, never written
    assert fitted[ceiling.ORACLE] is None and len({v for v in fitted.values() if v}) == 3
    assert all("fingerprint" not in m for m in rec["methods"][1:])
    assert rec["methods"][3]["made"]["steps"] == 1 and rec["methods"][3]["fit_cpu_s"] >= 0
    assert rec["cpu_time_s"]["total"] > 0 and "hardware" in rec and rec["targets"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ceiling.json"]        # no weights written anywhere


@pytest.mark.parametrize("argv, match", [
    (["--budgets", "0.5,1.5"], "fractions in (0, 1]"),
    (["--allocation", "adaptive"], "must include uniform"),
    (["--allocation", "greedy"], "uniform and/or adaptive"),
    (["--kd-steps", "3", "--layerwise-steps", "0"], "give --layerwise-steps"),
    (["--kd-steps", "-1"], "must be >= 0"),
    (["--passkey-lengths", "8k"], "comma-separated token counts"),
    (["--passkey-lengths", "1024", "--passkey-n", "0"], "--passkey-n >= 1"),
    (["--projections", "trained,trained"], "the same projections twice"),
])
def test_command_argument_errors(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        ceiling.main(["--out", str(tmp_path / "x.json"), *argv])
    assert stop.value.code == 2 and match in capsys.readouterr().err


def test_the_passkey_mode_scores_the_oracle_teacher_forced(tiny_model_folder, tmp_path, capsys):
    out = tmp_path / "passkey.json"
    argv = ["--out", str(out), "--model", str(tiny_model_folder), "--projections",
            str(tiny_model_folder / "pca.safetensors"), "--allocation", "uniform", "--budgets", "0.5,0.25",
            "--passkey-lengths", "320", "--passkey-n", "2"]
    assert ceiling.main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["command"] == "python -m mkvlib.ceiling " + " ".join(argv) and len(rec["depths"]) == 2
    compressed = [(ceiling.ORACLE, "uniform"), (ceiling.ORACLE_UNCENTRED, "uniform"), ("pca", "uniform")]
    assert [(r["method"], r["allocation"], r["budget"]) for r in rec["rows"]] == [("uncompressed", None, 1.0)] + [
        (m, a, b) for b in (0.5, 0.25) for m, a in compressed]
    for r in rec["rows"]:
        assert r["length"] == 320 and r["n"] == 2 and r["correct"] == sum(r["found"])
        assert all(v <= 0 for v in r["key_logp"]) and r["mean_key_logp"] == pytest.approx(sum(r["key_logp"]) / 2, abs=1e-3)
    base, oracle = rec["rows"][0], rec["rows"][1]
    assert oracle["key_logp"] != base["key_logp"] and rec["budgets"] == [0.5, 0.25]


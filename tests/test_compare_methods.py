"""The comparison bench's methods on tiny random Llama models (MHA, GQA, MQA): exact bytes, exactness without
compression, references for eviction and the SVD latents, at_bytes, and the reasons a method cannot apply."""
import copy
import importlib.util

import pytest
import torch
from helpers import random_projections

from mkvlib.compare import REGISTRY, BytesUnreachableError, Runner, at_bytes, full_bytes_per_token, get_method
from mkvlib.compare.methods.composed import dequantize, quantize
from mkvlib.compare.methods.eviction import kept_tokens
from mkvlib.compare.methods.quant import held_bytes, quantized_bytes
from mkvlib.compare.methods.svd import weight_bases
from mkvlib.compat import cache_kwargs
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model

HEADS = [(4, 4), (4, 2), (4, 1)]
HEAD_IDS = ["mha", "gqa", "mqa"]
PREFIX, TARGET = 12, 6
HAS_QUANTO = importlib.util.find_spec("optimum") is not None and importlib.util.find_spec("optimum.quanto") is not None
HAS_HQQ = importlib.util.find_spec("hqq") is not None


@pytest.fixture(params=HEADS, ids=HEAD_IDS, scope="module")
def model(request):
    heads, kv = request.param
    return tiny_model("llama", heads=heads, kv_heads=kv)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 128, (2, PREFIX + TARGET), generator=torch.Generator().manual_seed(3))


def methods_for(model):
    """Every method configured for a tiny model (random projections, uniform ranks, small windows)."""
    proj = random_projections(model)
    found = {
        "uncompressed": get_method("uncompressed"),
        "pca": get_method("pca", projections=proj),
        "matryoshka": get_method("matryoshka", projections=proj, allocation="uniform"),
        "svd": get_method("svd"),
        "think": get_method("think", window=4),
        "streaming": get_method("streaming", sinks=2),
        "snapkv": get_method("snapkv", window=4, kernel=3),
        "matryoshka+quant": get_method("matryoshka+quant", projections=proj, allocation="uniform",
                                       budgets=(1.0, 0.5), bits=(8, 4, 2), group_size=8),
        "streaming+matryoshka": get_method("streaming+matryoshka", projections=proj, allocation="uniform",
                                           budgets=(1.0, 0.5), keep=(1.0, 0.5), sinks=2),
    }
    if HAS_HQQ:
        found["quant"] = get_method("quant", backend="hqq", bits=(8, 4, 2), residual_length=16)
    return found


def first(method, model):
    """The least compressed setting."""
    return method.settings(model)[0]


def reference(model, tokens):
    return Runner(model).score(tokens[:, :PREFIX], tokens[:, PREFIX:])


def test_every_method_is_registered():
    assert {"uncompressed", "pca", "matryoshka", "svd", "think", "quant", "streaming", "snapkv",
            "matryoshka+quant", "streaming+matryoshka"} <= set(REGISTRY)


@pytest.mark.usefixtures("one_thread")
def test_no_compression_reproduces_the_uncompressed_logits(model, tokens):
    """100% budget, keep everything, 8 bits (the quantizers' least compression) against Runner.score."""
    expected = reference(model, tokens)
    for name, method in methods_for(model).items():
        assert method.unsupported(model) is None, name
        setting = first(method, model)
        with method.runner(model, setting) as run:
            got = run.score(tokens[:, :PREFIX], tokens[:, PREFIX:])
        tol = 5e-3 if setting.get("nbits") == 8 else 1e-5
        assert got.shape == expected.shape, name
        assert (got - expected).abs().max() <= tol, (name, float((got - expected).abs().max()))
        assert model.config._attn_implementation == "sdpa", f"{name} did not restore the model"
        assert model.__dict__.get("_mkv_cache_handle") is None, name


@pytest.mark.usefixtures("one_thread")
def test_generate_without_compression_equals_uncompressed(model, tokens):
    expected = Runner(model).generate(tokens[:1], 5)
    for name, method in methods_for(model).items():
        if name in ("quant", "matryoshka+quant"):
            continue  # even 8 bits may flip a near-tie of a random model; covered by the logits test
        with method.runner(model, first(method, model)) as run:
            assert torch.equal(run.generate(tokens[:1], 5), expected), name


def filled(method, model, setting, tokens):
    """The cache a runner holds after scoring (prefix stored, then the targets appended)."""
    with method.runner(model, setting) as run:
        run.score(tokens[:, :PREFIX], tokens[:, PREFIX:])
        return run.cache


@pytest.mark.usefixtures("one_thread")
def test_bytes_reported_are_the_bytes_the_filled_cache_holds(model, tokens):
    """Per token (and fixed) bytes of the report == the bytes of the tensors a filled real cache holds."""
    B, full = tokens.shape[0], full_bytes_per_token(model)
    methods = methods_for(model)
    for name in ("pca", "matryoshka", "svd", "matryoshka+quant"):
        method = methods[name]
        for setting in method.settings(model):
            report, cache = method.bytes(model, setting, PREFIX + TARGET), filled(method, model, setting, tokens)
            assert cache.stored_bytes() == B * (PREFIX + TARGET) * report.per_token, (name, setting)
            assert cache.projection_bytes() == report.fixed, (name, setting)
            assert report.fraction == report.per_token / full
    think = methods["think"]
    for setting in think.settings(model):
        report, cache = think.bytes(model, setting, PREFIX + TARGET), filled(think, model, setting, tokens)
        assert cache.stored_bytes() == B * (PREFIX + TARGET) * report.per_token, setting
        assert cache.index_bytes() == B * report.fixed, setting
        assert report.fraction == pytest.approx((1 + report.detail["key_channels"] / 16) / 2)
    for name in ("streaming", "snapkv", "streaming+matryoshka"):
        method = methods[name]
        for setting in method.settings(model):
            report, cache = method.bytes(model, setting, PREFIX), filled(method, model, setting, tokens)
            appended = TARGET * report.per_token / report.fraction * (1 if name != "streaming+matryoshka"
                                                                      else setting.get("budget"))
            # the prompt keeps kept_tokens(P) tokens; the targets are appended at the same width
            assert cache.stored_bytes() == pytest.approx(B * (report.per_token * PREFIX + appended)), (name, setting)
            assert report.detail["kept_tokens"] == kept_tokens(PREFIX, setting.get("keep"))
            assert cache.get_seq_length() == PREFIX + TARGET, name


@pytest.mark.usefixtures("one_thread")
def test_only_keys_or_values_keeps_the_other_half_full(model, tokens):
    """only='keys' / 'values': that half at the setting's rank, the other at full; bytes (budget + 1) / 2 of the
    full cache's, and the filled cache holds exactly those bytes."""
    proj, d = random_projections(model), model.config.head_dim
    for only, cut, full in (("keys", 0, 1), ("values", 1, 0)):
        method = get_method("pca", projections=proj, budgets=(0.5,), only=only)
        (setting,) = method.settings(model)
        assert setting.label.endswith(f"{only} only")
        ranks = method.ranks(model, setting)
        assert (ranks[..., cut] == d // 2).all() and (ranks[..., full] == d).all()
        report = method.bytes(model, setting, PREFIX + TARGET)
        assert report.fraction == pytest.approx(0.75)
        cache = filled(method, model, setting, tokens)
        assert cache.stored_bytes() == tokens.shape[0] * (PREFIX + TARGET) * report.per_token
    with pytest.raises(ValueError, match="only must be one of"):
        get_method("pca", projections=proj, only="queries")


@pytest.mark.usefixtures("one_thread")
def test_layers_option_compresses_those_layers_alone(model, tokens):
    """layers='a-b': those layers at the setting's rank, every other layer full; the bytes follow, the filled cache
    holds exactly them, and ranges the model lacks or cannot parse are refused."""
    proj, d, n = random_projections(model), model.config.head_dim, model.config.num_hidden_layers
    assert n >= 2
    method = get_method("pca", projections=proj, budgets=(0.5,), layers="1-1")
    (setting,) = method.settings(model)
    assert setting.label.endswith("layers 1-1") and setting.get("layers") == "1-1"
    ranks = method.ranks(model, setting)
    assert (ranks[1] == d // 2).all() and (ranks[0] == d).all() and (ranks[2:] == d).all()
    report = method.bytes(model, setting, PREFIX + TARGET)
    assert report.fraction == pytest.approx(1 - 0.5 / n)
    cache = filled(method, model, setting, tokens)
    assert cache.stored_bytes() == tokens.shape[0] * (PREFIX + TARGET) * report.per_token
    assert (get_method("pca", projections=proj, budgets=(0.5,), layers=0).ranks(model, setting)[0] == d // 2).all()
    with pytest.raises(ValueError, match="the model has layers"):
        get_method("pca", projections=proj, budgets=(0.5,), layers=f"0-{n}").ranks(model, setting)
    for bad in ("a-b", "3-1", "1-2-3"):
        with pytest.raises(ValueError, match="layers"):
            get_method("pca", projections=proj, layers=bad)


@pytest.mark.skipif(not (HAS_QUANTO and HAS_HQQ), reason="needs optimum-quanto and hqq (pip install mkvlib[compare])")
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("backend", ["quanto", "hqq"])
def test_quantized_cache_bytes_formula_matches_its_tensors(backend, tokens):
    """Packed data, scales and zero points plus the residual buffer, after a prefill + targets and after decoding
    past a flush of the residual buffer."""
    model = tiny_model("llama", heads=4, kv_heads=2)
    method = get_method("quant", backend=backend, residual_length=4)
    for setting in method.settings(model):
        nbits, group = setting.get("nbits"), setting.get("group")
        cache = filled(method, model, setting, tokens)
        # the prefix is quantized whole; TARGET >= residual_length folds the targets in too
        assert held_bytes(cache) == quantized_bytes(model, nbits, group, PREFIX + TARGET, 0, batch=2)
        with method.runner(model, setting) as run:
            new = run.generate(tokens[:1, :PREFIX], 7)
            seen = PREFIX + new.shape[1] - 1
            residual = (new.shape[1] - 1) % 4   # decoded tokens fold in at the 4th
            assert held_bytes(run.cache) == quantized_bytes(model, nbits, group, seen - residual, residual)
        report = method.bytes(model, setting, 100)
        assert report.per_token * 100 == pytest.approx(quantized_bytes(model, nbits, group, 97, 3))
        assert report.detail["residual_tokens"] == 3


def test_quantization_of_reduced_tensors_is_exact_at_its_stored_precision():
    x = torch.randn(2, 3, 5, 13)
    for nbits, worst in ((8, 0.02), (4, 0.3), (2, 1.5)):
        packed, meta = quantize(x, nbits, 8)
        assert packed.dtype == torch.uint8 and packed.shape[-1] == -(-13 * nbits // 8)
        assert meta.shape == (2, 3, 5, 2, 2)
        back = dequantize(packed, meta, 13, nbits, 8, x.dtype)
        step = meta[..., 0].repeat_interleave(8, -1)[..., :13]
        assert ((back - x).abs() <= step / 2 + 1e-6).all(), nbits       # within half a quantization step
        assert (back - x).abs().max() < worst
    packed, meta = quantize(x[..., :0], 4, 8)
    assert packed.numel() == 0 and dequantize(packed, meta, 0, 4, 8, x.dtype).shape == (2, 3, 5, 0)


@pytest.mark.usefixtures("one_thread")
def test_streaming_equals_the_model_masked_to_the_kept_tokens(model, tokens):
    """After the prefill the targets see the sinks and the recent window only: the full model with a mask that
    hides the dropped prompt tokens from the target rows gives the same logits."""
    method = get_method("streaming", sinks=2, keep=(0.5,))
    setting = method.settings(model)[0]
    kept = kept_tokens(PREFIX, 0.5)
    dropped = [i for i in range(PREFIX) if not (i < 2 or i >= PREFIX - (kept - 2))]
    S = PREFIX + TARGET
    mask = torch.ones(S, S, dtype=torch.bool).tril()
    mask[PREFIX:, dropped] = False
    with torch.no_grad():
        expected = model(tokens, attention_mask=mask[None, None].expand(2, 1, S, S)).logits[:, PREFIX:]
    with method.runner(model, setting) as run:
        got = run.score(tokens[:, :PREFIX], tokens[:, PREFIX:])
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.usefixtures("one_thread")
def test_snapkv_keeps_the_window_and_its_budget_per_head(model, tokens):
    """The stored prompt keys are rows of the full prompt keys: the last window in order, kept_tokens in all."""
    from transformers import DynamicCache

    source = DynamicCache(config=model.config)
    with torch.no_grad():
        model(tokens[:, :PREFIX], **cache_kwargs(source))
    method = get_method("snapkv", window=3, kernel=3, keep=(0.5,))
    with method.runner(model, method.settings(model)[0]) as run:
        run.score(tokens[:, :PREFIX], tokens[:, :1])
        kept = kept_tokens(PREFIX, 0.5)
        for layer, full in zip(run.cache.layers, source.layers):
            stored = layer.reduced(0)[0][:, :, :kept]                                 # (B, G, kept, d)
            rows = (stored[:, :, :, None] == full.keys[:, :, None]).all(-1).float().argmax(-1)  # (B, G, kept)
            assert torch.equal(full.keys.gather(2, rows[..., None].expand_as(stored)), stored)
            assert (rows.diff(dim=-1) > 0).all()                                          # distinct, in order
            assert torch.equal(rows[..., -3:], torch.arange(PREFIX - 3, PREFIX).expand_as(rows[..., -3:]))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_svd_latents_equal_the_model_with_low_rank_weights(arch, tokens):
    """Storing U_r^T k_pre (pre-RoPE) and re-rotating is the model whose W_k, W_v (and biases) are replaced by
    U_r U_r^T W: keys are exactly the rank-r projection before RoPE (Palu), not after."""
    model = tiny_model(arch, heads=4, kv_heads=2)
    method = get_method("svd", budgets=(0.5,))
    bases, r = weight_bases(model), 8
    low = copy.deepcopy(model)
    geom = KVGeometry.of(model)
    for l, layer in enumerate(low.model.layers):
        for proj, basis in ((layer.self_attn.k_proj, bases.keys[l]), (layer.self_attn.v_proj, bases.values[l])):
            P = basis[:, :, :r] @ basis[:, :, :r].transpose(-1, -2)                         # (G, d, d)
            w = proj.weight.data.view(geom.kv_heads, geom.head_dim, -1)
            proj.weight.data = torch.einsum("gde,geh->gdh", P, w).reshape_as(proj.weight)
            if proj.bias is not None:
                b = proj.bias.data.view(geom.kv_heads, geom.head_dim)
                proj.bias.data = torch.einsum("gde,ge->gd", P, b).reshape_as(proj.bias)
    expected = reference(low, tokens)
    with method.runner(model, method.settings(model)[0]) as run:
        got = run.score(tokens[:, :PREFIX], tokens[:, PREFIX:])
    assert (got - expected).abs().max() < 1e-4
    assert (got - reference(model, tokens)).abs().max() > 1e-3          # and it did compress


def test_svd_bases_are_orthogonal_and_ordered_by_singular_value():
    model = tiny_model("llama", heads=4, kv_heads=2)
    bases = weight_bases(model)
    assert bases.orthogonality_error() < 1e-5
    w = model.model.layers[0].self_attn.k_proj.weight.detach().view(2, 16, -1)
    energy = torch.einsum("gdr,gdh->grh", bases.keys[0], w).norm(dim=-1)             # (G, d): singular values
    assert (energy.diff(dim=-1) <= 1e-5).all()


@pytest.mark.usefixtures("one_thread")
def test_think_keeps_the_top_scored_channels_of_the_prompt_keys(tokens):
    from transformers import DynamicCache

    model = tiny_model("llama", heads=4, kv_heads=2)
    source = DynamicCache(config=model.config)
    with torch.no_grad():
        model(tokens[:, :PREFIX], **cache_kwargs(source))
    method = get_method("think", keep=(0.5,), window=4)
    with method.runner(model, method.settings(model)[0]) as run:
        run.score(tokens[:, :PREFIX], tokens[:, PREFIX:])
        for layer, full in zip(run.cache.layers, source.layers):
            assert layer.channels.shape == (2, 2, 8)
            kept = full.keys.gather(3, layer.channels[:, :, None].expand(-1, -1, PREFIX, -1))
            assert torch.equal(layer.reduced(0)[0][:, :, :PREFIX], kept)
            assert layer.reduced(0)[1].shape[-1] == 16                                 # values stay full


def test_at_bytes_picks_the_nearest_setting_or_says_what_it_can_reach():
    model = tiny_model("llama", heads=4, kv_heads=2)
    pca = get_method("pca", projections=random_projections(model))
    setting, report = at_bytes(pca, model, 0.5, 1024)
    assert setting.get("budget") == 0.5 and report.fraction == 0.5
    assert at_bytes(pca, model, 0.3, 1024)[0].get("budget") == 0.25           # 0.25 is nearer than 0.375
    streaming = get_method("streaming")
    assert at_bytes(streaming, model, 0.25, 64)[1].fraction == 0.25
    think = get_method("think")
    with pytest.raises(BytesUnreachableError, match=r"think cannot store 0\.200.*0\.562"):
        at_bytes(think, model, 0.2, 1024)
    with pytest.raises(BytesUnreachableError, match="cannot store"):
        at_bytes(pca, model, 0.01, 1024)


def test_methods_that_cannot_apply_say_why():
    gemma = tiny_model("gemma3", heads=4, kv_heads=2)
    for name in ("quant", "streaming", "snapkv", "think", "svd"):
        method = get_method(name)
        reason = method.unsupported(gemma)
        if name == "quant" and not HAS_QUANTO:
            assert "pip install optimum-quanto" in reason
            continue
        assert reason and "sliding" in reason and "full attention" in reason, (name, reason)
        with pytest.raises(ValueError, match="sliding"):
            method.runner(gemma, method.settings(gemma)[0]).__enter__()
    llama = tiny_model("llama", heads=4, kv_heads=2)
    reason = get_method("matryoshka", projections=random_projections(llama)).unsupported(llama)
    assert "trajectory" in reason                             # adaptive ranks need a searched trajectory
    if HAS_QUANTO:
        assert "group size" in get_method("quant", group_size=12).unsupported(llama)


@pytest.mark.parametrize("name, options, match", [
    ("pca", dict(allocation="greedy"), "allocation"),
    ("pca", dict(budgets=(0.5, 1.5)), "budgets"),
    ("quant", dict(bits=(3,)), "bits"),
    ("quant", dict(residual_length=0), "residual_length"),
    ("snapkv", dict(kernel=4), "odd"),
    ("think", dict(keep=()), "keep"),
    ("streaming", dict(sinks=-1), "sinks"),
    ("matryoshka+quant", dict(bits=(16,)), "bits"),
])
def test_bad_options_are_clear_errors(name, options, match):
    with pytest.raises(ValueError, match=match):
        get_method(name, **options)


def round_robin_trajectory(model, proj, floor: int = 4):
    """A made-up greedy trajectory: every (layer, head, K/V) loses one rank in turn, down to ``floor``."""
    from mkvlib.core.ranks import budget_of
    from mkvlib.core.trajectory import Trajectory

    geom = KVGeometry.of(model)
    ranks = torch.full(geom.shape, geom.head_dim)
    steps = []
    for rank in range(geom.head_dim - 1, floor - 1, -1):
        for l in range(geom.layers):
            for g in range(geom.kv_heads):
                for c in (0, 1):
                    ranks[l, g, c] = rank
                    steps.append((l, g, c, rank, 0.0, budget_of(ranks, geom.head_dim)))
    return Trajectory(model.mkv_name, proj.fingerprint(), proj.geometry, steps, {}, None)


@pytest.mark.usefixtures("one_thread")
def test_adaptive_ranks_come_from_the_trajectory_down_to_its_floor(tokens):
    model = tiny_model("llama", heads=4, kv_heads=2)
    proj = random_projections(model)
    traj = round_robin_trajectory(model, proj)
    method = get_method("matryoshka", projections=proj, trajectory=traj)
    budgets = [s.get("budget") for s in method.settings(model)]
    assert budgets == [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]          # 12.5% is below the floor of 4 / 16
    for setting in method.settings(model)[::2]:
        ranks = traj.ranks_at(setting.get("budget"))
        report = method.bytes(model, setting, 64)
        assert report.per_token == int(ranks.sum()) * 4
        cache = filled(method, model, setting, tokens)
        assert torch.equal(cache.ranks, ranks)
        assert cache.stored_bytes() == 2 * (PREFIX + TARGET) * report.per_token
    composed = get_method("streaming+matryoshka", projections=proj, trajectory=traj, budgets=(0.5, 0.125))
    assert {s.get("budget") for s in composed.settings(model)} == {0.5}
    floorless = get_method("matryoshka", projections=proj, trajectory=traj, budgets=(0.125,))
    assert "floor" in floorless.unsupported(model)


def test_a_context_must_be_positive():
    model = tiny_model("llama", heads=4, kv_heads=2)
    for name in ("streaming", "quant"):
        method = get_method(name)
        with pytest.raises(ValueError, match="context"):
            method.bytes(model, method.settings(model)[0], 0)

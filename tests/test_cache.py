"""The real compressed cache: exact bytes, equality with the simulated path, generate(), clear errors."""
import pytest
import torch
from transformers import DynamicCache

from mkvlib import bench
from mkvlib.core import cache as cache_mod
from mkvlib.core.cache import CompressedCache, HeadGroup, head_groups
from mkvlib.compat import cache_kwargs
from mkvlib.core.compress import attach
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model
from mkvlib.core.projections import ProjectionMismatchError, Projections


def random_projections(model, seed=0, mean_scale=0.3):
    """Random orthogonal bases and value means for a model (the cache must be exact for any bases)."""
    g = KVGeometry.of(model)
    gen = torch.Generator().manual_seed(seed)

    def bases():
        return torch.linalg.qr(torch.randn(g.layers, g.kv_heads, g.head_dim, g.head_dim, generator=gen))[0]

    mean = torch.randn(g.layers, g.kv_heads, g.head_dim, generator=gen) * mean_scale
    return Projections(bases(), bases(), mean, meta={"model": model.mkv_name})


def random_ranks(model, seed=0):
    g = KVGeometry.of(model)
    return torch.randint(0, g.head_dim + 1, g.shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def cached_logits(model, ids, past, split, attention_mask=None):
    """Prefill ``split`` tokens, then one token a step: logits (B, T, V) through the cache ``past``."""
    full = attention_mask if attention_mask is not None else torch.ones_like(ids)
    out = [model(ids[:, :split], attention_mask=full[:, :split], **cache_kwargs(past)).logits]
    for t in range(split, ids.shape[1]):
        out.append(model(ids[:, t:t + 1], attention_mask=full[:, :t + 1], **cache_kwargs(past)).logits)
    return torch.cat(out, 1)


def test_logits_equal_simulated_path_at_random_ranks(any_model, ids):
    proj, ranks = random_projections(any_model), random_ranks(any_model)
    with torch.no_grad(), attach(any_model, proj, ranks):
        expected = any_model(ids).logits
    got = cached_logits(any_model, ids, CompressedCache(any_model, proj, ranks), split=10)
    assert (got - expected).abs().max() <= 1e-4


def test_stored_bytes_are_ranks_times_tokens_times_element_size(llama, ids):
    proj, ranks = random_projections(llama), random_ranks(llama, seed=3)
    past = CompressedCache(llama, proj, ranks)
    cached_logits(llama, ids, past, split=7)
    B, T = ids.shape
    assert past.stored_bytes() == int(ranks.sum()) * B * T * 4
    assert past.allocated_bytes() >= past.stored_bytes()
    g = KVGeometry.of(llama)
    assert past.projection_bytes() == 4 * (int(ranks.sum()) * g.head_dim + g.layers * g.kv_heads * g.head_dim)
    exact = CompressedCache(llama, proj, ranks, reserve=T)
    cached_logits(llama, ids, exact, split=7)
    assert exact.allocated_bytes() == exact.stored_bytes()


def test_half_budget_stores_half_of_dynamic_cache(llama, ids):
    dyn, half = DynamicCache(config=llama.config), CompressedCache(llama, random_projections(llama), 0.5)
    cached_logits(llama, ids, dyn, split=5)
    cached_logits(llama, ids, half, split=5)
    assert half.stored_bytes() * 2 == bench.cache_bytes(dyn)


def test_growth_past_the_reserve_keeps_results(llama, ids, monkeypatch):
    monkeypatch.setattr(cache_mod, "GROWTH_TOKENS", 2)
    proj, ranks = random_projections(llama), random_ranks(llama, seed=5)
    with torch.no_grad(), attach(llama, proj, ranks):
        expected = llama(ids).logits
    past = CompressedCache(llama, proj, ranks, reserve=3)
    got = cached_logits(llama, ids, past, split=2)
    assert (got - expected).abs().max() <= 1e-4
    assert past.stored_bytes() == int(ranks.sum()) * ids.numel() * 4


def left_padded(ids):
    mask = torch.ones_like(ids)
    mask[0, :6], mask[1, :2] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


def test_left_padded_batch_equals_simulated_path(llama, ids):
    proj, ranks = random_projections(llama), random_ranks(llama, seed=7)
    ids, mask = left_padded(ids)
    with torch.no_grad(), attach(llama, proj, ranks):
        expected = llama(ids, attention_mask=mask).logits
    got = cached_logits(llama, ids, CompressedCache(llama, proj, ranks), split=12, attention_mask=mask)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_full_rank_generate_equals_dynamic_cache_with_padding(arch, ids):
    model = tiny_model(arch, heads=4, kv_heads=2)
    ids, mask = left_padded(ids)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, **cache_kwargs(DynamicCache(config=model.config)), **kw)
    got = model.generate(ids, **cache_kwargs(CompressedCache(model, random_projections(model), 1.0)), **kw)
    assert torch.equal(got, expected)


def test_generate_greedy_and_sampling_equal_simulated_path(llama, ids):
    proj, ranks = random_projections(llama), random_ranks(llama, seed=9)
    for kw in (dict(do_sample=False), dict(do_sample=True, top_k=20)):
        kw.update(max_new_tokens=8, pad_token_id=0)
        torch.manual_seed(0)
        got = llama.generate(ids, **cache_kwargs(CompressedCache(llama, proj, ranks)), **kw)
        with attach(llama, proj, ranks):
            torch.manual_seed(0)
            expected = llama.generate(ids, **kw)
        assert torch.equal(got, expected), kw


def test_head_groups_share_ranks_without_padding():
    groups = head_groups(torch.tensor([[8, 4], [16, 4], [8, 4], [0, 2]]))
    assert groups == [HeadGroup((0, 2), 8, 4), HeadGroup((1,), 16, 4), HeadGroup((3,), 0, 2)]
    assert groups[1].index == slice(1, 2) and torch.equal(groups[0].index, torch.tensor([0, 2]))


def test_ranks_that_do_not_fit_the_model_are_clear_errors(llama):
    proj = random_projections(llama)
    with pytest.raises(ValueError, match="shape"):
        CompressedCache(llama, proj, torch.full((3, 2, 2), 4))
    with pytest.raises(ValueError, match="head_dim"):
        CompressedCache(llama, proj, 17)
    with pytest.raises(ValueError, match="reserve"):
        CompressedCache(llama, proj, 1.0, reserve=-1)


def test_projections_of_another_model_are_a_clear_error(llama):
    other = tiny_model("llama", heads=4, kv_heads=4)
    with pytest.raises(ProjectionMismatchError):
        CompressedCache(llama, random_projections(other), 0.5)


def test_cache_reused_with_another_model_is_a_clear_error(llama, ids):
    past = CompressedCache(llama, random_projections(llama), 0.5)
    twin = tiny_model("llama", heads=4, kv_heads=2, seed=1)  # same geometry, another model
    cache_mod.enable(twin)
    with pytest.raises(RuntimeError, match="another model"), torch.no_grad():
        twin(ids, **cache_kwargs(past))
    plain = tiny_model("llama", heads=4, kv_heads=2, seed=2)  # the override not installed at all
    with pytest.raises(RuntimeError, match="built for"), torch.no_grad():
        plain(ids, **cache_kwargs(CompressedCache(llama, random_projections(llama), 0.5)))
    wider = tiny_model("mistral", heads=4, kv_heads=1)
    cache_mod.enable(wider)
    with pytest.raises(ValueError, match="one model"), torch.no_grad():
        wider(ids, **cache_kwargs(CompressedCache(llama, random_projections(llama), 0.5)))


def test_active_simulated_compression_is_a_clear_error(llama, ids):
    proj = random_projections(llama)
    past = CompressedCache(llama, proj, 0.5)
    with attach(llama, proj, 0.5), pytest.raises(RuntimeError, match="detach"), torch.no_grad():
        llama(ids, **cache_kwargs(past))


def test_bench_config_validates_and_capacity_scales():
    with pytest.raises(ValueError, match="budget"):
        bench.BenchConfig(budget=0)
    with pytest.raises(ValueError, match="context"):
        bench.BenchConfig(context=0)
    with pytest.raises(ValueError, match="baselines"):
        bench.BenchConfig(baselines=("paged",))
    full = bench.capacity(1000, 10_000, 1_010_000, context=100)
    half = bench.capacity(500, 10_000, 1_010_000, context=100)
    assert full == {"max_tokens": 1000, "max_batch": 10, "context": 100, "limit_bytes": 1_010_000}
    assert half["max_tokens"] == 2 * full["max_tokens"]
    assert bench.capacity(500, 10_000, 1_010_000, context=100, per_sequence_bytes=50_000)["max_batch"] == 10


def _bench_point(tmp_path, **kw):
    """A tiny byte-level Llama (2 layers, 2 KV heads of 16) and a benchmark point over random projections."""
    from mkvlib.fullrun.tiny import tiny_pair

    model, tok = tiny_pair()
    path = tmp_path / "random.safetensors"
    random_projections(model).save(path)
    config = dict(projections=str(path), budget=0.5, context=32, batch=2, new_tokens=2, prefill_chunk=16,
                  repeats=2, baselines=("dynamic",), memory=False, corpus="pydoc-test")
    return model, tok, bench.BenchConfig(**{**config, **kw})


def test_bench_and_budget_sweep_on_a_tiny_model(tmp_path):
    """run_bench and budget_sweep end to end: bytes by the exact formula, half the budget stores half the bytes of
    the full-rank cache, which stores what DynamicCache stores; every kind decodes in every round."""
    model, tok, config = _bench_point(tmp_path)
    g = KVGeometry.of(model)
    tokens = config.batch * (config.context + config.new_tokens)
    result = bench.run_bench(config, model, tok)
    assert result["baseline_cache_bytes"] == 2 * g.layers * g.kv_heads * g.head_dim * 4 * tokens
    assert result["cache_fraction"] == result["kv_fraction"] == 0.5
    assert len(result["decode_tokens_per_s_runs"]) == len(result["baseline_decode_tokens_per_s_runs"]) == 2
    assert result["decode_speedup"] > 0 and result["baseline_prefill_s"] > 0 and "skipped" not in result
    rows = bench.budget_sweep(bench.BenchConfig(**{**config.__dict__, "synthetic_prefix": True}), [1.0, 0.5],
                              model, tok)
    full, half, dynamic = rows
    assert [r["cache"] for r in rows] == ["compressed", "compressed", "dynamic"]
    assert full["cache_bytes"] == result["baseline_cache_bytes"] == 2 * half["cache_bytes"]
    assert dynamic["speedup"] == 1.0 and all(len(r["decode_tokens_per_s_runs"]) == 2 for r in rows)


def test_fresh_process_measurement_and_memory_model(tmp_path):
    """python -m mkvlib.bench measures one cache kind in a fresh process (a saved tiny model); the memory model
    fitted to that run predicts its own peak."""
    model, tok, config = _bench_point(tmp_path, batch=1, new_tokens=1, repeats=1)
    folder = tmp_path / model.mkv_name      # a folder model is named by its folder, as the projections expect
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    config = bench.BenchConfig(**{**config.__dict__, "model": str(folder)})
    run = bench.measure_in_subprocess("compressed", config, timeout=300)
    g = KVGeometry.of(model)
    assert run["kind"] == "compressed" and run["budget"] == 0.5
    assert run["cache_bytes"] == g.layers * g.kv_heads * g.head_dim * 4 * (config.context + config.new_tokens)
    fitted = bench.memory_model(run)
    assert bench.predicted_peak(fitted, run["batch"], run["context"] + run["new_tokens"]) == \
        pytest.approx(run["model_memory_bytes"] + run["peak_memory_bytes"])


@pytest.mark.parametrize("rk,rv", [(3, 7), (7, 3), (5, 5), (0, 4)])
def test_same_width_padding_changes_no_attention_output(rk, rv):
    """Zero columns padded to one width leave SDPA's output (first r_V columns) as it was, and the result has one
    head size, the condition for SDPA's fused kernels."""
    gen = torch.Generator().manual_seed(rk * 10 + rv)
    q, k, v = (torch.randn(1, 2, 6, r, generator=gen) for r in (rk, rk, rv))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125)
    pq, pk, pv = cache_mod.same_width(q, k, v)
    assert pq.shape[-1] == pk.shape[-1] == pv.shape[-1] == max(rk, rv)
    got = torch.nn.functional.scaled_dot_product_attention(pq, pk, pv, is_causal=True, scale=0.125)[..., :rv]
    assert (got - expected).abs().max() <= 1e-6


@pytest.mark.parametrize("first,recent,split", [(2, 5, 10), (0, 3, 1), (4, 0, 10), (30, 30, 10)])
def test_whole_tokens_equal_simulated_path(any_model, ids, first, recent, split):
    """Sinks and a recent window read whole, through prefill and then one token a step, as simulated."""
    proj, ranks = random_projections(any_model), random_ranks(any_model, seed=5)
    with torch.no_grad(), attach(any_model, proj, ranks, keep_first=first, keep_recent=recent):
        expected = any_model(ids).logits
    past = CompressedCache(any_model, proj, ranks, keep_first=first, keep_recent=recent)
    got = cached_logits(any_model, ids, past, split=split)
    assert (got - expected).abs().max() <= 1e-4


def test_whole_tokens_with_left_padding_and_generate(llama, ids):
    proj, ranks = random_projections(llama), random_ranks(llama, seed=2)
    padded, mask = left_padded(ids)
    with torch.no_grad(), attach(llama, proj, ranks, keep_first=1, keep_recent=4):
        expected = llama(padded, attention_mask=mask).logits
        gen_expected = llama.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    got = cached_logits(llama, padded, CompressedCache(llama, proj, ranks, keep_first=1, keep_recent=4), 9, mask)
    real = mask.bool()
    assert (got - expected)[real].abs().max() <= 1e-4
    gen = llama.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0,
                         **cache_kwargs(CompressedCache(llama, proj, ranks, keep_first=1, keep_recent=4)))
    assert torch.equal(gen, gen_expected)


def test_whole_tokens_bytes_match_the_formula(llama, ids):
    from mkvlib.core.ranks import stored_fraction

    proj, ranks = random_projections(llama), random_ranks(llama, seed=3)
    g = KVGeometry.of(llama)
    B, T = ids.shape
    past = CompressedCache(llama, proj, ranks, keep_first=3, keep_recent=6)
    cached_logits(llama, ids, past, split=11)
    whole_rows = 3 + 6
    assert past.stored_bytes() == (int(ranks.sum()) * T + whole_rows * g.layers * g.kv_heads * 2 * g.head_dim) * B * 4
    full = g.layers * g.kv_heads * 2 * g.head_dim
    assert past.stored_bytes() / (full * B * T * 4) == pytest.approx(
        stored_fraction(int(ranks.sum()) / full, T, 3, 6))
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        past.crop(-2)
    with pytest.raises(ValueError, match="keep_first must be a whole number"):
        CompressedCache(llama, proj, ranks, keep_first=-1)


def test_simulated_whole_tokens_after_a_compressed_cache_on_the_same_model(llama, ids):
    """The cache's attention override stays on the model; the simulation's mask rewrite works beside it."""
    proj, ranks = random_projections(llama), random_ranks(llama, seed=4)
    real = cached_logits(llama, ids, CompressedCache(llama, proj, ranks, keep_first=2, keep_recent=3), split=8)
    with torch.no_grad(), attach(llama, proj, ranks, keep_first=2, keep_recent=3):
        simulated = llama(ids).logits
    assert (real - simulated).abs().max() <= 1e-4
    assert not any("_mkv_masks" in m.__dict__ for m in llama.modules())

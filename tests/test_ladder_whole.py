"""The precision ladder with tokens kept whole, and as a cache kind of the speed bench, on tiny random models:
exact at full precision, bytes by the formula, the real cache against the simulated path, equal-bytes budgets,
and the bench kind building and reporting the bytes it held."""
import pytest
import torch
from helpers import random_projections, random_ladder

from mkvlib import ladder as lad
from mkvlib.bench.caches import cache_bytes, fill_from, make_cache, shipped_ladder
from mkvlib.bench.speed import decode_speeds
from mkvlib.compat import cache_kwargs
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model

SEGMENT, GROUP = 8, 16
TOL = 1e-4          # max |logit difference|, real cache against the simulated path (float32 rounding only)
FIRST, RECENT = 2, 3


@pytest.fixture(scope="module", params=[(4, 2), (4, 1)], ids=["gqa", "mqa"])
def model(request):
    heads, kv = request.param
    return tiny_model("llama", heads=heads, kv_heads=kv)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(5))




def decoded(model, cache, tokens, prefill: int = 12) -> torch.Tensor:
    """Logits of a prefill of ``prefill`` tokens then one token at a time through ``cache``."""
    got = [model(tokens[:, :prefill], **cache_kwargs(cache)).logits]
    for t in range(prefill, tokens.shape[1]):
        got.append(model(tokens[:, t:t + 1], **cache_kwargs(cache)).logits)
    return torch.cat(got, 1)


@torch.no_grad()
def test_full_precision_ladder_with_whole_tokens_is_exact(model, tokens):
    proj = random_projections(model, value_mean=True)
    full = lad.Ladder.uniform(KVGeometry.of(model), 32, segment=SEGMENT, group=GROUP)
    base = model(tokens).logits
    with lad.attach(model, proj, full, keep_first=FIRST, keep_recent=RECENT):
        assert (model(tokens).logits - base).abs().max() < 1e-4
    cache = lad.LadderCache(model, proj, full, keep_first=FIRST, keep_recent=RECENT)
    assert (decoded(model, cache, tokens) - base).abs().max() < 1e-4


@pytest.mark.parametrize("seed", range(3))
@torch.no_grad()
def test_whole_tokens_real_cache_matches_simulated_path(model, tokens, seed):
    """Prefill then decode through the real cache keeping tokens whole, against one simulated forward doing so;
    keeping tokens whole changes the outputs of a lossy ladder (the test can fail)."""
    proj, ladder = random_projections(model, seed, value_mean=True), random_ladder(model, 20 + seed)
    with lad.attach(model, proj, ladder, keep_first=FIRST, keep_recent=RECENT):
        expected = model(tokens).logits
    with lad.attach(model, proj, ladder):
        plain = model(tokens).logits
    cache = lad.LadderCache(model, proj, ladder, keep_first=FIRST, keep_recent=RECENT)
    assert (decoded(model, cache, tokens) - expected).abs().max() <= TOL
    assert (plain - expected).abs().max() > 10 * TOL


@pytest.mark.parametrize("first,recent", [(FIRST, RECENT), (0, 4), (30, 0)])
@torch.no_grad()
def test_whole_token_bytes_equal_the_formula(model, tokens, first, recent):
    geom = KVGeometry.of(model)
    ladder = random_ladder(model, 7)
    cache = lad.LadderCache(model, random_projections(model), ladder, keep_first=first, keep_recent=recent)
    decoded(model, cache, tokens)
    B, S = tokens.shape
    whole_row = geom.layers * geom.kv_heads * 2 * geom.head_dim * 4
    expected = B * (S * ladder.token_bytes() + (min(first, S) + min(recent, S)) * whole_row)
    assert cache.stored_bytes() == expected
    elements = B * S * geom.layers * geom.kv_heads * 2 * geom.head_dim
    assert lad.stored_bits(ladder, S, first, recent) == pytest.approx(expected * 8 / elements)


def test_equal_bytes_budget_and_its_errors():
    assert lad.bits_for_bytes(4.0, 1024, 4, 32, 32) == pytest.approx(4 - 36 * 32 / 1024)
    assert lad.bits_for_bytes(4.0, 1024, 0, 0, 32) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="cannot hold 4 \\+ 32 whole tokens"):
        lad.bits_for_bytes(2.0, 512, 4, 32, 32)
    with pytest.raises(ValueError, match="keep_recent"):
        lad.bits_for_bytes(2.0, 512, 4, -1, 32)


@torch.no_grad()
def test_bench_ladder_kind_builds_and_reports_its_bytes(model, tokens):
    geom = KVGeometry.of(model)
    proj, ladder = random_projections(model, value_mean=True), random_ladder(model, 3)
    cache = make_cache("ladder", model, proj, ladder)
    assert isinstance(cache, lad.LadderCache)
    source = make_cache("dynamic", model)
    model(tokens, **cache_kwargs(source))
    fill_from(cache, source)
    assert cache_bytes(cache) == ladder.token_bytes() * tokens.numel() > 0
    factories = {"dynamic": lambda: make_cache("dynamic", model),
                 "ladder": lambda: make_cache("ladder", model, proj, ladder)}
    speeds = decode_speeds(model, tokens, factories, new_tokens=2, repeats=1, chunk=8)
    held = tokens.shape[0] * (tokens.shape[1] + 2)
    assert speeds["_bytes"]["ladder"] == ladder.token_bytes() * held
    assert speeds["_bytes"]["dynamic"] == held * geom.layers * geom.kv_heads * 2 * geom.head_dim * 4
    assert speeds["ladder"][0] > 0


def test_bench_ladder_kind_refuses_bad_input(model):
    with pytest.raises(ValueError, match="bits per element"):
        shipped_ladder(model, "trained", 0)
    with pytest.raises(ValueError, match="needs the projections"):
        shipped_ladder(model, None, 4.0)
    with pytest.raises(ValueError, match="unknown cache kind"):
        make_cache("paged", model)

"""The precision ladder on tiny random models: exact at full precision, bytes by the formula and in the real
cache, real against simulated, the searched trajectory, the compare method, and clear errors."""
import itertools

import pytest
import torch
from helpers import needs_model, random_projections, random_ladder

from mkvlib import ladder as lad
from mkvlib.compare import get_method
from mkvlib.compat import cache_kwargs
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model

SEGMENT, GROUP = 8, 16
TOL = 1e-4          # max |logit difference|, real cache against the simulated path (float32 rounding only)


@pytest.fixture(scope="module", params=[(4, 2), (4, 1)], ids=["gqa", "mqa"])
def model(request):
    heads, kv = request.param
    return tiny_model("llama", heads=heads, kv_heads=kv)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(5))




def by_hand_bytes(ladder: lad.Ladder) -> float:
    """The byte formula written out entry by entry, segment by segment."""
    total = 0.0
    for row in ladder.bits.flatten(0, 2).tolist():
        total += sum(SEGMENT * b / 8 for b in row)
        per_group = GROUP // SEGMENT
        for start in range(0, len(row), per_group):
            if any(0 < b <= 8 for b in row[start:start + per_group]):
                total += 2 * 2                                       # float16 low and range
    return total


@torch.no_grad()
def test_full_precision_ladder_is_exact(model, tokens):
    proj = random_projections(model, value_mean=True)
    full = lad.Ladder.uniform(KVGeometry.of(model), 32, segment=SEGMENT, group=GROUP)
    base = model(tokens).logits
    with lad.attach(model, proj, full):
        assert (model(tokens).logits - base).abs().max() < 1e-4
    cache = lad.LadderCache(model, proj, full)
    assert (model(tokens, **cache_kwargs(cache)).logits - base).abs().max() < 1e-4
    assert full.bits_per_element() == 32


@pytest.mark.parametrize("seed", range(4))
def test_bytes_match_the_formula_and_the_real_cache(model, tokens, seed):
    ladder = random_ladder(model, seed)
    assert ladder.token_bytes() == by_hand_bytes(ladder)
    cache = lad.LadderCache(model, random_projections(model), ladder)
    with torch.no_grad():
        model(tokens, **cache_kwargs(cache))
    planned = ladder.token_bytes() * tokens.numel()
    assert abs(cache.stored_bytes() - planned) <= 0.01 * planned


@pytest.mark.parametrize("seed", range(3))
@torch.no_grad()
def test_real_cache_matches_simulated_path(model, tokens, seed):
    """Prefill then one token at a time through the real cache, against one simulated forward."""
    proj, ladder = random_projections(model, seed, value_mean=True), random_ladder(model, 10 + seed)
    with lad.attach(model, proj, ladder):
        expected = model(tokens).logits
    cache = lad.LadderCache(model, proj, ladder)
    got = [model(tokens[:, :12], **cache_kwargs(cache)).logits]
    for t in range(12, tokens.shape[1]):
        got.append(model(tokens[:, t:t + 1], **cache_kwargs(cache)).logits)
    assert (torch.cat(got, 1) - expected).abs().max() <= TOL


def test_quantizer_round_trip_and_packing():
    x = torch.randn(3, 5, 32)
    fb = torch.tensor([32] * 8 + [8] * 8 + [4] * 8 + [2] * 4 + [0] * 4)
    out = lad.simulate(x, fb, 16, 32)
    assert torch.equal(out[..., :8], x[..., :8]) and (out[..., -4:] == 0).all()
    q, meta = lad.quantize(x, fb, 16)
    for b, cols in ((8, slice(8, 16)), (4, slice(16, 24)), (2, slice(24, 28))):
        assert torch.equal(lad.unpack(lad.pack(q[..., cols], b), b), q[..., cols])
        step = meta[..., 1].float().max() / (2 ** b - 1)
        assert (out[..., cols] - x[..., cols]).abs().max() <= step / 2 + 1e-2


@pytest.fixture(scope="module")
def searched():
    model = tiny_model("llama", heads=4, kv_heads=2)
    proj = random_projections(model)
    blocks = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(2))
    return model, proj, blocks, lad.search(model, proj, blocks, SEGMENT, GROUP)


def test_trajectory_prefixes_are_monotone_in_bytes(searched):
    traj = searched[3]
    bpe = [s[5] for s in traj.steps]
    assert bpe[0] < 32 and all(a > b for a, b in itertools.pairwise(bpe))
    previous = traj.start()
    for budget in (24, 12, 8, 6, 4, bpe[-1]):
        layout = traj.at(budget)
        assert layout.bits_per_element() <= budget + 1e-9
        assert (layout.bits <= previous.bits).all()          # a smaller budget only lowers widths
        previous = layout
    assert traj.at(bpe[-1]).bits[..., 0].min() >= 2          # the floor keeps every first segment


def test_trajectory_saves_and_loads(searched, tmp_path):
    traj = searched[3]
    back = lad.LadderTrajectory.load(traj.save(tmp_path / "t.json"))
    assert torch.equal(back.at(6).bits, traj.at(6).bits) and back.fingerprint == traj.fingerprint


def test_search_estimate_tracks_the_exact_kl(searched):
    """The running estimate (proxy harms summed) and the exact calibration KL of the same layout agree in size
    where compression costs something: at the floor, within a factor of two."""
    model, proj, blocks, traj = searched
    floor = traj.steps[-1][5]
    exact = lad.calibration_kl(model, proj, traj.at(floor), blocks)
    assert exact > 0 and 0.5 * exact <= traj.steps[-1][6] <= 2 * exact


def test_compare_method_bytes_and_runner(searched, tokens):
    model, proj, _, traj = searched
    method = get_method("ladder", projections=proj, trajectory=traj, bits=(8, 4))
    setting = method.settings(model)[0]
    report = method.bytes(model, setting, context=tokens.shape[1])
    assert report.per_token == traj.at(8).token_bytes() and report.fraction == pytest.approx(
        traj.at(8).bits_per_element() / 32)
    with method.runner(model, setting) as run:
        logits = run.score(tokens[:, :12], tokens[:, 12:])
        assert run.cache.stored_bytes() == report.per_token * tokens.numel()
    assert logits.shape[:2] == (2, 8)


@pytest.mark.parametrize("bits, segment, group, match", [
    ([[[[3, 2]]]], 8, 16, "among"),
    ([[[[4, 8]]]], 8, 16, "must not increase"),
    ([[[[0, 0]]]], 8, 16, "first segment"),
    ([[[[8, 8]]]], 6, 12, "multiple of 4"),
    ([[[[8, 8]]]], 8, 12, "multiple of segment"),
    ([[[[8, 8, 8, 8]]]], 4, 8, "exceed 2 x scale_bytes"),
])
def test_bad_layouts_say_what_is_wrong(bits, segment, group, match):
    with pytest.raises(ValueError, match=match):
        lad.Ladder(torch.tensor(bits).expand(1, 1, 2, -1), segment, group, 32)


def test_budget_below_the_floor_is_refused(searched):
    traj = searched[3]
    with pytest.raises(ValueError, match="below its floor"):
        traj.at(0.1)


def test_ladder_must_fit_the_model(model):
    other = lad.Ladder.uniform(KVGeometry(3, 4, 1, 16), 32, segment=SEGMENT, group=GROUP)
    with pytest.raises(ValueError, match="does not fit"):
        lad.attach(model, random_projections(model), other)


def test_one_width_on_the_standard_basis_is_quantos_quantizer():
    """Bits only (every feature at b bits, groups of 64, on the cache's own coordinates) is quanto's per-token
    affine quantizer up to the rounding of its zero point: the same squared error within 1%."""
    quanto = pytest.importorskip("optimum.quanto")
    x = torch.randn(1, 3, 50, 64, generator=torch.Generator().manual_seed(0)) * 3 + 0.5
    for qtype, bits in ((quanto.qint4, 4), (quanto.qint2, 2)):
        scale, shift = quanto.MaxOptimizer()(x, qtype, 0, 64)
        theirs = quanto.quantize_weight(x, qtype, 0, scale, shift, group_size=64).dequantize()
        mine = lad.simulate(x, torch.full((64,), bits), 64, 32, scale_bytes=4)
        assert (mine - x).pow(2).mean() == pytest.approx(float((theirs - x).pow(2).mean()), rel=0.01)


@needs_model
def test_shipped_trajectory_serves_the_compare_method():
    from mkvlib.models import load_model

    model, _ = load_model()
    method = get_method("ladder")
    assert method.unsupported(model) is None
    for setting in method.settings(model):
        report = method.bytes(model, setting, context=1024)
        assert report.detail["bits_per_element"] <= setting.get("bits") + 1e-9


@torch.no_grad()
def test_float32_scales_are_stored_and_counted(model, tokens):
    """Bits only with quanto's float32 scales: one width on the standard basis, groups of a whole head."""
    geom = KVGeometry.of(model)
    layout = lad.Ladder.uniform(geom, 32, 4, None, geom.head_dim, geom.head_dim, scale_bytes=4)
    assert layout.bits_per_element() == 4 + 2 * 32 / geom.head_dim
    eye = lad.identity_projections(model)
    with lad.attach(model, eye, layout):
        expected = model(tokens).logits
    cache = lad.LadderCache(model, eye, layout)
    assert (model(tokens, **cache_kwargs(cache)).logits - expected).abs().max() <= TOL
    assert cache.stored_bytes() == layout.token_bytes() * tokens.numel()

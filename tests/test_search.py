"""Greedy rank search: replay exactness, agreement with brute-force re-scoring, budgets, prefixes, identity."""
import json

import pytest
import torch
import torch.nn.functional as F

from mkvlib.core.compress import attach
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model
from mkvlib.core.pca import fit_pca
from mkvlib.core.positions import block_offsets, shifted
from mkvlib.core.ranks import budget_of, uniform_ranks
from mkvlib.search import SearchConfig, greedy_search
from mkvlib.core.scoring import calibration_scorer
from mkvlib.core.greedy import algorithm1, next_ranks, rank_path
from mkvlib.core.replay import LayerReplay
from mkvlib.core.rules import Rules
from mkvlib.core.scoring import Exact, KLScorer, with_rank
from mkvlib.core.stats import collect_kv_stats
from mkvlib.core.trajectory import Trajectory, TrajectoryMismatchError

# positions from 0: the steps recorded below predate 'spread' positions (test_spread_positions_... covers those)
CFG = SearchConfig(step=8, min_rank=4, tokens=48, seq_len=24, batch_size=2, strategy="exact", positions="start")


pytestmark = pytest.mark.usefixtures("one_thread")


def _proj(model, ids):
    return fit_pca(collect_kv_stats(model, ids, 2, progress=False, model_name=model.mkv_name, positions="start"),
                   model_name=model.mkv_name)


def _sharp_model():
    """A tiny model whose attention is far from uniform, so that keys matter as much as values."""
    model = tiny_model("llama", heads=4, kv_heads=2, layers=3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


@pytest.fixture(scope="module")
def setup():
    model = _sharp_model()
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))
    return model, ids, _proj(model, ids)


@pytest.fixture(scope="module")
def exact_traj(setup):
    model, ids, proj = setup
    return greedy_search(model, proj, ids, CFG, progress=False)


def test_replay_from_any_layer_equals_a_full_forward(any_model, ids):
    proj = _proj(any_model, ids)
    with attach(any_model, proj, 0.5):
        full = F.log_softmax(any_model(ids, use_cache=False).logits[:, :-1].float(), -1).flatten(0, 1)
        replay = LayerReplay(any_model)
        torch.testing.assert_close(replay.capture(ids), full, rtol=0, atol=1e-5)
        for layer in range(any_model.config.num_hidden_layers):
            torch.testing.assert_close(replay.logprobs_from(layer), full, rtol=0, atol=1e-5)


@torch.no_grad()
def _brute_kl(model, comp, ids, base_logp, ranks):
    comp.set_ranks(ranks)
    logp = F.log_softmax(model(ids, use_cache=False).logits[:, :-1].float(), -1).flatten(0, 1)
    return float((base_logp.exp() * (base_logp - logp)).sum(-1).mean())


def test_exact_search_agrees_step_by_step_with_brute_force(setup, exact_traj):
    model, ids, proj = setup
    geom = KVGeometry.of(model)
    nxt = dict(zip(rank_path(16, 8, 4)[:-1], rank_path(16, 8, 4)[1:]))
    offsets = block_offsets(CFG.positions, ids.shape[0], ids.shape[1], model)   # None: from position 0
    with torch.no_grad(), attach(model, proj, 1.0) as comp, shifted(model, offsets):
        comp.enabled = False
        base = F.log_softmax(model(ids, use_cache=False).logits[:, :-1].float(), -1).flatten(0, 1)
        comp.enabled = True
        ranks, agree = torch.full(geom.shape, 16, dtype=torch.long), 0
        for i, (l, g, c, r, kl, b) in enumerate(exact_traj.steps[:12]):
            scores = {}
            for e in [(a, h, k) for a in range(geom.layers) for h in range(geom.kv_heads) for k in (0, 1)]:
                if int(ranks[e]) in nxt:
                    trial = ranks.clone()
                    trial[e] = nxt[int(ranks[e])]
                    scores[e] = _brute_kl(model, comp, ids, base, trial)
            best = min(scores, key=lambda e: (scores[e], e))
            # the same choice, up to float ties (the replayed and the full forward pass round alike to ~1e-7)
            assert scores[(l, g, c)] <= scores[best] + 1e-6, f"step {i}: search chose {(l, g, c)}, brute force {best}"
            assert kl == pytest.approx(scores[(l, g, c)], abs=1e-6)
            agree += (l, g, c) == best
            ranks[(l, g, c)] = r
        assert agree >= 10


def test_spread_positions_score_each_block_at_its_offset(setup):
    """With 'spread' positions the scorer's KL is the full forward pass's KL with every block at its seeded offset
    (and not the KL from position 0): captured position embeddings carry the offsets into every replay."""
    from mkvlib.metrics import quality_curve

    model, ids, proj = setup
    geom = KVGeometry.of(model)
    ranks = uniform_ranks(geom, 0.5)
    offsets = block_offsets("spread", ids.shape[0], ids.shape[1], model)
    with calibration_scorer(model, proj, ids, 1, offsets=offsets) as scorer:
        kl = scorer.set_state(ranks)
        moved = with_rank(ranks, (1, 0, 0), 4)
        replayed = scorer.score(moved, 1)
        comp = scorer.compression
        full = [quality_curve(model, ids[i:i + 1], comp, [moved], progress=False)[0] for i in range(2)]
        with shifted(model, offsets[:1]):
            first = quality_curve(model, ids[:1], comp, [ranks, moved], progress=False)
        with shifted(model, offsets[1:]):
            second = quality_curve(model, ids[1:], comp, [ranks, moved], progress=False)
    assert kl == pytest.approx((first[0]["kl_to_base"] + second[0]["kl_to_base"]) / 2, abs=1e-6)
    assert replayed == pytest.approx((first[1]["kl_to_base"] + second[1]["kl_to_base"]) / 2, abs=1e-6)
    assert abs(replayed - sum(r["kl_to_base"] for r in full) / 2) > 1e-6
    assert greedy_search(model, proj, ids, CFG.with_(positions="spread", stop_budget=0.75),
                         progress=False).meta["config"]["positions"] == "spread"


def test_a_plain_hand_written_loop_takes_the_exact_searchs_steps(setup, exact_traj):
    """Algorithm 1 written out plainly (the example of mkvlib.core.greedy's docstring): every entry starts at
    d; while any can still be lowered, score each one-step lowering by its KL increase and lower the least
    harmful one. It takes the library's exact steps, one by one, and records the same KL after each."""
    model, ids, proj = setup
    geom, mine, kls = KVGeometry.of(model), [], []
    lower = next_ranks(geom.head_dim, CFG.step, CFG.min_rank)
    assert lower == {16: 8, 8: 4}
    with calibration_scorer(model, proj, ids, CFG.batch_size) as scorer:
        ranks = uniform_ranks(geom, 1.0)
        while any(int(ranks[e]) in lower for e in geom.entries()):
            now = scorer.set_state(ranks)
            harm = {e: scorer.harm(e, lower[int(ranks[e])]) for e in geom.entries() if int(ranks[e]) in lower}
            e = min(harm, key=lambda e: (harm[e], e))
            ranks[e] = lower[int(ranks[e])]
            mine.append((*e, int(ranks[e])))
            kls.append(now + harm[e])
    assert len(mine) == 2 * len(geom.entries()) and len(set(mine)) == len(mine)
    assert mine == exact_traj.moves()
    assert kls == pytest.approx([s[4] for s in exact_traj.steps], abs=1e-9)


def test_the_core_alone_runs_algorithm1_as_the_exact_search(setup, exact_traj):
    """Algorithm 1 from mkvlib.core alone (the exact strategy and the rules, no SearchConfig): the exact
    search's steps, with the same KL and budget after each."""
    model, ids, proj = setup
    geom = KVGeometry.of(model)
    with calibration_scorer(model, proj, ids, CFG.batch_size) as scorer:
        steps, passes = algorithm1(uniform_ranks(geom, 1.0), Exact(scorer, geom), Rules(geom, CFG.step, CFG.min_rank),
                                   stop=CFG.min_rank / geom.head_dim)
    assert passes == len(steps) and [s[:4] for s in steps] == exact_traj.moves()
    assert [x for s in steps for x in s[4:]] == pytest.approx([x for s in exact_traj.steps for x in s[4:]], abs=1e-9)


# Steps (layer.head.kind + new rank) that the search took on the `setup` model with CFG and these changes, recorded
# by running the search as it was before the loop of Algorithm 1 was split from its strategies and rules (commit
# 29a7691), so any change to which steps the refactored search takes shows here.
RECORDED = {
    "exact": "2.0.V8 2.1.K8 2.1.K4 2.1.V8 2.0.K8 2.0.K4 2.0.V4 1.0.V8 1.0.K8 1.0.K4 1.0.V4 2.1.V4 "
             "1.1.K8 1.1.K4 1.1.V8 0.1.V8 0.0.V8 0.0.K8 0.0.K4 0.1.K8 1.1.V4 0.0.V4 0.1.K4 0.1.V4",
    "lazy, batched 2": "2.0.V8 2.1.K8 2.1.K4 2.0.K8 2.0.K4 2.1.V8 2.1.V4 1.0.V8 1.0.K8 1.0.V4 1.0.K4 2.0.V4 "
                       "1.1.V8 1.1.K8 1.1.K4 1.1.V4 0.0.K8 0.1.V8 0.0.K4 0.1.V4 0.1.K8 0.0.V8 0.1.K4 0.0.V4",
    "lazy, separate, spread 8, batched 3":
        "2.1.K8 2.0.V8 2.0.K8 2.1.V8 1.0.K8 1.0.V8 1.1.K8 1.1.V8 0.0.K8 0.1.V8 0.1.K8 0.0.V8 "
        "2.1.K4 2.0.V4 2.0.K4 2.1.V4 1.0.K4 1.0.V4 1.1.K4 1.1.V4 0.0.K4 0.0.V4 0.1.K4 0.1.V4",
    "proxy, 3 refreshes, batched 3": "2.0.V8 2.1.K8 2.0.K8 2.1.K4 2.0.K4 2.1.V8 1.0.K8 2.0.V4 1.0.V8 1.0.K4 2.1.V4 1.1.V8 "
                                     "1.0.V4 1.1.K8 0.1.V8 1.1.K4 0.0.V8 0.0.K8 0.1.K8 0.0.K4 1.1.V4 0.1.K4 0.0.V4 0.1.V4",
    "proxy, separate, spread 8, batched 2, shortlist 1":
        "2.1.K8 2.0.V8 2.0.K8 2.1.V8 1.0.K8 1.0.V8 1.1.K8 1.1.V8 0.1.K8 0.1.V8 0.0.K8 0.0.V8 "
        "1.0.K4 2.0.V4 1.1.K4 1.0.V4 2.0.K4 2.1.V4 2.1.K4 1.1.V4 0.0.K4 0.0.V4 0.1.K4 0.1.V4",
}
CHANGES = {"exact": {}, "lazy, batched 2": dict(strategy="lazy", batched=2),
           "lazy, separate, spread 8, batched 3": dict(strategy="lazy", balance="separate", max_spread=8, batched=3),
           "proxy, 3 refreshes, batched 3": dict(strategy="proxy", proxy_refresh=3, batched=3),
           "proxy, separate, spread 8, batched 2, shortlist 1":
               dict(strategy="proxy", balance="separate", max_spread=8, batched=2, shortlist=1)}


@pytest.mark.parametrize("name", list(RECORDED))
def test_each_strategy_takes_the_steps_recorded_before_the_refactoring(setup, exact_traj, name):
    model, ids, proj = setup
    traj = exact_traj if name == "exact" else greedy_search(model, proj, ids, CFG.with_(**CHANGES[name]),
                                                             progress=False)
    recorded = [(int(l), int(g), "KV".index(k[0]), int(k[1:]))
                for l, g, k in (step.split(".") for step in RECORDED[name].split())]
    assert traj.moves() == recorded


def test_nll_weighted_score_adds_the_change_of_the_texts_own_cross_entropy(setup):
    """With nll_weight w the scorer gives KL + w * (NLL(compressed) - NLL(base)) on the blocks' next tokens,
    recomputed here from plain forward passes; w = 0 is the KL alone, and a weighted search runs to the floor."""
    model, ids, proj = setup
    geom = KVGeometry.of(model)
    trial = torch.full(geom.shape, 16, dtype=torch.long)
    trial[1, 0, 1] = 4
    trial[2, 1, 0] = 8
    with torch.no_grad(), attach(model, proj, 1.0) as comp:
        comp.enabled = False
        base = F.log_softmax(model(ids, use_cache=False).logits[:, :-1].float(), -1).flatten(0, 1)
        comp.enabled = True
        nll = lambda logp: float(-logp.gather(1, ids[:, 1:].flatten()[:, None]).mean())
        kl = _brute_kl(model, comp, ids, base, trial)
        logp = F.log_softmax(model(ids, use_cache=False).logits[:, :-1].float(), -1).flatten(0, 1)
        delta = nll(logp) - nll(base)
        assert abs(delta) > 1e-4                              # the test would notice a missing NLL term
        for w in (0.0, 0.5):
            scorer = KLScorer(model, comp, ids, 1, nll_weight=w)
            scorer.set_state(torch.full(geom.shape, 16, dtype=torch.long))
            assert scorer.score(trial, 1) == pytest.approx(kl + w * delta, abs=1e-5)
    with pytest.raises(ValueError, match="nll_weight"):
        SearchConfig(nll_weight=-1.0)
    traj = greedy_search(model, proj, ids, CFG.with_(nll_weight=0.5), progress=False)
    assert traj.meta["config"]["nll_weight"] == 0.5 and traj.final_budget == pytest.approx(4 / 16)


def test_whole_tokens_are_read_whole_by_every_scored_candidate(setup):
    """With keep_first/keep_recent the scorer's KL is the brute-force KL of a model that reads those tokens whole
    (not the plain one); a window over every token leaves nothing to lose; the search records the setting."""
    model, ids, proj = setup
    geom = KVGeometry.of(model)
    trial = torch.full(geom.shape, 16, dtype=torch.long)
    trial[1, 0, 0] = 4
    trial[2, 1, 1] = 4
    full = torch.full(geom.shape, 16, dtype=torch.long)
    with torch.no_grad(), attach(model, proj, 1.0) as comp:
        comp.enabled = False
        base = F.log_softmax(model(ids, use_cache=False).logits[:, :-1].float(), -1).flatten(0, 1)
        comp.enabled = True
        plain = _brute_kl(model, comp, ids, base, trial)
        comp.keep_whole(2, 4)
        whole = _brute_kl(model, comp, ids, base, trial)
    assert abs(whole - plain) > 1e-4
    for (first, recent), expected in (((2, 4), whole), ((0, ids.shape[1]), 0.0)):
        with calibration_scorer(model, proj, ids, 1, keep_first=first, keep_recent=recent) as scorer:
            scorer.set_state(full)
            assert scorer.score(trial, 1) == pytest.approx(expected, abs=1e-5)
    traj = greedy_search(model, proj, ids, CFG.with_(keep_first=2, keep_recent=4), progress=False)
    assert (traj.meta["config"]["keep_first"], traj.meta["config"]["keep_recent"]) == (2, 4)
    with pytest.raises(ValueError, match="keep_recent"):
        SearchConfig(keep_recent=-1)


@pytest.mark.parametrize("strategy, batched", [("exact", 1), ("lazy", 2), ("proxy", 1)])
def test_max_spread_bounds_every_prefix_and_takes_the_best_allowed_step(setup, exact_traj, strategy, batched):
    """With max_spread s no prefix has ranks further apart than s; the free search does break that bound (so the
    test notices a missing filter), and the exact search still takes the best step among those allowed."""
    model, ids, proj = setup
    spread = lambda r: int(r.max()) - int(r.min())
    assert max(spread(exact_traj.ranks_after(n)) for n in range(len(exact_traj))) > 8
    traj = greedy_search(model, proj, ids, CFG.with_(strategy=strategy, batched=batched, max_spread=8),
                         progress=False)
    traj.validate()
    assert traj.final_budget == pytest.approx(4 / 16) and traj.meta["config"]["max_spread"] == 8
    assert all(spread(traj.ranks_after(n)) <= 8 for n in range(len(traj) + 1))
    if strategy != "exact":
        return
    geom = KVGeometry.of(model)
    nxt = {16: 8, 8: 4}
    with torch.no_grad(), attach(model, proj, 1.0) as comp:
        comp.enabled = False
        base = F.log_softmax(model(ids, use_cache=False).logits[:, :-1].float(), -1).flatten(0, 1)
        comp.enabled = True
        for n, (l, g, c, r, kl, b) in list(enumerate(traj.steps))[:8]:
            ranks, scores = traj.ranks_after(n), {}
            for e in [(a, h, k) for a in range(geom.layers) for h in range(geom.kv_heads) for k in (0, 1)]:
                if int(ranks[e]) in nxt:
                    trial = ranks.clone()
                    trial[e] = nxt[int(ranks[e])]
                    if spread(trial) <= 8:
                        scores[e] = _brute_kl(model, comp, ids, base, trial)
            assert kl == pytest.approx(min(scores.values()), abs=1e-6), f"step {n} is not the best allowed one"
    for bad in (4, 0, 2.5, True):
        with pytest.raises(ValueError, match="max_spread"):
            SearchConfig(step=8, max_spread=bad)


def test_budgets_fall_monotonically_to_the_floor_and_are_never_exceeded(exact_traj):
    budgets = exact_traj.budgets()
    assert (budgets[1:] < budgets[:-1]).all()
    assert exact_traj.final_budget == pytest.approx(4 / 16)
    for target in (0.9, 0.5, 0.37, 0.25):
        ranks = exact_traj.ranks_at(target)
        assert budget_of(ranks, 16) <= target + 1e-9
    with pytest.raises(ValueError, match="floor"):
        exact_traj.ranks_at(0.2)


def test_ranks_at_is_a_prefix_and_nested(exact_traj):
    prev = exact_traj.full_ranks()
    for target in (0.95, 0.8, 0.6, 0.45, 0.3):
        ranks = exact_traj.ranks_at(target)
        assert (ranks <= prev).all()
        n = next(i for i, b in enumerate(exact_traj.budgets()) if b <= target + 1e-9)
        assert torch.equal(ranks, exact_traj.ranks_after(n))
        prev = ranks


def test_separate_budgets_respect_both_limits(exact_traj):
    ranks = exact_traj.ranks_at(key_budget=0.6, value_budget=0.4)
    assert budget_of(ranks[..., 0], 16) <= 0.6 + 1e-9 and budget_of(ranks[..., 1], 16) <= 0.4 + 1e-9
    with pytest.raises(ValueError, match="not both"):
        exact_traj.ranks_at(0.5, key_budget=0.5, value_budget=0.5)


def test_separate_balance_keeps_key_and_value_budgets_together(setup):
    model, ids, proj = setup
    traj = greedy_search(model, proj, ids, CFG.with_(balance="separate", strategy="lazy"), progress=False)
    for n in range(len(traj)):
        ranks = traj.ranks_after(n)
        assert abs(int(ranks[..., 0].sum()) - int(ranks[..., 1].sum())) <= 8


@pytest.mark.parametrize("strategy, batched, refresh", [("lazy", 1, 0), ("lazy", 3, 0), ("exact", 4, 0),
                                                         ("proxy", 2, 0), ("proxy", 1, 1)])
def test_other_strategies_give_valid_trajectories(setup, exact_traj, strategy, batched, refresh):
    model, ids, proj = setup
    cfg = CFG.with_(strategy=strategy, batched=batched, proxy_refresh=refresh)
    traj = greedy_search(model, proj, ids, cfg, progress=False)
    traj.validate()
    assert len(traj) == len(exact_traj) and traj.final_budget == exact_traj.final_budget
    if strategy == "lazy" and batched == 1:  # same first pass as the exact search
        assert traj.steps[0][:4] == exact_traj.steps[0][:4]


def test_save_load_roundtrip_and_identity(setup, exact_traj, tmp_path):
    model, ids, proj = setup
    path = exact_traj.save(tmp_path / "t.json")
    back = Trajectory.load(path)
    assert torch.equal(back.ranks_at(0.5), exact_traj.ranks_at(0.5))
    back.check_projections(proj, model)
    other = _proj(model, torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(9)))
    with pytest.raises(TrajectoryMismatchError, match="searched with projections"):
        back.check_projections(other, model)


def test_corrupt_or_foreign_files_are_rejected(exact_traj, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Trajectory.load(bad)
    data = exact_traj.to_dict()
    data["steps"][3][5] = 0.01
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="records budget"):
        Trajectory.load(bad)
    with pytest.raises(FileNotFoundError, match="mkv search"):
        Trajectory.load(tmp_path / "missing.json")


def test_config_rejects_bad_fields():
    with pytest.raises(ValueError, match="strategy"):
        SearchConfig(strategy="magic")
    with pytest.raises(ValueError, match="step"):
        SearchConfig(step=0)
    with pytest.raises(ValueError, match="min_rank"):
        SearchConfig(min_rank=64).check_head_dim(64)
    assert SearchConfig.fast().step > SearchConfig().step and SearchConfig.fast().seq_len < SearchConfig().seq_len


def test_scorer_refuses_ranks_that_disagree_with_the_captured_state(setup):
    model, ids, proj = setup
    with attach(model, proj, 1.0) as comp:
        scorer = KLScorer(model, comp, ids, 2)
        full = torch.full(KVGeometry.of(model).shape, 16, dtype=torch.long)
        assert scorer.set_state(full) == pytest.approx(0.0, abs=1e-6)
        trial = full.clone()
        trial[0, 0, 0] = 8
        with pytest.raises(RuntimeError, match="set_state"):
            scorer.score(trial, 1)


def test_adaptive_ranks_use_the_shipped_trajectory_matched_by_fingerprint(setup, exact_traj, tmp_path, monkeypatch):
    from mkvlib.core.ranks import ranks_for
    from mkvlib.core.trajectory import shipped_trajectory_path

    model, ids, proj = setup
    monkeypatch.setenv("MKV_PROJECT_DIR", str(tmp_path))
    with pytest.raises(TrajectoryMismatchError, match="no shipped trajectory"):
        ranks_for(model, proj, "adaptive", 0.5)
    exact_traj.save(shipped_trajectory_path(model.mkv_name, "pca"))
    assert torch.equal(ranks_for(model, proj, "adaptive", 0.5), exact_traj.ranks_at(0.5))
    other = _proj(model, torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(9)))
    with pytest.raises(TrajectoryMismatchError, match="mkv search"):
        ranks_for(model, other, "adaptive", 0.5)
    elsewhere = exact_traj.save(tmp_path / "mine.json")      # a user's own search, passed explicitly
    assert torch.equal(ranks_for(model, proj, "adaptive", 0.375, elsewhere), exact_traj.ranks_at(0.375))
    with pytest.raises(TrajectoryMismatchError):
        ranks_for(model, other, "adaptive", 0.375, elsewhere)


@torch.no_grad()
def test_proxy_sensitivities_are_per_kind_positive_and_measured(setup):
    """Each (layer, K or V) sensitivity is the exact KL change of its probe over the probe's output error; none
    is left at or below zero, so lowering an entry never looks free or helpful to the proxy."""
    from mkvlib.search.proxy import LocalProxy

    model, ids, proj = setup
    geom = KVGeometry.of(model)
    path = rank_path(geom.head_dim, 8, 4)
    with attach(model, proj, 1.0) as comp:
        scorer = KLScorer(model, comp, ids, 2)
        proxy = LocalProxy(scorer, path)
        assert set(proxy.sensitivity) == {(l, c) for l in range(geom.layers) for c in (0, 1)}
        positive = [s for s in proxy.raw_sensitivity.values() if s > 0]
        assert positive and all(s >= min(positive) for s in proxy.sensitivity.values())
        for key, raw in proxy.raw_sensitivity.items():
            assert proxy.sensitivity[key] == (raw if raw > 0 else min(positive))
        # re-measure one sensitivity from plain forward passes: layer 1's keys moved halfway down, its attention
        # output's squared error per scored token (a forward hook) and the KL change (full log-softmax)
        full = torch.full(geom.shape, geom.head_dim, dtype=torch.long)
        trial = full.clone()
        trial[1, :, 0] = path[len(path) // 2]
        seen = []
        handle = model.model.layers[1].self_attn.register_forward_hook(lambda m, a, out: seen.append(out[0]))
        with torch.no_grad():
            comp.enabled = False
            base = F.log_softmax(model(ids, use_cache=False).logits[:, :-1].float(), -1).flatten(0, 1)
            comp.enabled = True
            comp.set_ranks(full)
            model(ids, use_cache=False)
            kl = _brute_kl(model, comp, ids, base, trial) - _brute_kl(model, comp, ids, base, full)
        handle.remove()
        err = float((seen[-1] - seen[-2]).pow(2).sum()) / (ids.shape[0] * (ids.shape[1] - 1))
        assert err > 0 and abs(kl) > 1e-6
        assert proxy.raw_sensitivity[(1, 0)] == pytest.approx(kl / err, rel=1e-3)
        harm = proxy.harm((1, 0, 0), geom.head_dim, path[1])
        assert harm == proxy.sensitivity[(1, 0)] * proxy.errors[(1, 0, 0)][path[1]]

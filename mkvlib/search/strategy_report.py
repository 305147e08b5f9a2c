"""How far the search strategies (exact, lazy, proxy) disagree: their trajectories compared step by step and by
calibration KL (``python -m mkvlib.search.strategy_report``). Introduced in notebook 03."""
from __future__ import annotations

from ..core.trajectory import Trajectory


def first_divergence(a: Trajectory, b: Trajectory) -> int:
    """Index of the first step at which ``a`` and ``b`` lower a different entry or to a different rank."""
    for i, (x, y) in enumerate(zip(a.steps, b.steps)):
        if x[:4] != y[:4]:
            return i
    return min(len(a), len(b))


def compare_trajectories(a: Trajectory, b: Trajectory, budgets: list[float]) -> list[dict]:
    """Per budget: share of entries at equal rank, mean |rank difference| and the K/V budgets of both."""
    if a.geometry != b.geometry:
        raise ValueError(f"trajectories of different geometry: {a.geometry} vs {b.geometry}")
    d = a.head_dim
    rows = []
    for budget in budgets:
        ra, rb = a.ranks_at(budget), b.ranks_at(budget)
        rows.append({"budget": budget, "same_rank": float((ra == rb).double().mean()),
                     "mean_abs_rank_diff": float((ra - rb).abs().double().mean()),
                     "key_budget_a": float(ra[..., 0].double().mean() / d),
                     "key_budget_b": float(rb[..., 0].double().mean() / d)})
    return rows


def calibration_kl(model, projections, blocks, ranks_list, batch_size: int = 4) -> list[float]:
    """Exact calibration KL(base || compressed) of each ranks tensor in ``ranks_list`` on ``blocks``."""
    from ..core.scoring import calibration_scorer

    with calibration_scorer(model, projections, blocks, batch_size) as scorer:
        return [scorer.set_state(r) for r in ranks_list]


VARIANTS = {"exact": {"strategy": "exact"}, "lazy": {"strategy": "lazy"}, "proxy": {"strategy": "proxy"},
            "proxy+refresh3": {"strategy": "proxy", "proxy_refresh": 3}}


def strategy_report(model, projections, blocks, config, strategies=tuple(VARIANTS),
                    budgets=(0.75, 0.5, 0.375)) -> list[dict]:
    """Run the search with each variant of :data:`VARIANTS` and compare it with the first one (the exact search).

    Rows: strategy, seconds, candidate scorings, first divergent step, and per budget the share of entries at
    the same rank as the exact search and the calibration KL of both.
    """
    from .run import greedy_search

    runs = {s: greedy_search(model, projections, blocks, config.with_(**VARIANTS[s]), progress=False)
            for s in strategies}
    ref = runs[strategies[0]]
    budgets = [b for b in budgets if b >= ref.final_budget]
    ref_kl = calibration_kl(model, projections, blocks, [ref.ranks_at(b) for b in budgets], config.batch_size)
    rows = []
    for name, traj in runs.items():
        kls = calibration_kl(model, projections, blocks, [traj.ranks_at(b) for b in budgets], config.batch_size)
        cmp = compare_trajectories(ref, traj, budgets)
        row = {"strategy": name, "seconds": traj.meta["seconds"], "scorings": traj.meta["candidate_evaluations"],
               "first_divergence": first_divergence(ref, traj), "steps": len(traj)}
        for b, c, k, k0 in zip(budgets, cmp, kls, ref_kl):
            row[f"same@{b}"] = round(c["same_rank"], 3)
            row[f"kl@{b}"] = round(k, 5)
            row[f"exact_kl@{b}"] = round(k0, 5)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    """Compare the exact, lazy and proxy searches on a tiny random model (seconds on a CPU)."""
    import argparse
    import json

    import torch

    from ..models import tiny_model
    from ..core.pca import fit_pca
    from ..core.stats import collect_kv_stats
    from .config import SearchConfig

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batched", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = tiny_model("llama", heads=4, kv_heads=2, layers=args.layers, head_dim=16)
    with torch.no_grad():  # sharpen attention so that keys matter as much as values
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    proj = fit_pca(collect_kv_stats(model, ids, 4, progress=False, model_name=model.mkv_name),
                   model_name=model.mkv_name)
    config = SearchConfig(step=2, min_rank=2, tokens=128, seq_len=32, batched=args.batched)
    for row in strategy_report(model, proj, ids, config):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

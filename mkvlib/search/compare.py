"""How far two trajectories (e.g. a proxy search and the exact one) disagree. Introduced in notebook 03."""
from __future__ import annotations

from .trajectory import Trajectory


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

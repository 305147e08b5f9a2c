"""Quality along a trajectory: KL and perplexity on held-out text at a grid of budgets, adaptive and uniform,
stored in the trajectory so that a budget slider's readout needs no forward pass. Introduced in notebook 03.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..compress import attach
from ..geometry import KVGeometry, check_allocation, check_budget
from ..metrics import quality_curve
from .trajectory import Trajectory

ALLOCATIONS = ("adaptive", "uniform")   # the order of the precomputed rows


def budget_grid(trajectory: Trajectory, points: int = 13) -> list[float]:
    """``points`` budgets from 1.0 down to the trajectory's final budget, evenly spaced."""
    if points < 2:
        raise ValueError(f"a budget grid needs at least 2 points, not {points}")
    return [round(float(b), 6) for b in np.linspace(1.0, trajectory.final_budget, points)]


def uniform_ranks_at(geometry: tuple, key_budget: float, value_budget: float | None = None):
    """Uniform ranks (L, G, 2) for ``geometry`` (L, G, d): floor(b * d), so the budget is never exceeded."""
    L, G, d = geometry
    value_budget = key_budget if value_budget is None else value_budget
    ranks = torch.empty((L, G, 2), dtype=torch.long)
    ranks[..., 0] = math.floor(key_budget * d + 1e-9)
    ranks[..., 1] = math.floor(value_budget * d + 1e-9)
    return ranks


def allocation_ranks(trajectory: Trajectory, allocation: str, budget: float, geom: KVGeometry):
    """Ranks (L, G, 2) of ``allocation`` ('adaptive': the trajectory's prefix; 'uniform') at ``budget``."""
    if check_allocation(allocation) == "adaptive":
        return trajectory.ranks_at(budget)
    return uniform_ranks_at((geom.layers, geom.kv_heads, geom.head_dim), check_budget(budget))


def evaluate_trajectory(model, projections, trajectory: Trajectory, blocks, budgets: list[float],
                        corpus: str = "?", batch_size: int = 4, progress: bool = True) -> dict:
    """Metrics of adaptive and uniform ranks at ``budgets`` on ``blocks`` (N, T); stored in
    ``trajectory.evaluations`` and returned (rows: budget, allocation, perplexity, kl_to_base, ...)."""
    trajectory.check_projections(projections, model)
    geom = KVGeometry.of(model)
    specs, labels = [], []
    for allocation in ALLOCATIONS:
        for b in budgets:
            specs.append(allocation_ranks(trajectory, allocation, b, geom))
            labels.append((allocation, b))
    with attach(model, projections, 1.0) as comp:
        rows = quality_curve(model, blocks, comp, specs, batch_size, progress)
    out = []
    for (allocation, b), row in zip(labels, rows):
        out.append({"budget": b, "allocation": allocation, "actual_budget": round(row["budget"], 6),
                    **{k: round(float(row[k]), 6) for k in ("perplexity", "kl_to_base", "top1_agreement",
                                                             "perplexity_ratio", "base_perplexity")}})
    trajectory.evaluations = {"corpus": corpus, "tokens": int(blocks.numel()), "seq_len": int(blocks.shape[1]),
                              "rows": out}
    return trajectory.evaluations

"""Quality along a trajectory: KL and perplexity on the out-of-domain suite (the mean over its domains; or on one
held-out corpus) at a grid of budgets, adaptive and uniform, stored in the trajectory so that a budget slider's
readout needs no forward pass. Introduced in notebook 03.
"""
from __future__ import annotations

import math

import numpy as np

from ..core.checks import check_allocation, check_budget
from ..core.compress import attach
from ..core.geometry import KVGeometry
from ..metrics import quality_curve
from ..core.ranks import uniform_ranks_at
from ..suite import evaluate_suite
from ..core.trajectory import SUITE_CORPUS, Trajectory

ALLOCATIONS = ("adaptive", "uniform")   # the order of the precomputed rows


def budget_grid(trajectory: Trajectory, points: int = 13) -> list[float]:
    """``points`` budgets from 1.0 down to the trajectory's final budget, evenly spaced."""
    if points < 2:
        raise ValueError(f"a budget grid needs at least 2 points, not {points}")
    return [round(float(b), 6) for b in np.linspace(1.0, trajectory.final_budget, points)]


def allocation_ranks(trajectory: Trajectory, allocation: str, budget: float, geom: KVGeometry):
    """Ranks (L, G, 2) of ``allocation`` ('adaptive': the trajectory's prefix; 'uniform') at ``budget``."""
    if check_allocation(allocation) == "adaptive":
        return trajectory.ranks_at(budget)
    return uniform_ranks_at((geom.layers, geom.kv_heads, geom.head_dim), check_budget(budget))


ROW_KEYS = ("perplexity", "kl_to_base", "top1_agreement", "perplexity_ratio", "base_perplexity")


def evaluate_trajectory(model, projections, trajectory: Trajectory, blocks, budgets: list[float],
                        corpus: str = "?", batch_size: int = 4, progress: bool = True) -> dict:
    """Metrics of adaptive and uniform ranks at ``budgets``; stored in ``trajectory.evaluations`` and returned
    (rows: budget, allocation, actual_budget, perplexity, kl_to_base, top1_agreement, perplexity_ratio,
    base_perplexity).

    ``blocks``: one held-out corpus (N, T), named ``corpus``; or the out-of-domain suite, {domain: (N, T)}
    (:func:`mkvlib.suite.suite_blocks`), measured by :func:`mkvlib.suite.evaluate_suite`. For the suite each row
    holds the suite's means over domains (each domain weighs the same): perplexity_ratio, kl_to_base and
    top1_agreement are the arithmetic means of ``evaluate_suite``'s ``mean`` rows, while perplexity and
    base_perplexity are geometric means over domains (so perplexity / base_perplexity is not exactly the mean
    ratio). The record is then {"corpus": "ood suite", "domains": [...], "tokens": all domains' tokens,
    "seq_len", "rows"}.
    """
    trajectory.check_projections(projections, model)
    geom = KVGeometry.of(model)
    specs, labels = [], []
    for allocation in ALLOCATIONS:
        for b in budgets:
            specs.append(allocation_ranks(trajectory, allocation, b, geom))
            labels.append((allocation, b))
    if isinstance(blocks, dict):
        return _evaluate_on_suite(model, projections, trajectory, blocks, specs, labels, batch_size, progress)
    with attach(model, projections, 1.0) as comp:
        rows = quality_curve(model, blocks, comp, specs, batch_size, progress)
    out = []
    for (allocation, b), row in zip(labels, rows):
        out.append({"budget": b, "allocation": allocation, "actual_budget": round(row["budget"], 6),
                    **{k: round(float(row[k]), 6) for k in ROW_KEYS}})
    trajectory.evaluations = {"corpus": corpus, "tokens": int(blocks.numel()), "seq_len": int(blocks.shape[1]),
                              "rows": out}
    return trajectory.evaluations


def _evaluate_on_suite(model, projections, trajectory, blocks_by_domain: dict, specs, labels, batch_size,
                       progress) -> dict:
    """:func:`evaluate_trajectory` on {domain: blocks}: the suite's mean row per setting, plus the geometric
    mean perplexities over domains."""
    if not blocks_by_domain:
        raise ValueError("the readout's out-of-domain suite holds no domain: build it with "
                         "mkvlib.suite.suite_blocks(tokenizer)")
    seq_lens = {int(b.shape[1]) for b in blocks_by_domain.values()}
    if len(seq_lens) != 1:
        raise ValueError(f"the suite's domains have blocks of different lengths {sorted(seq_lens)}: build them "
                         "with one seq_len")
    with attach(model, projections, 1.0) as comp:
        rows = evaluate_suite(model, comp, specs, blocks_by_domain, batch_size, progress)
    out = []
    for i, (allocation, b) in enumerate(labels):
        mean = next(r for r in rows if r["domain"] == "mean" and r["setting"] == i)
        per_domain = [r for r in rows if r["domain"] != "mean" and r["setting"] == i]
        geo = {k: math.exp(sum(math.log(r[k]) for r in per_domain) / len(per_domain))
               for k in ("perplexity", "base_perplexity")}
        out.append({"budget": b, "allocation": allocation, "actual_budget": round(float(mean["budget"]), 6),
                    **{k: round(float(mean[k] if k in mean else geo[k]), 6) for k in ROW_KEYS}})
    trajectory.evaluations = {"corpus": SUITE_CORPUS, "domains": list(blocks_by_domain),
                              "tokens": int(sum(b.numel() for b in blocks_by_domain.values())),
                              "seq_len": seq_lens.pop(), "rows": out}
    return trajectory.evaluations

"""Greedy adaptive rank search (docs/design.md section 6), recorded as a trajectory. Introduced in notebook 03.

    traj = greedy_search(model, "pca", blocks, SearchConfig.fast())   # 100% -> floor, one step at a time
    ranks = traj.ranks_at(0.5)                                         # (L, G, 2): a prefix of the trajectory
    ranks_for(model, projections, "adaptive", 0.5)                     # mkvlib.ranks: the shipped trajectory

The loop itself is :func:`algorithm1` (:mod:`.greedy`, with a plain hand-written version to compare against in
its docstring); scoring strategies live in :mod:`.strategies`, the rules of which steps to take in :mod:`.rules`.
The recorded trajectory and its file format are :mod:`mkvlib.trajectory`.
"""
from .config import SearchConfig
from .greedy import algorithm1, greedy_search, next_ranks, rank_path
from .quality import budget_grid, evaluate_trajectory
from .scoring import KLScorer, calibration_scorer

__all__ = ["SearchConfig", "algorithm1", "greedy_search", "next_ranks", "rank_path", "KLScorer", "calibration_scorer",
           "budget_grid", "evaluate_trajectory"]

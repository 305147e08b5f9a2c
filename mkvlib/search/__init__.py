"""Greedy adaptive rank search (docs/design.md section 6) with a recorded trajectory. Introduced in notebook 03.

    traj = greedy_search(model, "pca", blocks, SearchConfig.fast())   # 100% -> floor, one step at a time
    ranks = traj.ranks_at(0.5)                                         # (L, G, 2): a prefix of the trajectory
    adaptive_ranks(model, projections, 0.5)                            # from the shipped trajectory

The loop itself is :func:`algorithm1` (:mod:`.greedy`, with a plain hand-written version to compare against in
its docstring); scoring strategies live in :mod:`.strategies`, the rules of which steps to take in :mod:`.rules`.
"""
from .config import SearchConfig
from .greedy import algorithm1, greedy_search, next_ranks, rank_path
from .quality import SUITE_CORPUS, budget_grid, evaluate_trajectory, readout_label
from .shipped import adaptive_ranks, find_trajectory, shipped_trajectory_path
from .scoring import KLScorer, calibration_scorer
from .trajectory import Trajectory, TrajectoryMismatchError

__all__ = ["SearchConfig", "algorithm1", "greedy_search", "next_ranks", "rank_path", "KLScorer", "calibration_scorer",
           "budget_grid", "evaluate_trajectory", "readout_label", "SUITE_CORPUS", "adaptive_ranks",
           "find_trajectory", "shipped_trajectory_path", "Trajectory", "TrajectoryMismatchError"]

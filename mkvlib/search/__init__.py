"""Greedy adaptive rank search (docs/design.md section 6), recorded as a trajectory. Introduced in notebook 03.

    traj = greedy_search(model, "pca", blocks, SearchConfig.fast())   # 100% -> floor, one step at a time
    ranks = traj.ranks_at(0.5)                                         # (L, G, 2): a prefix of the trajectory
    ranks_for(model, projections, "adaptive", 0.5)                     # mkvlib.core.ranks: the shipped trajectory

The loop itself is :func:`mkvlib.core.greedy.algorithm1` (with a plain hand-written version to compare against in
its docstring), its exact score and strategy :mod:`mkvlib.core.scoring` and the rules of which steps to take
:mod:`mkvlib.core.rules`; this package is the tooling around them: the config, the driver (:mod:`.run`), the lazy
and proxy strategies (:mod:`.strategies`, :mod:`.proxy`), the quality grid and figures. The recorded trajectory is
:mod:`mkvlib.core.trajectory`.
"""
from .config import SearchConfig
from .quality import budget_grid, evaluate_trajectory
from .run import greedy_search

__all__ = ["SearchConfig", "budget_grid", "evaluate_trajectory", "greedy_search"]

"""The greedy rank search run from a :class:`SearchConfig`: Algorithm 1 (:func:`mkvlib.core.greedy.algorithm1`)
with this config's scoring strategy and rules, on calibration blocks, recorded as a :class:`Trajectory`.
Introduced in notebook 03.
"""
from __future__ import annotations

import time

import torch

from ..core.env import progress_bar as tqdm
from ..core.geometry import KVGeometry
from ..core.greedy import algorithm1
from ..core.positions import block_offsets
from ..core.projections import resolve_projections
from ..core.ranks import uniform_ranks
from ..core.scoring import calibration_scorer
from ..core.trajectory import Trajectory
from ..recall import recall_blocks
from .config import SearchConfig
from .strategies import make_strategy

__all__ = ["greedy_search", "stop_budget"]


def stop_budget(config: SearchConfig, head_dim: int) -> float:
    """Where the search stops: ``config.stop_budget``, else the floor's budget ``min_rank / d``."""
    return config.stop_budget if config.stop_budget is not None else config.min_rank / head_dim


def greedy_search(model, projections, blocks: torch.Tensor, config: SearchConfig | None = None,
                  progress: bool = True) -> Trajectory:
    """Search adaptive ranks for ``model`` with ``projections`` on calibration ``blocks`` (N, T).

    Returns the whole trajectory from every rank at d down to ``config.stop_budget`` (or the floor); the model is
    left exactly as it was. ``projections``: an object, a path, or 'pca'/'trained' (shipped).
    """
    config = config or SearchConfig()
    geom = KVGeometry.of(model)
    config.check_head_dim(geom.head_dim)
    projections = resolve_projections(projections, model)
    if config.recall_span:
        blocks = recall_blocks(blocks, config.recall_span)
    rules, stop, start = config.rules(geom), stop_budget(config, geom.head_dim), time.time()
    total = int(round((1 - stop) * geom.head_dim * len(rules.entries) / config.step))
    offsets = block_offsets(config.positions, len(blocks), blocks.shape[1], model)
    with calibration_scorer(model, projections, blocks, config.batch_size, config.nll_weight, offsets,
                            config.keep_first, config.keep_recent) as scorer:
        strategy = make_strategy(config, scorer, geom, rules, stop, progress)
        with tqdm(total=max(1, total), desc="greedy search", disable=not progress) as bar:
            steps, passes = algorithm1(uniform_ranks(geom, 1.0), strategy, rules, stop, bar)
    meta = {"config": config.as_dict(), "passes": passes, "seconds": round(time.time() - start, 2),
            "candidate_evaluations": scorer.evaluations, "calibration_tokens": scorer.tokens,
            "projections": projections.meta.get("kind") or projections.meta.get("method", "?"), **strategy.meta()}
    return Trajectory(getattr(model, "mkv_name", "?"), projections.fingerprint(),
                      (geom.layers, geom.kv_heads, geom.head_dim), steps, meta)

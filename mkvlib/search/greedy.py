"""The greedy rank search (docs/design.md section 6, the paper's Algorithm 1), recorded as a :class:`Trajectory`.
Introduced in notebook 03.

Algorithm 1, in our words:

1. start with every rank at d;
2. while the budget is above the stop and some entry can still be lowered:
3.     score lowering each entry (layer, KV head, K or V) by one step: the calibration KL it would cause;
4.     commit the step that hurts least;
5.     record it (entry, new rank, KL after, budget after);
6.     and carry on from the new ranks.

:func:`algorithm1` is that loop, line for line. How step 3 scores is a strategy (:mod:`.strategies`: exact,
lazy, proxy); which steps step 4 may commit, and how many per pass, are rules (:mod:`.rules`: the floor, a
spread limit, K/V balance, batching). :func:`greedy_search` puts them together from a :class:`SearchConfig`.

A plain loop agrees with the exact search step by step (``Trajectory.moves()``: (layer, head, kind, new rank) of
each step; ``scorer.harm(entry, rank)``: the KL increase of moving one entry of the state set last)::

    cfg = SearchConfig(step=8, min_rank=4, strategy="exact", tokens=48, seq_len=24)
    library = greedy_search(model, proj, blocks, cfg).moves()
    geom, mine = KVGeometry.of(model), []
    lower = next_ranks(geom.head_dim, cfg.step, cfg.min_rank)          # {16: 8, 8: 4} for d = 16
    with calibration_scorer(model, proj, blocks, cfg.batch_size) as scorer:
        ranks = uniform_ranks(geom, 1.0)                                # 1. every rank at d
        while any(int(ranks[e]) in lower for e in geom.entries()):      # 2. down to the floor
            scorer.set_state(ranks)
            harm = {e: scorer.harm(e, lower[int(ranks[e])])             # 3. score each one-step lowering
                    for e in geom.entries() if int(ranks[e]) in lower}
            e = min(harm, key=lambda e: (harm[e], e))                   # 4. the least harmful (ties: lowest)
            ranks[e] = lower[int(ranks[e])]
            mine.append((*e, int(ranks[e])))                            # 5. record
    assert mine == library
"""
from __future__ import annotations

import time

import torch
from ..runtime import progress_bar as tqdm

from ..geometry import KVGeometry
from ..positions import block_offsets
from ..projections import resolve_projections
from ..ranks import budget_of, uniform_ranks
from ..recall import recall_blocks
from ..trajectory import Trajectory
from .config import SearchConfig
from .rules import Rules, next_ranks, rank_path
from .scoring import calibration_scorer
from .strategies import EPS, make_strategy

__all__ = ["algorithm1", "greedy_search", "next_ranks", "rank_path"]


def algorithm1(ranks: torch.Tensor, strategy, rules: Rules, stop: float, bar=None) -> tuple[list, int]:
    """Algorithm 1 from ``ranks`` (L, G, 2), lowered in place: the recorded steps
    (layer, head, kind, new rank, KL after, budget after) and the number of scoring passes."""
    d, steps, passes = rules.head_dim, [], 0
    while budget_of(ranks, d) > stop + EPS and rules.movable(ranks):        # 2. above the stop
        strategy.score(ranks, rules.movable(ranks))                        # 3. score each one-step lowering
        chosen = rules.choose(ranks, strategy)                             # 4. the best (batched: the k best)
        for entry, new_rank, kl in chosen:
            ranks[entry] = new_rank
            steps.append((*entry, new_rank, kl, budget_of(ranks, d)))      # 5. record
            if bar is not None:
                bar.update(1)
            if budget_of(ranks, d) <= stop + EPS:
                break
        strategy.advance(ranks, chosen, more=bool(rules.movable(ranks)))   # 6. carry on from the new ranks
        passes += 1
    return steps, passes


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
    rules, stop, start = Rules.of(config, geom), stop_budget(config, geom.head_dim), time.time()
    total = int(round((1 - stop) * geom.head_dim * len(rules.entries) / config.step))
    offsets = block_offsets(config.positions, len(blocks), blocks.shape[1], model)
    with calibration_scorer(model, projections, blocks, config.batch_size, config.nll_weight, offsets) as scorer:
        strategy = make_strategy(config, scorer, geom, rules, stop, progress)
        with tqdm(total=max(1, total), desc="greedy search", disable=not progress) as bar:
            steps, passes = algorithm1(uniform_ranks(geom, 1.0), strategy, rules, stop, bar)
    meta = {"config": config.as_dict(), "passes": passes, "seconds": round(time.time() - start, 2),
            "candidate_evaluations": scorer.evaluations, "calibration_tokens": scorer.tokens,
            "projections": projections.meta.get("kind") or projections.meta.get("method", "?"), **strategy.meta()}
    return Trajectory(getattr(model, "mkv_name", "?"), projections.fingerprint(),
                      (geom.layers, geom.kv_heads, geom.head_dim), steps, meta)

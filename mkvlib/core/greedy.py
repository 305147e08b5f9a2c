"""The greedy rank search (docs/design.md section 6, the paper's Algorithm 1): the loop and the rank ladder.
Introduced in notebook 03.

Algorithm 1, in our words:

1. start with every rank at d;
2. while the budget is above the stop and some entry can still be lowered:
3.     score lowering each entry (layer, KV head, K or V) by one step: the calibration KL it would cause;
4.     commit the step that hurts least;
5.     record it (entry, new rank, KL after, budget after);
6.     and carry on from the new ranks.

:func:`algorithm1` is that loop, line for line; :func:`rank_path` is the ladder one entry steps down. Step 3's
score is :class:`.scoring.Exact`, the calibration KL of :mod:`.scoring`; step 4's rules (the floor, a spread
limit, K/V balance, batching) are :class:`.rules.Rules`. So the core runs Algorithm 1 end to end::

    with calibration_scorer(model, proj, blocks) as scorer:
        steps, passes = algorithm1(uniform_ranks(geom, 1.0), Exact(scorer, geom), Rules(geom, 8, 4), stop=0.25)

The tooling around the loop lives in :mod:`mkvlib.search`: the lazy and proxy strategies, and
:func:`mkvlib.search.greedy_search`, which puts them together from a ``SearchConfig`` and records a
:class:`~.trajectory.Trajectory`.

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

import torch

from .ranks import budget_of

__all__ = ["EPS", "algorithm1", "next_ranks", "rank_path"]

EPS = 1e-12   # budgets within EPS of the stop count as reached


def rank_path(head_dim: int, step: int, min_rank: int) -> list[int]:
    """The ranks one entry passes through: d, d - step, ..., down to ``min_rank`` (the last step may be shorter)."""
    path = [head_dim]
    while path[-1] > min_rank:
        path.append(max(path[-1] - step, min_rank))
    return path


def next_ranks(head_dim: int, step: int, min_rank: int) -> dict[int, int]:
    """Each rank of :func:`rank_path` above the floor -> the rank one step below it."""
    path = rank_path(head_dim, step, min_rank)
    return dict(zip(path[:-1], path[1:]))


def algorithm1(ranks: torch.Tensor, strategy, rules, stop: float, bar=None) -> tuple[list, int]:
    """Algorithm 1 from ``ranks`` (L, G, 2), lowered in place: the recorded steps
    (layer, head, kind, new rank, KL after, budget after) and the number of scoring passes. ``strategy`` scores
    (``score``, ``advance``; e.g. :class:`.scoring.Exact`), ``rules`` say what may move (``movable``, ``choose``,
    ``head_dim``; :class:`.rules.Rules`)."""
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

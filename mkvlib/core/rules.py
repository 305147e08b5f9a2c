"""Which one-step lowerings the greedy search may commit (step 4 of Algorithm 1), and how many per scoring pass:
the rank ladder (d, d - step, ..., floor; :func:`.greedy.rank_path`), a spread limit, the balance of keys against
values, and batching. Introduced in notebook 03.

Each rule is a small object; :class:`Rules` holds one of each (``SearchConfig.rules`` builds it from the search's
settings). Options are dicts ``{(layer, kv_head, kind): new rank}``, kind K = 0 or V = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .geometry import K, V, KVGeometry
from .greedy import next_ranks, rank_path


@dataclass(frozen=True)
class SpreadLimit:
    """Allow only steps after which the highest and lowest rank differ by at most ``max_spread`` (None: any)."""
    max_spread: int | None = None

    def allows(self, ranks: torch.Tensor, entry: tuple, new_rank: int) -> bool:
        if self.max_spread is None:
            return True
        after = ranks.clone()
        after[entry] = new_rank
        return int(after.max()) - int(after.min()) <= self.max_spread


@dataclass(frozen=True)
class KVBalance:
    """'pooled': keys and values compete for one budget; 'separate': each step comes from the kind whose budget
    is higher (keys on ties), or from the other kind when that one has no step left."""
    balance: str = "pooled"

    @property
    def pools(self) -> tuple:
        """The pools candidates compete in: (None,) for one pool, else (K, V)."""
        return (None,) if self.balance == "pooled" else (K, V)

    def pool(self, ranks: torch.Tensor) -> int | None:
        """The kind the next step must come from (None: either)."""
        if self.balance == "pooled":
            return None
        return K if ranks[..., K].sum() >= ranks[..., V].sum() else V


@dataclass(frozen=True)
class Batch:
    """Commit up to ``size`` steps per scoring pass (1: the paper's one at a time). Each is the strategy's best
    among the steps the rules allow after the ones chosen before it, all scored from the pass's start."""
    size: int = 1

    def choose(self, ranks: torch.Tensor, strategy, rules: "Rules") -> list:
        """[(entry, new rank, KL after)], best first; empty when nothing is allowed."""
        chosen, trial = [], ranks.clone()
        for _ in range(self.size):
            taken = {c[0] for c in chosen}
            pool = rules.balance.pool(trial)
            best = strategy.best(rules.movable(trial, pool, taken))
            if best is None and pool is not None:
                best = strategy.best(rules.movable(trial, 1 - pool, taken))
            if best is None:
                break
            entry, kl = best
            trial[entry] = rules.lower[int(ranks[entry])]
            chosen.append((entry, int(trial[entry]), kl))
        return chosen


class Rules:
    """The ladder of ranks of ``geom``'s entries, and the spread, balance and batch rules. Entries in ``fixed``
    (e.g. the retrieval heads of :mod:`mkvlib.retrieval_heads`) never move: they keep the rank they start at."""

    def __init__(self, geom: KVGeometry, step: int, min_rank: int, spread: SpreadLimit = SpreadLimit(),
                 balance: KVBalance = KVBalance(), batch: Batch = Batch(), fixed=()):
        fixed = {tuple(e) for e in fixed}
        unknown = sorted(fixed - set(geom.entries()))
        if unknown:
            raise ValueError(f"entries to keep fixed {unknown} are not (layer, KV head, kind) entries of a model "
                             f"with {geom.layers} layers and {geom.kv_heads} KV heads")
        self.entries, self.head_dim = [e for e in geom.entries() if e not in fixed], geom.head_dim
        self.path = rank_path(geom.head_dim, step, min_rank)
        self.lower = next_ranks(geom.head_dim, step, min_rank)
        self.spread, self.balance, self.batch = spread, balance, batch

    def movable(self, ranks: torch.Tensor, pool: int | None = None, taken=()) -> dict:
        """{entry: new rank} of every entry above the floor (of kind ``pool`` unless None, not in ``taken``)
        whose one-step lowering the spread limit allows."""
        r = ranks.tolist()
        found = {e: self.lower[r[e[0]][e[1]][e[2]]] for e in self.entries
                 if r[e[0]][e[1]][e[2]] in self.lower and e not in taken and (pool is None or e[2] == pool)}
        return {e: n for e, n in found.items() if self.spread.allows(ranks, e, n)}

    def choose(self, ranks: torch.Tensor, strategy) -> list:
        """The steps to commit this pass: [(entry, new rank, KL after)] (see :class:`Batch`)."""
        return self.batch.choose(ranks, strategy, self)

"""How the greedy search scores its candidate steps (step 3 of Algorithm 1), beyond the exact scores of the
paper. Introduced in notebook 03.

Every strategy keeps ``kl``, the calibration KL at the current ranks, and answers three calls of the loop in
:mod:`mkvlib.core.greedy`:

- ``score(ranks, movable)``: score the one-step lowerings ``movable`` ({entry: new rank}) from ``ranks``;
- ``best(options)``: among ``options`` (a subset the rules allow), the step that hurts least, as
  ``(entry, KL after)`` (ties: the lowest entry), or None;
- ``advance(ranks, chosen, more)``: the steps ``chosen`` were committed, giving ``ranks``; ``more``: whether any
  step is left.

The core's :class:`~mkvlib.core.scoring.Exact` scores every candidate by its exact KL; :class:`Lazy` re-scores
only front-runners; :class:`Proxy` ranks by a calibrated local estimate (:class:`~.proxy.LocalProxy`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.geometry import KVGeometry
from ..core.greedy import EPS
from ..core.ranks import budget_of
from ..core.rules import Rules
from ..core.scoring import Exact, KLScorer
from .config import SearchConfig
from .proxy import LocalProxy


class Lazy(Exact):
    """Exact scores, computed only when needed: each candidate keeps its last exact harm (a lower bound when a
    step never hurts less after other entries were lowered), and the front-runner is re-scored until the best
    one was scored in this pass. The same choices as :class:`Exact` whenever that bound holds."""

    def __init__(self, scorer: KLScorer, geom: KVGeometry):
        super().__init__(scorer, geom)
        self.stale: dict = {}           # entry -> (harm, pass it was scored in)
        self.passes = -1

    def score(self, ranks: torch.Tensor, movable: dict) -> None:
        self.passes += 1                # nothing scored yet: best() scores on demand

    def best(self, options: dict):
        while options:
            entry = min(options, key=lambda e: (self.stale.get(e, (float("-inf"), -1))[0], e))
            harm, when = self.stale.get(entry, (None, -1))
            if when == self.passes:
                return entry, self.kl + harm
            self.stale[entry] = (self.scorer.harm(entry, options[entry]), self.passes)
        return None


class Proxy(Exact):
    """Candidates ranked by :class:`~.scoring.LocalProxy`; with ``shortlist`` n, the n best of each pool (at
    least as many as one pass commits) are re-scored exactly and ranked by that. ``refresh`` times on the way
    down (evenly spaced in budget, above ``stop``) the proxy is rebuilt around the current ranks. Without a
    shortlist ``kl`` is the running estimate (no forward pass per pass)."""

    def __init__(self, scorer: KLScorer, geom: KVGeometry, rules: Rules, shortlist: int = 0, refresh: int = 0,
                 stop: float = 0.0, progress: bool = False):
        super().__init__(scorer, geom)
        self.path, self.progress = rules.path, progress
        self.proxy = LocalProxy(scorer, self.path, None, progress)
        self.shortlist, self.pools, self.batched = shortlist, rules.balance.pools, rules.batch.size
        self.refresh_at = list(np.linspace(1.0, stop, refresh + 2)[1:-1])

    def score(self, ranks: torch.Tensor, movable: dict) -> None:
        harms = {e: self.proxy.harm(e, int(ranks[e]), r) for e, r in movable.items()}
        if self.shortlist:
            short = {}
            for pool in self.pools:
                best = sorted((e for e in harms if pool is None or e[2] == pool), key=lambda e: (harms[e], e))
                for e in best[:max(self.shortlist, self.batched)]:
                    short[e] = self.scorer.harm(e, movable[e])
            harms = short
        self.harms = harms

    def advance(self, ranks: torch.Tensor, chosen: list, more: bool) -> None:
        budget = budget_of(ranks, self.geom.head_dim)
        if self.refresh_at and budget <= self.refresh_at[0] + EPS and more:
            self.refresh_at = [b for b in self.refresh_at if b < budget - EPS]
            self.proxy = LocalProxy(self.scorer, self.path, ranks.clone(), self.progress)
            self.kl = self.proxy.kl_state                   # re-measured exactly at the new centre
        elif self.shortlist:
            self.kl = self.scorer.set_state(ranks)
        else:
            self.kl = chosen[-1][2]                         # the running estimate; no forward pass needed

    def meta(self) -> dict:
        raw = self.proxy.raw_sensitivity
        return {"proxy_sensitivity": [[round(raw.get((l, c), 0.0), 6) for c in (0, 1)] for l in range(self.geom.layers)]}


def make_strategy(config: SearchConfig, scorer: KLScorer, geom: KVGeometry, rules: Rules, stop: float,
                  progress: bool = False):
    """The strategy ``config.strategy`` names, starting from every rank at d."""
    if config.strategy == "exact":
        return Exact(scorer, geom)
    if config.strategy == "lazy":
        return Lazy(scorer, geom)
    return Proxy(scorer, geom, rules, config.shortlist, config.proxy_refresh, stop, progress)

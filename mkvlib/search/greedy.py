"""The greedy rank search (docs/design.md section 6, the paper's Algorithm 1), recorded as a :class:`Trajectory`.

Start with every rank at d. Each pass scores lowering each entry (layer, KV head, K or V) by one step, commits
the ``batched`` best (the one that hurts the calibration KL least first), and repeats down to the floor.
Introduced in notebook 03.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..compress import attach
from ..geometry import K, V, KVGeometry, budget_of
from ..projections import resolve_projections
from .config import SearchConfig
from .scoring import KLScorer, LocalProxy, with_rank
from .trajectory import Trajectory


def rank_path(head_dim: int, step: int, min_rank: int) -> list[int]:
    """The ranks one entry passes through: d, d - step, ..., down to ``min_rank`` (the last step may be shorter)."""
    path = [head_dim]
    while path[-1] > min_rank:
        path.append(max(path[-1] - step, min_rank))
    return path


def _pool(ranks: torch.Tensor, balance: str) -> int | None:
    """Which kind the next step must come from: None (pooled), or the kind whose budget is higher (K on ties)."""
    if balance == "pooled":
        return None
    return K if ranks[..., K].sum() >= ranks[..., V].sum() else V


class _Search:
    def __init__(self, model, projections, blocks, config: SearchConfig, progress: bool):
        self.model, self.config, self.progress = model, config, progress
        self.geom = KVGeometry.of(model)
        config.check_head_dim(self.geom.head_dim)
        self.projections = resolve_projections(projections, model)
        self.blocks = blocks
        d = self.geom.head_dim
        path = rank_path(d, config.step, config.min_rank)
        self.next_rank = dict(zip(path[:-1], path[1:]))
        self.path = path
        self.stop = config.stop_budget if config.stop_budget is not None else config.min_rank / d
        self.entries = [(l, g, c) for l in range(self.geom.layers) for g in range(self.geom.kv_heads) for c in (K, V)]

    def candidates(self, ranks, pool, exclude=()) -> list:
        r = ranks.tolist()
        found = [e for e in self.entries if r[e[0]][e[1]][e[2]] in self.next_rank and e not in exclude
                 and (pool is None or e[2] == pool)]
        return [e for e in found if self.within_spread(ranks, e)]

    def within_spread(self, ranks, entry) -> bool:
        """Whether lowering ``entry`` one step keeps max(rank) - min(rank) within ``config.max_spread``."""
        spread = self.config.max_spread
        if spread is None:
            return True
        new = self.next_rank[int(ranks[entry])]
        after = ranks.clone()
        after[entry] = new
        return int(after.max()) - int(after.min()) <= spread

    def run(self) -> Trajectory:
        cfg, d = self.config, self.geom.head_dim
        start = time.time()
        ranks = torch.full(self.geom.shape, d, dtype=torch.long)
        steps = []
        with attach(self.model, self.projections, ranks) as comp:
            self.scorer = KLScorer(self.model, comp, self.blocks, cfg.batch_size, cfg.nll_weight)
            kl_now = self.scorer.set_state(ranks)
            self.proxy = LocalProxy(self.scorer, self.path, None, self.progress) if cfg.strategy == "proxy" else None
            refresh_at = list(np.linspace(1.0, self.stop, cfg.proxy_refresh + 2)[1:-1])
            self.stale = {}                                     # lazy: entry -> (harm, pass number)
            total = int(round((1 - self.stop) * d * len(self.entries) / cfg.step))
            bar = tqdm(total=max(1, total), desc="greedy search", disable=not self.progress)
            passes = 0
            while budget_of(ranks, d) > self.stop + 1e-12 and self.candidates(ranks, None):
                chosen = self.pick(ranks, kl_now, passes)
                for entry, new_rank, kl in chosen:
                    ranks[entry] = new_rank
                    steps.append((*entry, new_rank, kl, budget_of(ranks, d)))
                    bar.update(1)
                    if budget_of(ranks, d) <= self.stop + 1e-12:
                        break
                passes += 1
                if refresh_at and budget_of(ranks, d) <= refresh_at[0] + 1e-12 and self.candidates(ranks, None):
                    refresh_at = [b for b in refresh_at if b < budget_of(ranks, d) - 1e-12]
                    self.proxy = LocalProxy(self.scorer, self.path, ranks.clone(), self.progress)
                    kl_now = self.proxy.kl_state                # re-measured exactly at the new centre
                elif cfg.strategy == "proxy" and not cfg.shortlist:
                    kl_now = chosen[-1][2]                      # the running estimate; no forward pass needed
                else:
                    kl_now = self.scorer.set_state(ranks)
            bar.close()
        meta = {"config": cfg.as_dict(), "passes": passes, "seconds": round(time.time() - start, 2),
                "candidate_evaluations": self.scorer.evaluations, "calibration_tokens": self.scorer.tokens,
                "projections": self.projections.meta.get("kind") or self.projections.meta.get("method", "?"),
                "proxy_sensitivity": None if self.proxy is None else
                [[round(self.proxy.raw_sensitivity.get((l, c), 0.0), 6) for c in (K, V)]
                 for l in range(self.geom.layers)]}
        return Trajectory(getattr(self.model, "mkv_name", "?"), self.projections.fingerprint(),
                          (self.geom.layers, self.geom.kv_heads, d), steps, meta)

    # --- choosing the steps of one pass ---------------------------------------------------------------
    def exact_harm(self, ranks, entry, kl_now) -> float:
        return self.scorer.score(with_rank(ranks, entry, self.next_rank[int(ranks[entry])]), entry[0]) - kl_now

    def pick(self, ranks, kl_now, pass_no) -> list:
        """Up to ``batched`` (entry, new rank, KL after the step) for this pass, all scored from its start state."""
        cfg = self.config
        strategy = cfg.strategy
        harms = {}
        if strategy == "exact":
            harms = {e: self.exact_harm(ranks, e, kl_now) for e in self.candidates(ranks, None)}
        elif strategy == "proxy":
            harms = {e: self.proxy.harm(e, int(ranks[e]), self.next_rank[int(ranks[e])])
                     for e in self.candidates(ranks, None)}
            if cfg.shortlist:
                short = {}
                for pool in ((None,) if cfg.balance == "pooled" else (K, V)):
                    best = sorted((e for e in harms if pool is None or e[2] == pool), key=lambda e: (harms[e], e))
                    for e in best[:max(cfg.shortlist, cfg.batched)]:
                        short[e] = self.exact_harm(ranks, e, kl_now)
                harms = short
        chosen, trial = [], ranks.clone()
        for _ in range(cfg.batched):
            pool = _pool(trial, cfg.balance)
            taken = {c[0] for c in chosen}
            if strategy == "lazy":
                entry = self.lazy_best(ranks, trial, kl_now, pass_no, pool, taken)
                if entry is None and pool is not None:
                    entry = self.lazy_best(ranks, trial, kl_now, pass_no, 1 - pool, taken)
                harm = None if entry is None else self.stale[entry][0]
            else:
                allowed = [e for e in harms if e not in taken and self.within_spread(trial, e)]
                options = [e for e in allowed if pool is None or e[2] == pool] or allowed
                entry = min(options, key=lambda e: (harms[e], e)) if options else None
                harm = None if entry is None else harms[entry]
            if entry is None:
                break
            new_rank = self.next_rank[int(ranks[entry])]
            trial[entry] = new_rank
            chosen.append((entry, new_rank, kl_now + harm))
        return chosen

    def lazy_best(self, ranks, trial, kl_now, pass_no, pool, taken):
        """The candidate with the lowest harm, re-scoring stale front-runners until the best one is fresh."""
        options = self.candidates(trial, pool, taken)     # untaken entries have the same rank in trial and ranks
        while options:
            entry = min(options, key=lambda e: (self.stale.get(e, (float("-inf"), -1))[0], e))
            harm, when = self.stale.get(entry, (None, -1))
            if when == pass_no:
                return entry
            self.stale[entry] = (self.exact_harm(ranks, entry, kl_now), pass_no)
        return None


def greedy_search(model, projections, blocks: torch.Tensor, config: SearchConfig | None = None,
                  progress: bool = True) -> Trajectory:
    """Search adaptive ranks for ``model`` with ``projections`` on calibration ``blocks`` (N, T).

    Returns the whole trajectory from every rank at d down to ``config.stop_budget`` (or the floor); the model is
    left exactly as it was. ``projections``: an object, a path, or 'pca'/'trained' (shipped).
    """
    return _Search(model, projections, blocks, config or SearchConfig(), progress).run()

"""Ranks per (layer, KV head, K or V) and their budget: the uniform and adaptive allocations, any ranks spec as an
(L, G, 2) tensor, and the budget a tensor reaches.

Ranks are a LongTensor of shape (L, G, 2): ``ranks[l, g, K]`` for keys, ``ranks[l, g, V]`` for values. A
*ranks spec* is one integer (every entry), a float budget (uniform: every entry at round(budget * d)) or such a
tensor; :func:`resolve_ranks` turns any of them into the tensor. :func:`ranks_for` is the one way to ranks from
an allocation: 'uniform' gives the budget itself, 'adaptive' the prefix of a greedy-search trajectory (the one
shipped for the projections, or one given); a :class:`Method` names one such choice with its projections.
Introduced in notebook 01 (adaptive ranks: notebook 03).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import check_allocation, check_budget, check_rank
from .geometry import K, V, KVGeometry
from .projections import resolve_projections
from .trajectory import Trajectory, find_trajectory


def uniform_ranks(geom: KVGeometry, budget: float) -> torch.Tensor:
    """Every entry at round(budget * d): the uniform allocation for a budget in (0, 1]."""
    check_budget(budget)
    rank = int(round(budget * geom.head_dim))
    return torch.full(geom.shape, rank, dtype=torch.long)


def uniform_ranks_at(geometry: tuple, key_budget: float, value_budget: float | None = None) -> torch.Tensor:
    """Uniform ranks (L, G, 2) for ``geometry`` (L, G, d): floor(b * d), so the budget is never exceeded."""
    L, G, d = geometry
    value_budget = key_budget if value_budget is None else value_budget
    ranks = torch.empty((L, G, 2), dtype=torch.long)
    ranks[..., K] = math.floor(key_budget * d + 1e-9)
    ranks[..., V] = math.floor(value_budget * d + 1e-9)
    return ranks


def resolve_ranks(spec, geom: KVGeometry) -> torch.Tensor:
    """Ranks from one integer (every entry), a float budget (uniform), or a tensor of shape (L, G, 2).

    Raises ValueError naming what was wrong; the input is never modified.
    """
    d = geom.head_dim
    if isinstance(spec, bool):
        raise ValueError("ranks must be an int, a budget fraction or a (L, G, 2) tensor, not a bool")
    if isinstance(spec, int):
        return torch.full(geom.shape, check_rank(spec, d), dtype=torch.long)
    if isinstance(spec, float):
        return uniform_ranks(geom, spec)
    ranks = torch.as_tensor(spec)
    if ranks.is_floating_point():
        if not torch.all(ranks == ranks.round()):
            raise ValueError("a ranks tensor must hold whole numbers")
    ranks = ranks.detach().to("cpu", torch.long).clone()
    if tuple(ranks.shape) != geom.shape:
        raise ValueError(f"ranks tensor has shape {tuple(ranks.shape)}, but this model needs {geom.shape} "
                         f"(layers, kv_heads, K/V)")
    if ranks.min() < 0 or ranks.max() > d:
        raise ValueError(f"ranks must lie in [0, head_dim={d}]; got min {int(ranks.min())}, max {int(ranks.max())}")
    return ranks


def budget_of(ranks: torch.Tensor, head_dim: int) -> float:
    """The budget: the mean of r / d over all (layer, KV head, K or V) entries."""
    return float(ranks.double().mean() / head_dim)


def kv_fraction(ranks: torch.Tensor, head_dim: int) -> float:
    """Numbers stored per token over the uncompressed cache's: sum(r_K + r_V) / (2 L G d)."""
    return float(ranks.sum().double() / (ranks.numel() * head_dim))


def split_budgets(ranks: torch.Tensor, head_dim: int) -> tuple[float, float]:
    """(key budget, value budget)."""
    return budget_of(ranks[..., K], head_dim), budget_of(ranks[..., V], head_dim)


def ranks_for(model, projections, allocation: str, budget: float, trajectory=None):
    """A ranks spec at ``budget``: the float budget itself ('uniform'), or the (L, G, 2) ranks of a greedy-search
    trajectory ('adaptive'): ``trajectory`` (a :class:`~mkvlib.core.trajectory.Trajectory` or a path to one), which
    must have been searched with ``projections``, else the one shipped for them (found by fingerprint)."""
    if check_allocation(allocation) == "uniform":
        return check_budget(budget)
    if trajectory is None:
        traj = find_trajectory(model, projections)
    else:
        traj = trajectory if isinstance(trajectory, Trajectory) else Trajectory.load(trajectory)
        traj.check_projections(resolve_projections(projections, model), model)
    return resolve_ranks(traj.ranks_at(budget), KVGeometry.of(model))


def check_whole_tokens(first, recent) -> tuple[int, int]:
    """``(first, recent)`` token counts kept at full width, checked: whole numbers, at least 0."""
    for name, n in (("keep_first", first), ("keep_recent", recent)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a whole number of tokens >= 0, not {n!r}")
    return first, recent


def stored_fraction(budget: float, tokens: int, first: int = 0, recent: int = 0) -> float:
    """Bytes stored for ``tokens`` tokens, as a fraction of an uncompressed cache's, by a cache that holds every
    token at ``budget`` of its features plus whole copies of the first ``first`` and the latest ``recent`` tokens
    (:class:`mkvlib.core.cache.CompressedCache` with ``keep_first``/``keep_recent``)."""
    first, recent = check_whole_tokens(first, recent)
    return budget + (min(first, tokens) + min(recent, tokens)) / tokens


def budget_for_bytes(fraction: float, tokens: int, first: int = 0, recent: int = 0) -> float:
    """The feature budget at which :func:`stored_fraction` equals ``fraction``."""
    whole = stored_fraction(0.0, tokens, first, recent)
    if not 0 < fraction <= 1 or fraction <= whole:
        raise ValueError(f"{fraction:.4g} of the bytes of {tokens} tokens cannot hold {first} + {recent} whole tokens "
                         f"({whole:.4g} of the bytes) plus any compressed ones: give a larger fraction or fewer "
                         "whole tokens")
    return min(1.0, fraction - whole)


@dataclass(frozen=True)
class Method:
    """One way to compress, as a results table names it: projections ('pca', 'trained', a path or a Projections)
    and an allocation, 'uniform' (every rank at the budget) or 'adaptive' (the ranks of a greedy-search
    trajectory: ``trajectory``, a path or a Trajectory, else the one shipped for the projections). With
    ``keep_first``/``keep_recent`` tokens kept whole, a budget is the fraction of bytes stored, whole tokens
    included (:meth:`feature_budget`)."""
    name: str
    projections: object = "pca"
    allocation: str = "uniform"
    trajectory: object = None
    keep_first: int = 0
    keep_recent: int = 0

    def __post_init__(self):
        check_whole_tokens(self.keep_first, self.keep_recent)
        check_allocation(self.allocation, f"method {self.name!r}: allocation")
        if self.trajectory is not None and self.allocation != "adaptive":
            raise ValueError(f"method {self.name!r}: a trajectory gives adaptive ranks; its allocation is "
                             f"{self.allocation!r}")

    def ranks(self, model, projections, budget: float):
        """The ranks spec at ``budget`` for ``projections`` (this method's, resolved): see :func:`ranks_for`."""
        return ranks_for(model, projections, self.allocation, budget, self.trajectory)

    def feature_budget(self, budget: float, tokens: int) -> float:
        """The features kept per token when ``budget`` of the bytes of ``tokens`` tokens are stored."""
        if not (self.keep_first or self.keep_recent):
            return budget
        return budget_for_bytes(budget, tokens, self.keep_first, self.keep_recent)

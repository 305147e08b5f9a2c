"""``pca`` and ``matryoshka``: feature-axis compression by orthogonal projections, in the real compressed cache.

Per layer and KV head of ranks (r_K, r_V) the cache (:class:`mkvlib.core.cache.CompressedCache`) stores per
token k U_K[:, :r_K] and (v - mu) U_V[:, :r_V] in the model's dtype: (r_K + r_V) x element size bytes; the
fixed bytes are the truncated bases and value means. ``pca`` uses the PCA bases, ``matryoshka`` the trained
ones; ``allocation`` 'uniform' gives every rank round(budget x d), 'adaptive' the searched ranks of the shipped
trajectory (budgets below its floor are left out). Ablations: ``only='keys'`` (or ``'values'``) compresses
that half alone, ``layers='a-b'`` (or one number) those layers alone, the rest at full rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...core.cache import CompressedCache
from ...core.geometry import KVGeometry
from ...core.projections import Projections, resolve_projections
from ...core.ranks import ranks_for, resolve_ranks
from ..base import ByteReport, KVMethod, Setting, register
from ..layers import FEATURE_BUDGETS, cache_runner, check_choice, check_fractions, element_size


def projection_bytes(ranks: torch.Tensor, head_dim: int, element: int) -> int:
    """Bytes of the truncated bases and value means a compressed cache at ``ranks`` (L, G, 2) holds:
    sum over (l, g) of d x (r_K + r_V + 1) x element size."""
    return int(head_dim * (ranks.sum() + ranks.shape[0] * ranks.shape[1])) * element


def layer_range(spec, n_layers: int | None) -> tuple[int, int]:
    """(first, last) layer, inclusive, of ``spec``: 'all', 'a-b' or one layer number; checked against
    ``n_layers`` when it is given. ValueError says what is accepted."""
    if spec == "all":
        return 0, (n_layers or 1) - 1
    text = str(spec)
    parts = text.split("-")
    if isinstance(spec, bool) or len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"layers must be 'all', a range such as 0-9 (inclusive) or one layer number, not {spec!r}")
    first, last = int(parts[0]), int(parts[-1])
    if first > last:
        raise ValueError(f"layers {spec!r}: the first layer is after the last")
    if n_layers is not None and last >= n_layers:
        raise ValueError(f"layers {spec!r}: the model has layers 0-{n_layers - 1}")
    return first, last


@dataclass(frozen=True)
class ProjectionMethod(KVMethod):
    """Options: ``projections`` ('pca', 'trained', a path or a :class:`Projections`), ``allocation`` ('uniform'
    or 'adaptive'), ``budgets`` (feature budgets in (0, 1], the settings), ``trajectory`` (a path or Trajectory
    for adaptive ranks; None: the shipped one), ``only`` ('both', or 'keys' / 'values' to compress that half
    alone, the other kept at full rank), ``layers`` ('all', or 'a-b' / one number: compress those layers alone)."""
    projections: object = "pca"
    allocation: str = "uniform"
    budgets: tuple = FEATURE_BUDGETS
    trajectory: object = None
    only: str = "both"
    layers: object = "all"
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    axis = "feature"

    def __post_init__(self):
        check_choice("allocation", self.allocation, ("uniform", "adaptive"))
        check_choice("only", self.only, ("both", "keys", "values"))
        layer_range(self.layers, None)
        object.__setattr__(self, "budgets", check_fractions("budgets", self.budgets))
        if not isinstance(self.projections, (str, Projections)) and not hasattr(self.projections, "__fspath__"):
            raise ValueError(f"projections must be 'pca', 'trained', a path or a Projections, not "
                             f"{type(self.projections).__name__}")

    # --- projections and ranks ---------------------------------------------------------------------------------
    def resolved(self, model) -> Projections:
        key = ("proj", id(model), getattr(model, "mkv_name", None))
        if key not in self._memo:
            self._memo[key] = resolve_projections(self.projections, model)
        return self._memo[key]

    def ranks(self, model, setting: Setting) -> torch.Tensor:
        """Ranks (L, G, 2) of a setting (with ``only``, the other half at full rank)."""
        budget = float(setting.get("budget"))
        key = ("ranks", id(model), getattr(model, "mkv_name", None), budget)
        geom = KVGeometry.of(model)
        if key not in self._memo:
            spec = ranks_for(model, self.resolved(model), self.allocation, budget, self.trajectory)
            self._memo[key] = resolve_ranks(spec, geom)
        ranks = self._memo[key].clone()
        if self.only == "both" and self.layers == "all":
            return ranks
        if self.only != "both":
            ranks[..., 1 if self.only == "keys" else 0] = geom.head_dim
        first, last = layer_range(self.layers, geom.layers)
        ranks[:first] = geom.head_dim
        ranks[last + 1:] = geom.head_dim
        return ranks

    # --- the interface -----------------------------------------------------------------------------------------
    def available(self, model) -> tuple:
        """The budgets this method can run on ``model``: all of them for uniform ranks; for adaptive ranks those
        the trajectory reaches (its search stops at a floor). Raises the first error when none is reachable."""
        if self.allocation == "uniform":
            return self.budgets
        reachable, first_error = [], None
        for b in self.budgets:
            try:
                self.ranks(model, Setting(self.name, "", (("budget", b),)))
                reachable.append(b)
            except (OSError, ValueError) as err:
                first_error = first_error or err
        if not reachable:
            raise first_error
        return tuple(reachable)

    def unsupported(self, model) -> str | None:
        try:
            self.resolved(model)
            self.available(model)
        except (OSError, ValueError) as err:
            return f"{self.name} needs its projections{' and rank trajectory' * (self.allocation == 'adaptive')} " \
                   f"for this model: {err}"
        return None

    def settings(self, model) -> list[Setting]:
        half = () if self.only == "both" else (("only", self.only),)       # part of the stored results' key
        half += () if self.layers == "all" else (("layers", str(self.layers)),)
        label = "" if self.only == "both" else f" {self.only} only"
        label += "" if self.layers == "all" else f" layers {self.layers}"
        return [Setting(self.name, f"{100 * b:g}%{label}", (("allocation", self.allocation), ("budget", b)) + half)
                for b in self.available(model)]

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        ranks, element = self.ranks(model, setting), element_size(model)
        per_token = int(ranks.sum()) * element
        geom = KVGeometry.of(model)
        return ByteReport.of(model, per_token, projection_bytes(ranks, geom.head_dim, element), context,
                             key_numbers=int(ranks[..., 0].sum()), value_numbers=int(ranks[..., 1].sum()))

    def runner(self, model, setting: Setting):
        proj, ranks = self.resolved(model), self.ranks(model, setting)
        return cache_runner(model, lambda batch, tokens: CompressedCache(model, proj, ranks, reserve=tokens))


@register
@dataclass(frozen=True)
class PCA(ProjectionMethod):
    """PCA bases of calibration keys and values (the shipped 'pca' projections by default)."""
    name = "pca"


@register
@dataclass(frozen=True)
class Matryoshka(ProjectionMethod):
    """MatryoshkaKV: the trained bases (shipped 'trained'), adaptive greedy-searched ranks by default."""
    name = "matryoshka"
    projections: object = "trained"
    allocation: str = "adaptive"

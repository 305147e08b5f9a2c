"""Simulated compression: attach projections and ranks to a loaded model through the attention hook.

For layer l and KV head g with key rank r_K and value rank r_V (docs/design.md, section 2):

    scores = (q U_K[:, :r_K]) . (k U_K[:, :r_K]) * scaling     (the model's own scale, e.g. 1/sqrt(d))
    o      = softmax(scores) ((v - mu) U_V[:, :r_V]) U_V[:, :r_V]^T + mu

Since q U U^T k = q . (P k) with P = U[:, :r] U[:, :r]^T, the simulation replaces each KV head's keys by P_K k
and values by P_V (v - mu) + mu, before any repeat_kv, and leaves the query and the scale alone. Ranks may
differ per (layer, KV head, K or V). Introduced in notebook 01; the trainable variant in notebook 02.
"""
from __future__ import annotations

import torch
from torch import nn

from . import attention
from .geometry import KVGeometry
from .projections import Projections, resolve_projections
from .ranks import budget_of, check_whole_tokens, resolve_ranks


def skew(w: torch.Tensor) -> torch.Tensor:
    """The skew-symmetric part W - W^T of a batch of square matrices."""
    return w - w.transpose(-1, -2)


def cayley(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal matrix (I - A)^-1 (I + A) of a skew-symmetric A (..., d, d); identity at A = 0."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    return torch.linalg.solve(eye - a, eye + a)


def rank_mask(ranks: torch.Tensor, d: int) -> torch.Tensor:
    """(..., d) float mask with ones in the first ``ranks[...]`` columns."""
    return (torch.arange(d, device=ranks.device) < ranks[..., None]).float()


def projectors(uk: torch.Tensor, uv: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projectors P_K, P_V (G, d, d) onto the first ranks[g, K] / ranks[g, V] columns of the bases U_K, U_V
    (G, d, d), for ``ranks`` (G, 2)."""
    masks = rank_mask(ranks.to(uk.device), uk.shape[-1])                # (G, 2, d)
    return (uk * masks[:, 0, None, :]) @ uk.transpose(-1, -2), (uv * masks[:, 1, None, :]) @ uv.transpose(-1, -2)


def project_kv(key, value, pk, pv, value_mean) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys P_K k and values P_V (v - mu) + mu per KV head: ``key``, ``value`` (B, G, S, d), projectors (G, d, d),
    ``value_mean`` mu (G, d). Computed in float32, returned in the inputs' dtypes."""
    mu = value_mean.to(key.device)[None, :, None, :]                     # (1, G, 1, d)
    k = torch.einsum("bgsd,gde->bgse", key.float(), pk).to(key.dtype)
    v = (torch.einsum("bgsd,gde->bgse", value.float() - mu, pv) + mu).to(value.dtype)
    return k, v


class Projector(nn.Module):
    """Bases for every (layer, KV head): fixed PCA/trained bases, optionally times a trainable Cayley rotation.

    U = U_init @ cayley(skew(A)) with A zero at start, so training begins exactly at ``U_init`` and every
    basis stays orthogonal. Parameters (when trainable): ``key_rotation`` and ``value_rotation``, (L, G, d, d).
    """

    def __init__(self, projections: Projections, trainable: bool = False):
        super().__init__()
        self.meta = dict(projections.meta)
        self.register_buffer("keys_init", projections.keys.detach().float().clone())
        self.register_buffer("values_init", projections.values.detach().float().clone())
        self.register_buffer("value_mean", projections.value_mean.detach().float().clone())
        self.key_spectrum, self.value_spectrum = projections.key_spectrum, projections.value_spectrum
        self.trainable = trainable
        if trainable:
            self.key_rotation = nn.Parameter(torch.zeros_like(self.keys_init))
            self.value_rotation = nn.Parameter(torch.zeros_like(self.values_init))

    @property
    def head_dim(self) -> int:
        return self.keys_init.shape[-1]

    def bases(self, layer: int | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_K, U_V) for one layer (G, d, d) or a slice of layers, in float32."""
        uk, uv = self.keys_init[layer], self.values_init[layer]
        if self.trainable:
            uk = uk @ cayley(skew(self.key_rotation[layer]))
            uv = uv @ cayley(skew(self.value_rotation[layer]))
        return uk, uv

    def operators(self, layer: int, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projectors P_K, P_V (G, d, d) of one layer for ``ranks`` (G, 2): see :func:`projectors`."""
        return projectors(*self.bases(layer), ranks)

    def to_projections(self, **meta) -> Projections:
        """Materialise the current bases as :class:`Projections` (float32, CPU)."""
        with torch.no_grad():
            uk, uv = self.bases()
        return Projections(uk.cpu(), uv.cpu(), self.value_mean.cpu(), self.key_spectrum, self.value_spectrum,
                           dict(self.meta, **meta))


class RankedHook:
    """What every compression attached as an attention hook shares: ``ranks`` (L, G, 2) over ``geometry``, their
    ``budget``, and removing the hook (installed as ``_handle``) with :meth:`detach` or at the end of a ``with``."""

    @property
    def budget(self) -> float:
        return budget_of(self.ranks, self.geometry.head_dim)

    def detach(self) -> None:
        """Remove the hook; the model computes exactly as before attaching."""
        self._handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()


class KeepsWhole:
    """Tokens kept whole in a simulated compression, for a hook with ``model`` and ``enabled`` whose ``__call__``
    returns :meth:`with_whole` of its compressed keys and values. Comes before :class:`RankedHook` in the bases."""

    keep_first = keep_recent = 0
    _whole_handle = None

    def keep_whole(self, first: int = 0, recent: int = 0) -> None:
        """Keep the first ``first`` tokens (attention sinks) and, for each query, its ``recent`` latest tokens at
        full width, as a quantized cache keeps a full-precision residual window; every other token is compressed.
        Each query sees exactly what a decoding cache holding those tokens whole would give it.
        :func:`mkvlib.core.ranks.stored_fraction` counts their bytes. ``keep_whole()`` returns to compressing every token."""
        first, recent = check_whole_tokens(first, recent)
        self.keep_first, self.keep_recent = first, recent
        wanted = first > 0 or recent > 0
        if wanted and self._whole_handle is None:
            self._whole_handle = attention.install(self.model, mask=self._whole_mask)
        elif not wanted and self._whole_handle is not None:
            self._whole_handle.remove()
            self._whole_handle = None

    def detach(self) -> None:
        self.keep_whole()
        super().detach()

    def with_whole(self, k, v, key, value):
        """The compressed keys and values ``k``, ``v`` (B, G, S, d), followed by the whole ``key``, ``value`` when
        tokens are kept whole (:meth:`_whole_mask` then picks one copy of each token per query)."""
        if self._whole_handle is None:
            return k, v
        return torch.cat([k, key], dim=2), torch.cat([v, value], dim=2)

    def _whole_mask(self, module, query, key, attention_mask):
        """The mask over [compressed; whole] copies of the same S tokens: query i (absolute position S - T + i)
        reads token j whole when j < keep_first or i - j < keep_recent, else compressed."""
        if not self.enabled:
            return attention_mask
        S, T = key.shape[2] // 2, query.shape[2]
        i = torch.arange(S - T, S, device=query.device)[:, None]
        j = torch.arange(S, device=query.device)[None, :]
        if attention_mask is None:
            allowed = j <= i
        else:
            allowed = attention_mask[..., :S] if attention_mask.dtype == torch.bool else attention_mask[..., :S] == 0
        whole = (j < self.keep_first) | (i - j < self.keep_recent)
        return torch.cat([allowed & ~whole, allowed & whole], dim=-1).expand(query.shape[0], 1, T, 2 * S)


class Compression(KeepsWhole, RankedHook):
    """A projector plus ranks, attached to a model. Turn it off and on with ``enabled``; change ranks with
    :meth:`set_ranks`. Use as a context manager, or call :meth:`detach`."""

    def __init__(self, model, projector: Projector, ranks):
        self.model, self.projector = model, projector
        self.geometry = KVGeometry.of(model)
        self.enabled = True
        self.set_ranks(ranks)
        self._cache: dict = {}
        self._handle = attention.install(model, hook=self)

    def set_ranks(self, ranks) -> None:
        """Ranks as one int, a budget in (0, 1], or a (L, G, 2) tensor; validated before anything changes."""
        self.ranks = resolve_ranks(ranks, self.geometry)
        self._cache = {}

    def __call__(self, module, query, key, value):
        if not self.enabled:
            return query, key, value
        layer = module.layer_idx
        k, v = project_kv(key, value, *self._operators(layer, key.device), self.projector.value_mean[layer])
        return (query, *self.with_whole(k, v, key, value))

    def _operators(self, layer: int, device):
        train_path = self.projector.trainable and torch.is_grad_enabled()
        if train_path:
            return self.projector.operators(layer, self.ranks[layer])
        version = tuple(p._version for p in self.projector.parameters())
        hit = self._cache.get(layer)
        if hit is None or hit[0] != version:
            with torch.no_grad():
                pk, pv = self.projector.operators(layer, self.ranks[layer])
            hit = (version, pk.to(device), pv.to(device))
            self._cache[layer] = hit
        return hit[1], hit[2]


def attach(model, projections, ranks=1.0, trainable: bool = False, keep_first: int = 0,
           keep_recent: int = 0) -> Compression:
    """Attach ``projections`` (object, path, 'pca' or 'trained', or a :class:`Projector`) at ``ranks``.

    ``ranks``: one int for every entry, a budget in (0, 1] for uniform ranks, or a (L, G, 2) tensor.
    Bad ranks or projections for another model raise before the model is touched.
    """
    if isinstance(projections, Projector):
        projector = projections
    else:
        projector = Projector(resolve_projections(projections, model), trainable=trainable)
    geom = KVGeometry.of(model)
    if tuple(projector.keys_init.shape[:3]) != (geom.layers, geom.kv_heads, geom.head_dim):
        raise ValueError(f"projector geometry {tuple(projector.keys_init.shape[:3])} does not match the model's "
                         f"(layers, kv_heads, head_dim) = {(geom.layers, geom.kv_heads, geom.head_dim)}")
    resolve_ranks(ranks, geom)  # validate first: nothing is installed on bad input
    check_whole_tokens(keep_first, keep_recent)
    device = next(model.parameters()).device
    projector.to(device)
    compression = Compression(model, projector, ranks)
    compression.keep_whole(keep_first, keep_recent)
    return compression

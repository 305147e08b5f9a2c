"""Compositions: ``matryoshka+quant`` (quantized reduced keys and values) and ``streaming+matryoshka``.

``matryoshka+quant`` stores the MatryoshkaKV cache's reduced tensors k~ (B, n, S, r_K), v~ (B, n, S, r_V) as
``nbits`` unsigned integers per token and KV head, in groups of ``group_size`` rank coordinates, asymmetric
min-max (q = round((x - min) / scale), scale = (max - min) / (2^nbits - 1)). Bytes per token and (layer, KV
head, K or V) of rank r: ceil(r x nbits / 8) packed + 2 x ceil(r / group_size) scales and minima in the model's
dtype. Attention dequantizes exactly what is stored. Per token rather than per channel (as KIVI does for keys),
so every token's bytes are final when written, with no full-precision residual.

``streaming+matryoshka``: StreamingLLM's eviction (:mod:`.eviction`) on the MatryoshkaKV cache; bytes per token
are kept / S x sum(r_K + r_V) x element size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...core.cache import CompressedCache, CompressedLayer, ReducedKV
from ...core.geometry import KVGeometry
from ..base import ByteReport, Setting, register
from ..layers import (bench_layers, cache_runner, check_context, check_count, check_fractions, element_size,
                      sliding_reason)
from .eviction import EvictingCache, kept_tokens, streaming_selector
from .projection import ProjectionMethod, projection_bytes

QUANT_BITS = (8, 4, 2)


def quantize(x: torch.Tensor, nbits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., r) -> packed uint8 (..., ceil(r nbits / 8)) and (scale, min) (..., ceil(r / group), 2) in x's dtype."""
    r = x.shape[-1]
    groups = math.ceil(r / group)
    if r == 0:
        return x.new_zeros(*x.shape[:-1], 0, dtype=torch.uint8), x.new_zeros(*x.shape[:-1], 0, 2)
    padded = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], groups * group - r)], -1).float()
    g = padded.unflatten(-1, (groups, group))                                     # (..., groups, group)
    low, high = g.amin(-1), g.amax(-1)
    scale = ((high - low) / (2 ** nbits - 1)).clamp_min(torch.finfo(torch.float32).tiny)
    meta = torch.stack([scale, low], -1).to(x.dtype)                              # what is stored
    scale, low = meta[..., 0].float(), meta[..., 1].float()
    q = ((g - low[..., None]) / scale[..., None]).round().clamp(0, 2 ** nbits - 1).to(torch.uint8)
    q = q.flatten(-2)[..., :r]
    per_byte = 8 // nbits
    q = torch.cat([q, q.new_zeros(*q.shape[:-1], (-r) % per_byte)], -1).unflatten(-1, (-1, per_byte))
    shifts = torch.arange(0, 8, nbits, dtype=torch.uint8, device=x.device)
    packed = (q << shifts).sum(-1, dtype=torch.uint8)
    return packed, meta


def dequantize(packed: torch.Tensor, meta: torch.Tensor, r: int, nbits: int, group: int,
               dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`quantize` up to rounding: (..., r) in ``dtype``."""
    if r == 0:
        return packed.new_zeros(*packed.shape[:-1], 0, dtype=dtype)
    shifts = torch.arange(0, 8, nbits, dtype=torch.uint8, device=packed.device)
    q = ((packed[..., None] >> shifts) & (2 ** nbits - 1)).flatten(-2)[..., :r].float()
    groups = meta.shape[-2]
    q = torch.cat([q, q.new_zeros(*q.shape[:-1], groups * group - r)], -1).unflatten(-1, (groups, group))
    x = q * meta[..., 0, None].float() + meta[..., 1, None].float()
    return x.flatten(-2)[..., :r].to(dtype)


def quantized_token_bytes(ranks: torch.Tensor, nbits: int, group: int, element: int) -> int:
    """Bytes per token of :class:`QuantizedReducedLayer` s at ``ranks`` (L, G, 2): packed integers plus scales and
    minima, summed over (layer, KV head, K/V)."""
    return sum(math.ceil(r * nbits / 8) + 2 * math.ceil(r / group) * element for r in ranks.flatten().tolist())


class QuantizedReducedLayer(CompressedLayer):
    """A compressed layer storing its reduced keys and values as packed ``nbits`` integers with scales."""

    def __init__(self, nbits: int, group: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.nbits, self.group = nbits, group

    def lazy_initialization(self, key_states, value_states):
        super().lazy_initialization(key_states, value_states)
        self.stored = [[None, None] for _ in self.groups]      # per group: [(packed K, meta K), (packed V, meta V)]

    def update(self, key_states, value_states, *args, **kwargs):
        """Project new post-RoPE keys/values (B, G, T, d), quantize and append them; returns a ReducedKV twice."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        for i, (group, (uk, uv, mu)) in enumerate(zip(self.groups, self.bases)):
            idx = group.index
            k = torch.einsum("bntd,ndr->bntr", key_states[:, idx], uk)
            v = torch.einsum("bntd,ndr->bntr", value_states[:, idx] - mu[:, None], uv)
            for j, x in enumerate((k, v)):
                packed, meta = quantize(x, self.nbits, self.group)
                old = self.stored[i][j]
                self.stored[i][j] = (packed, meta) if old is None else \
                    (torch.cat([old[0], packed], 2), torch.cat([old[1], meta], 2))
        self.length += key_states.shape[2]
        handle = ReducedKV(self)
        return handle, handle

    def reduced(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Group i's dequantized keys (B, n, S, r_K) and values (B, n, S, r_V)."""
        ranks = (self.groups[i].key_rank, self.groups[i].value_rank)
        return tuple(dequantize(*self.stored[i][j], ranks[j], self.nbits, self.group, self.dtype) for j in (0, 1))

    def stored_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        return sum(t.nelement() * t.element_size() for pair in self.stored for kv in pair if kv is not None
                   for t in kv)

    allocated_bytes = stored_bytes

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the quantized reduced cache cannot be cropped")

    def reset(self) -> None:
        self.length = 0
        if self.is_initialized:
            self.stored = [[None, None] for _ in self.groups]

    def _map_batch(self, fn) -> None:
        if self.is_initialized:
            self.stored = [[None if kv is None else (fn(kv[0]), fn(kv[1])) for kv in pair] for pair in self.stored]
            self.batch_size = next(kv[0].shape[0] for pair in self.stored for kv in pair if kv is not None)


class QuantizedReducedCache(CompressedCache):
    """A :class:`CompressedCache` of :class:`QuantizedReducedLayer` s (``nbits`` in 8, 4, 2)."""

    def __init__(self, model, projections, ranks, nbits: int, group: int, reserve: int = 0):
        super().__init__(model, projections, ranks, reserve)
        self.layers = bench_layers(self, projections, reserve, QuantizedReducedLayer, nbits, group)


@register
@dataclass(frozen=True)
class MatryoshkaQuant(ProjectionMethod):
    """MatryoshkaKV at ``budgets`` with its reduced keys and values quantized to ``bits`` (each of 8, 4, 2) in
    groups of ``group_size`` rank coordinates; the settings are every (budget, bits) pair."""
    projections: object = "trained"
    allocation: str = "adaptive"
    budgets: tuple = (0.5,)
    bits: tuple = (4,)
    group_size: int = 64

    name, axis = "matryoshka+quant", "composed"

    def __post_init__(self):
        super().__post_init__()
        bits = tuple(sorted(set(self.bits), reverse=True))
        if not bits or any(b not in QUANT_BITS for b in bits):
            raise ValueError(f"bits are among {QUANT_BITS}, not {self.bits!r}")
        object.__setattr__(self, "bits", bits)
        check_count("group_size", self.group_size)

    def settings(self, model) -> list[Setting]:
        return [Setting(self.name, f"{100 * b:g}% {n}-bit",
                        (("allocation", self.allocation), ("budget", b), ("group", self.group_size), ("nbits", n)))
                for b in self.available(model) for n in self.bits]

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        ranks, element = self.ranks(model, setting), element_size(model)
        per_token = quantized_token_bytes(ranks, setting.get("nbits"), setting.get("group"), element)
        return ByteReport.of(model, per_token, projection_bytes(ranks, KVGeometry.of(model).head_dim, element), context)

    def runner(self, model, setting: Setting):
        proj, ranks = self.resolved(model), self.ranks(model, setting)
        nbits, group = setting.get("nbits"), setting.get("group")
        return cache_runner(model, lambda batch, tokens: QuantizedReducedCache(model, proj, ranks, nbits, group,
                                                                               reserve=tokens))


@register
@dataclass(frozen=True)
class StreamingMatryoshka(ProjectionMethod):
    """StreamingLLM eviction on the MatryoshkaKV cache; the settings are every (budget, keep) pair."""
    projections: object = "trained"
    allocation: str = "adaptive"
    budgets: tuple = (0.5,)
    keep: tuple = (1.0, 0.5, 0.25)
    sinks: int = 4

    name, axis = "streaming+matryoshka", "composed"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "keep", check_fractions("keep", self.keep))
        check_count("sinks", self.sinks, 0, "a non-negative number of tokens")

    def unsupported(self, model) -> str | None:
        return sliding_reason(model, self.name) or super().unsupported(model)

    def settings(self, model) -> list[Setting]:
        return [Setting(self.name, f"{100 * b:g}% keep {100 * k:g}%",
                        (("allocation", self.allocation), ("budget", b), ("keep", k), ("sinks", self.sinks)))
                for b in self.available(model) for k in self.keep]

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        check_context(context)
        report = super().bytes(model, setting, context)
        kept = kept_tokens(context, setting.get("keep"))
        return ByteReport.of(model, report.per_token * kept / context, report.fixed, context,
                             **report.detail, kept_tokens=kept)

    def runner(self, model, setting: Setting):
        self.check_supported(model)
        proj, ranks = self.resolved(model), self.ranks(model, setting)
        select = streaming_selector(setting.get("keep"), self.sinks)
        return cache_runner(model, lambda batch, tokens: EvictingCache(model, proj, ranks, select, reserve=tokens))

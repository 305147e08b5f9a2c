"""``think``: ThinK-style query-driven pruning of key channels; values stay full.

After the prefill each layer scores the d channels of each KV head by ||Q_c|| x ||K_c|| (ThinK's criterion),
Q the last ``window`` prompt queries of the KV head's query heads and K the prompt's keys, and keeps the
``round(keep x d)`` best per sequence and KV head for the prompt and every later token. Bytes per token are
(kept + d) / 2d of the full cache's; the kept-channel index (B, G, kept) int64 is reported as ``fixed`` bytes.
Unpadded batches; sliding-window models are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...core.cache import CompressedCache, CompressedLayer, ReducedKV
from ...core.geometry import KVGeometry
from ..base import ByteReport, KVMethod, Setting, register
from ..layers import (FEATURE_BUDGETS, bench_layers, cache_runner, check_count, check_fractions, element_size,
                      sliding_reason)
from .eviction import identity_projections


def kept_channels(head_dim: int, keep: float) -> int:
    """Key channels kept at ratio ``keep``: round(keep x d), at least 1."""
    return max(1, min(head_dim, round(keep * head_dim)))


class ThinKLayer(CompressedLayer):
    """Keys and values at full width until the prefill's attention, then keys pruned to ``kept`` channels."""

    is_croppable = False

    def __init__(self, kept: int, window: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept, self.window = kept, window
        self.channels = None        # (B, G, kept) once pruned
        self.pending = self.started = False

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.started:
            self.started, self.pending = True, key_states.shape[2] > 1 and self.kept < self.head_dim
        if self.channels is None:
            return super().update(key_states, value_states)
        T = key_states.shape[2]
        self._ensure_capacity(self.length + T)
        index = self.channels[:, :, None, :].expand(-1, -1, T, -1)
        self.key_buffers[0][:, :, self.length:self.length + T] = key_states.gather(3, index)
        self.value_buffers[0][:, :, self.length:self.length + T] = value_states
        self.length += T
        handle = ReducedKV(self)
        return handle, handle

    def attend(self, query, attention_mask, scaling):
        """query (B, H, T, d) -> (B, T, H, d); the prefill attends with full keys, then the keys are pruned."""
        out = super().attend(query, attention_mask, scaling)
        if self.pending:
            self.pending = False
            self.prune(query)
        return out

    def prune(self, query: torch.Tensor) -> None:
        """Keep the ``kept`` channels of largest window-query norm x key norm, per sequence and KV head."""
        B, H, T, d = query.shape
        w = min(self.window, T)
        q = query[:, :, -w:].float().reshape(B, self.kv_heads, H // self.kv_heads * w, d)
        keys = self.key_buffers[0][:, :, :self.length].float()                       # (B, G, S, d)
        score = q.norm(dim=2) * keys.norm(dim=2)                                      # (B, G, d)
        self.channels = score.topk(self.kept, dim=-1).indices.sort(-1).values        # (B, G, kept)
        index = self.channels[:, :, None, :].expand(-1, -1, self.length, -1)
        self.key_buffers[0] = keys.to(self.dtype).gather(3, index).contiguous()

    def _attend_group(self, i, q, mask, scaling):
        if self.channels is None:
            return super()._attend_group(i, q, mask, scaling)
        k, v = self.reduced(0)                                                        # (B, G, S, kept), (B, G, S, d)
        B, n, per_kv, T, d = q.shape
        index = self.channels[:, :, None, None, :].expand(-1, -1, per_kv, T, -1)
        qk = q.gather(4, index).reshape(B, n * per_kv, T, -1)                        # (B, H, T, kept)
        causal = mask is None and T > 1
        if causal and T != k.shape[2]:
            mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - T)
            causal = False
        o = F.scaled_dot_product_attention(qk, k, v, attn_mask=mask, is_causal=causal, scale=scaling,
                                           enable_gqa=per_kv > 1)
        return o.view(B, n, per_kv, T, d)

    def reset(self) -> None:
        super().reset()
        self.channels, self.pending, self.started = None, False, False

    def index_bytes(self) -> int:
        return 0 if self.channels is None else self.channels.nelement() * self.channels.element_size()


class ThinKCache(CompressedCache):
    """A cache of :class:`ThinKLayer` s keeping ``kept`` key channels per KV head after the prefill."""

    def __init__(self, model, kept: int, window: int, reserve: int = 0):
        proj = identity_projections(model)
        d = KVGeometry.of(model).head_dim
        super().__init__(model, proj, d, reserve)
        self.layers = bench_layers(self, proj, reserve, ThinKLayer, kept, window)

    def index_bytes(self) -> int:
        """Bytes of the kept-channel indices (per sequence, not per token)."""
        return sum(layer.index_bytes() for layer in self.layers)


@register
@dataclass(frozen=True)
class ThinK(KVMethod):
    """Options: ``keep`` (ratios of key channels kept, the settings), ``window`` (last prompt queries that score
    the channels, >= 1)."""
    keep: tuple = FEATURE_BUDGETS
    window: int = 32

    name, axis = "think", "feature"

    def __post_init__(self):
        object.__setattr__(self, "keep", check_fractions("keep", self.keep))
        check_count("window", self.window, 1, "a positive number of queries")

    def unsupported(self, model) -> str | None:
        return sliding_reason(model, self.name)

    def settings(self, model) -> list[Setting]:
        return [Setting(self.name, f"keys {100 * k:g}%", (("keep", k), ("window", self.window))) for k in self.keep]

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        geom, element = KVGeometry.of(model), element_size(model)
        kept = kept_channels(geom.head_dim, setting.get("keep"))
        per_token = geom.layers * geom.kv_heads * (kept + geom.head_dim) * element
        index = geom.layers * geom.kv_heads * kept * 8 if kept < geom.head_dim else 0
        return ByteReport.of(model, per_token, index, context, key_channels=kept, value_channels=geom.head_dim,
                             index_bytes_per_sequence=index)

    def runner(self, model, setting: Setting):
        self.check_supported(model)
        kept = kept_channels(KVGeometry.of(model).head_dim, setting.get("keep"))
        return cache_runner(model, lambda batch, tokens: ThinKCache(model, kept, self.window, reserve=tokens))

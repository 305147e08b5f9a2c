"""Token eviction: ``streaming`` (StreamingLLM: attention sinks + the recent window) and ``snapkv`` (SnapKV).

Written here rather than taken from kvpress: kvpress 0.5.5 pins ``transformers<5.3`` and, imported without its
pins, its attention hook fails under transformers 5.24. As in kvpress, both compress the prompt once after the
prefill: each layer keeps ``kept = round(keep x S)`` of the S prompt tokens per KV head; later tokens are
appended and never evicted. StreamingLLM keeps the first ``sinks`` tokens and the most recent ones; SnapKV keeps
the last ``window`` tokens and the earlier tokens the window's queries attend to most (softmax weights averaged
over the KV head's query heads, summed over the window, pooled along tokens with ``kernel``).

Kept keys keep their RoPE positions and new tokens continue at the prompt's length. Storage is real: bytes per
prompt token are kept / S of the full cache's. :class:`EvictingLayer` is a :class:`mkvlib.core.cache.CompressedLayer`,
so the same code evicts from the full cache (identity bases, no fixed bytes) and from a MatryoshkaKV cache
(``streaming+matryoshka``). Unpadded batches only; sliding-window models are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...core.cache import CompressedCache, CompressedLayer
from ...core.geometry import KVGeometry
from ...ladder import identity_projections  # noqa: F401  (identity bases: a full-rank cache stores K, V as they are)
from ..base import ByteReport, KVMethod, Setting, full_bytes_per_token, register
from ..layers import (bench_layers, cache_runner, check_choice, check_context, check_count, check_fractions,
                      sliding_reason)

KEEP_RATIOS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)


def kept_tokens(length: int, keep: float) -> int:
    """Tokens a prompt of ``length`` keeps at ratio ``keep``: round(keep x length), at least 1, at most length."""
    return min(length, max(1, round(keep * length)))


class EvictingLayer(CompressedLayer):
    """A compressed layer that, after its prefill (the first update of more than one token), keeps only the
    tokens ``selector(layer, query, scaling)`` picks: an index (B, G, kept) of stored positions, or None."""

    is_croppable = False

    def __init__(self, selector, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.selector, self.evicted, self.pending, self.started = selector, 0, False, False

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.started:
            self.started, self.pending = True, key_states.shape[2] > 1
        return super().update(key_states, value_states)

    def attend(self, query, attention_mask, scaling):
        """query (B, H, T, d) -> (B, T, H, d). After an eviction the model's mask no longer matches the stored
        tokens, so the attention is causal over the new tokens and sees every stored token before them."""
        out = super().attend(query, None if self.evicted else attention_mask, scaling)
        if self.pending:
            self.pending = False
            index = self.selector(self, query, scaling)
            if index is not None:
                self.evict(index)
        return out

    def evict(self, index: torch.Tensor) -> None:
        """Keep the stored tokens ``index`` (B, G, kept) of each KV head, in that order."""
        kept = index.shape[-1]
        for i, group in enumerate(self.groups):
            sub = index[:, list(group.heads)].to(self.device)                         # (B, n, kept)
            for bufs in (self.key_buffers, self.value_buffers):
                filled = bufs[i][:, :, :self.length]
                bufs[i] = filled.gather(2, sub[..., None].expand(-1, -1, -1, filled.shape[-1])).contiguous()
        self.evicted += self.length - kept
        self.length = kept

    def reduced_query(self, i: int, query: torch.Tensor) -> torch.Tensor:
        """Group i's query heads in its key basis: (B, H, w, d) -> (B, n x H/G, w, r_K)."""
        B, H, w, d = query.shape
        uk = self.bases[i][0]
        q = query.view(B, self.kv_heads, H // self.kv_heads, w, d)[:, self.groups[i].index]
        return torch.einsum("bnhtd,ndr->bnhtr", q, uk).flatten(1, 2)

    def get_seq_length(self) -> int:
        return self.length + self.evicted

    def reset(self) -> None:
        super().reset()
        self.evicted, self.pending, self.started = 0, False, False


class EvictingCache(CompressedCache):
    """A :class:`CompressedCache` of :class:`EvictingLayer` s (same arguments, plus the ``selector``)."""

    def __init__(self, model, projections, ranks, selector, reserve: int = 0):
        super().__init__(model, projections, ranks, reserve)
        self.layers = bench_layers(self, projections, reserve, EvictingLayer, selector)


def evicting_selector(keep: float, choose):
    """A selector for :class:`EvictingLayer`: None (keep everything) when ratio ``keep`` keeps all S stored
    tokens, else ``choose(layer, query, scaling, S, kept)``, the index of the ``kept = kept_tokens(S, keep)``
    positions to keep."""
    def select(layer: EvictingLayer, query, scaling):
        S = layer.length
        kept = kept_tokens(S, keep)
        return None if kept >= S else choose(layer, query, scaling, S, kept)
    return select


def streaming_selector(keep: float, sinks: int):
    """StreamingLLM: the first ``sinks`` tokens and the most recent ones, ``kept_tokens(S, keep)`` in all."""
    def choose(layer: EvictingLayer, query, scaling, S: int, kept: int):
        first = min(sinks, kept)
        index = torch.cat([torch.arange(first), torch.arange(S - (kept - first), S)])
        return index.expand(layer.batch_size, layer.kv_heads, kept)
    return evicting_selector(keep, choose)


def snapkv_selector(keep: float, window: int, kernel: int, pooling: str):
    """SnapKV: the last ``window`` tokens plus the earlier tokens with the largest pooled window attention."""
    def choose(layer: EvictingLayer, query, scaling, S: int, kept: int):
        w = min(window, kept)
        scores = query.new_zeros(layer.batch_size, layer.kv_heads, S, dtype=torch.float32)
        for i, group in enumerate(layer.groups):
            q = layer.reduced_query(i, query[:, :, -w:])                            # (B, n H/G, w, r)
            k = layer.reduced(i)[0]                                                 # (B, n, S, r)
            logits = torch.einsum("bqtr,bqsr->bqts", q.float(),
                                  k.float().repeat_interleave(q.shape[1] // k.shape[1], 1)) * scaling
            causal = torch.ones(w, S, dtype=torch.bool, device=q.device).tril(S - w)
            weights = logits.masked_fill(~causal, float("-inf")).softmax(-1)       # (B, n H/G, w, S)
            per_kv = weights.view(q.shape[0], k.shape[1], -1, w, S).mean(2).sum(2)  # (B, n, S)
            scores[:, group.index] = per_kv
        past = scores[..., :S - w]                                                  # (B, G, S - w)
        pool = F.max_pool1d if pooling == "max" else F.avg_pool1d
        flat = past.reshape(-1, 1, S - w)
        pooled = pool(flat, kernel, stride=1, padding=kernel // 2)
        if pooling == "avg":  # avg_pool1d counts the zero padding: a mean over the window that fits
            pooled = pooled / pool(torch.ones_like(flat), kernel, stride=1, padding=kernel // 2)
        top = pooled.view_as(past).topk(kept - w, dim=-1).indices.sort(-1).values     # (B, G, kept - w)
        recent = torch.arange(S - w, S, device=top.device).expand(*top.shape[:2], w)
        return torch.cat([top, recent], -1)
    return evicting_selector(keep, choose)


@dataclass(frozen=True)
class EvictionMethod(KVMethod):
    """Options shared by the token-eviction methods: ``keep`` (ratios of prompt tokens kept, the settings)."""
    keep: tuple = KEEP_RATIOS

    axis = "token"

    def __post_init__(self):
        object.__setattr__(self, "keep", check_fractions("keep", self.keep))

    def unsupported(self, model) -> str | None:
        return sliding_reason(model, self.name)

    def settings(self, model) -> list[Setting]:
        return [Setting(self.name, f"keep {100 * k:g}%", (("keep", k),) + self.params()) for k in self.keep]

    def params(self) -> tuple:
        return ()

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        check_context(context)
        kept = kept_tokens(context, setting.get("keep"))
        return ByteReport.of(model, full_bytes_per_token(model) * kept / context, 0, context, kept_tokens=kept)

    def selector(self, setting: Setting):
        raise NotImplementedError

    def runner(self, model, setting: Setting):
        self.check_supported(model)
        proj, select = identity_projections(model), self.selector(setting)
        d = KVGeometry.of(model).head_dim
        return cache_runner(model, lambda batch, tokens: EvictingCache(model, proj, d, select, reserve=tokens))


@register
@dataclass(frozen=True)
class Streaming(EvictionMethod):
    """StreamingLLM. Options: ``keep`` ratios, ``sinks`` (first tokens always kept, >= 0)."""
    sinks: int = 4

    name = "streaming"

    def __post_init__(self):
        super().__post_init__()
        check_count("sinks", self.sinks, 0, "a non-negative number of tokens")

    def params(self) -> tuple:
        return (("sinks", self.sinks),)

    def selector(self, setting: Setting):
        return streaming_selector(setting.get("keep"), self.sinks)


@register
@dataclass(frozen=True)
class SnapKV(EvictionMethod):
    """SnapKV. Options: ``keep`` ratios, ``window`` (observation window of last prompt queries, >= 1),
    ``kernel`` (odd pooling width along tokens), ``pooling`` ('avg' or 'max')."""
    window: int = 32
    kernel: int = 7
    pooling: str = "avg"

    name = "snapkv"

    def __post_init__(self):
        super().__post_init__()
        check_choice("pooling", self.pooling, ("avg", "max"))
        check_count("window", self.window)
        check_count("kernel", self.kernel)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (the pooling is centred on each token), not {self.kernel}")

    def params(self) -> tuple:
        return (("kernel", self.kernel), ("pooling", self.pooling), ("window", self.window))

    def selector(self, setting: Setting):
        return snapkv_selector(setting.get("keep"), self.window, self.kernel, self.pooling)

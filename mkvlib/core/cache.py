"""A real compressed KV cache for ``model.generate``: keys and values stored at their reduced widths.

For layer l and KV head g with ranks (r_K, r_V) the cache stores, per token (docs/design.md, section 8):

    k~ = k U_K[:, :r_K]            (r_K numbers, post-RoPE key)
    v~ = (v - mu) U_V[:, :r_V]     (r_V numbers)

and attention runs on the reduced tensors with the model's own scale (1/sqrt(d) for Llama, not 1/sqrt(r)):

    o = softmax((q U_K[:, :r_K]) k~^T * scaling) v~ U_V[:, :r_V]^T + mu

KV heads of one layer with equal (r_K, r_V) form a :class:`HeadGroup` that shares one buffer of shape
(batch, n_heads, capacity, r); nothing is padded to d. Buffers are preallocated (``reserve`` tokens, growing by
chunks when exceeded), so a decode step writes one row in place instead of re-copying the cache with torch.cat.

The cache hands a :class:`ReducedKV` handle to the attention function registered by :mod:`mkvlib.core.attention`;
:func:`compressed_attention` computes the attention from it, and falls back to exact SDPA for any other cache.
Introduced in notebook 05.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from . import attention
from .checks import check_rank
from .geometry import KVGeometry
from .projections import Projections, resolve_projections
from .ranks import check_whole_tokens, resolve_ranks

GROWTH_TOKENS = 256  # smallest growth step (tokens) once the reserved capacity is full


@dataclass(frozen=True)
class HeadGroup:
    """The KV heads of one layer that share ranks (r_K, r_V); ``heads`` is a sorted tuple of head indices."""
    heads: tuple[int, ...]
    key_rank: int
    value_rank: int

    def __post_init__(self):
        if not self.heads or list(self.heads) != sorted(set(self.heads)):
            raise ValueError(f"a head group needs distinct sorted heads, got {self.heads}")
        check_rank(self.key_rank, what="a head group's key_rank")
        check_rank(self.value_rank, what="a head group's value_rank")

    @property
    def index(self) -> slice | torch.Tensor:
        """A slice when the heads are contiguous (a view, no copy), else an index tensor."""
        a, b = self.heads[0], self.heads[-1] + 1
        return slice(a, b) if b - a == len(self.heads) else torch.tensor(self.heads)


def head_groups(layer_ranks: torch.Tensor) -> list[HeadGroup]:
    """Group the KV heads of one layer by equal (r_K, r_V); ``layer_ranks`` is (G, 2)."""
    by_rank: dict[tuple[int, int], list[int]] = {}
    for g, (rk, rv) in enumerate(layer_ranks.tolist()):
        by_rank.setdefault((rk, rv), []).append(g)
    return [HeadGroup(tuple(h), rk, rv) for (rk, rv), h in sorted(by_rank.items(), key=lambda kv: kv[1][0])]


class ReducedKV:
    """What :meth:`CompressedLayer.update` returns in place of full key/value tensors: a handle on the layer."""
    __slots__ = ("layer",)

    def __init__(self, layer: "CompressedLayer"):
        self.layer = layer

    @property
    def shape(self):
        raise RuntimeError("reduced keys/values of a CompressedCache reached an attention function that is not "
                           "mkvlib's: use a CompressedCache only with the model it was built for")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"reduced keys/values of a CompressedCache were passed to {getattr(func, '__name__', func)}:"
                           " use a CompressedCache only with the model it was built for")


class CompressedLayer(CacheLayerMixin):
    """One layer's reduced keys and values: per :class:`HeadGroup`, buffers (B, n, capacity, r_K) and
    (B, n, capacity, r_V) of which the first ``length`` tokens are filled."""

    is_sliding = False
    is_croppable = True

    def __init__(self, layer_idx: int, groups: list[HeadGroup], keys: torch.Tensor, values: torch.Tensor,
                 value_mean: torch.Tensor, reserve: int = 0, module_id: int | None = None, keep_first: int = 0,
                 keep_recent: int = 0):
        """``keys``/``values``: this layer's bases (G, d, d); ``value_mean`` (G, d). ``keep_first`` and
        ``keep_recent``: tokens also held whole (see :class:`WholeTokens`)."""
        super().__init__()
        self.layer_idx, self.groups, self.reserve, self.module_id = layer_idx, groups, reserve, module_id
        self.whole = WholeTokens(keep_first, keep_recent) if keep_first or keep_recent else None
        self.kv_heads, self.head_dim = keys.shape[0], keys.shape[-1]
        self._bases = [(keys[list(g.heads), :, :g.key_rank], values[list(g.heads), :, :g.value_rank],
                        value_mean[list(g.heads)]) for g in groups]
        self.length = 0
        self.key_buffers: list[torch.Tensor] = []
        self.value_buffers: list[torch.Tensor] = []

    # --- storage -----------------------------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.batch_size = key_states.shape[0]
        self.bases = [tuple(t.to(self.device, self.dtype).contiguous() for t in b) for b in self._bases]
        self.key_buffers = [self._empty(len(g.heads), 0, g.key_rank) for g in self.groups]
        self.value_buffers = [self._empty(len(g.heads), 0, g.value_rank) for g in self.groups]
        if self.whole is not None:
            self.whole.start(key_states)
        self.is_initialized = True

    def _empty(self, n: int, capacity: int, rank: int) -> torch.Tensor:
        return torch.empty(self.batch_size, n, capacity, rank, dtype=self.dtype, device=self.device)

    @property
    def capacity(self) -> int:
        return self.key_buffers[0].shape[2] if self.key_buffers else 0

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        if self.capacity == 0:
            new = max(needed, self.reserve)
        else:
            new = max(needed, self.capacity + max(GROWTH_TOKENS, self.capacity // 4))
        for bufs in (self.key_buffers, self.value_buffers):
            for i, old in enumerate(bufs):
                grown = self._empty(old.shape[1], new, old.shape[3])
                grown[:, :, :self.length] = old[:, :, :self.length]
                bufs[i] = grown

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Project and append new post-RoPE keys/values (B, G, T, d); returns a :class:`ReducedKV` twice."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        B, G, T, d = key_states.shape
        if (G, d) != (self.kv_heads, self.head_dim) or B != self.batch_size:
            raise ValueError(f"layer {self.layer_idx} of this CompressedCache holds (batch, kv_heads, head_dim) = "
                             f"{(self.batch_size, self.kv_heads, self.head_dim)} but got {(B, G, d)}: a cache "
                             "serves one model and one batch; make a new CompressedCache")
        self._ensure_capacity(self.length + T)
        end = self.length + T
        for group, (uk, uv, mu), kbuf, vbuf in zip(self.groups, self.bases, self.key_buffers, self.value_buffers):
            idx = group.index
            k, v = key_states[:, idx], value_states[:, idx]                               # (B, n, T, d)
            kbuf[:, :, self.length:end].copy_(torch.einsum("bntd,ndr->bntr", k, uk))
            vbuf[:, :, self.length:end].copy_(torch.einsum("bntd,ndr->bntr", v - mu[:, None], uv))
        if self.whole is not None:
            self.whole.add(key_states, value_states, self.length)
        self.length = end
        handle = ReducedKV(self)
        return handle, handle

    def reduced(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Group ``i``'s filled keys (B, n, S, r_K) and values (B, n, S, r_V): views, no copy."""
        return self.key_buffers[i][:, :, :self.length], self.value_buffers[i][:, :, :self.length]

    def stored_bytes(self) -> int:
        """Bytes of the filled reduced keys and values: B x length x sum(r_K + r_V) x element size."""
        if not self.is_initialized:
            return 0
        whole = self.whole.stored_bytes() if self.whole is not None else 0
        return whole + sum(k.nelement() * k.element_size() + v.nelement() * v.element_size()
                           for k, v in (self.reduced(i) for i in range(len(self.groups))))

    def allocated_bytes(self) -> int:
        """Bytes of the buffers including reserved, not yet filled capacity."""
        whole = self.whole.stored_bytes() if self.whole is not None else 0
        return whole + sum(t.nelement() * t.element_size() for t in self.key_buffers + self.value_buffers)

    def projection_bytes(self) -> int:
        """Bytes of this layer's fixed projection matrices and value means."""
        bases = self.bases if self.is_initialized else self._bases
        return sum(t.nelement() * t.element_size() for b in bases for t in b)

    # --- the Cache layer protocol ---------------------------------------------------------------------------
    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0
        if self.whole is not None and self.is_initialized:
            self.whole.start(self.whole.first_keys)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove (as DynamicCache does)")
        if self.whole is not None and tokens_to_remove < 0:
            raise NotImplementedError("a cache keeping recent tokens whole cannot be cropped: the tokens before the "
                                      "cut have left its window; make the cache with keep_recent=0")
        self.length = max(0, self.length + tokens_to_remove)

    def _map_batch(self, fn) -> None:
        if self.is_initialized:
            self.key_buffers = [fn(t) for t in self.key_buffers]
            self.value_buffers = [fn(t) for t in self.value_buffers]
            self.batch_size = self.key_buffers[0].shape[0]
            if self.whole is not None:
                self.whole.map(fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def offload(self):  # the buffers stay where they are
        pass

    def prefetch(self):
        pass

    # --- attention on the reduced tensors ---------------------------------------------------------------------
    def attend(self, query: torch.Tensor, attention_mask, scaling: float) -> torch.Tensor:
        """query (B, H, T, d) -> attention output (B, T, H, d), computed group by group on reduced tensors."""
        B, H, T, d = query.shape
        per_kv = H // self.kv_heads
        q_by_kv = query.view(B, self.kv_heads, per_kv, T, d)                 # (B, G, H/G, T, d)
        if len(self.groups) == 1 and self.groups[0].index == slice(0, self.kv_heads):
            return self._attend_group(0, q_by_kv, attention_mask, scaling).reshape(B, H, T, d).transpose(1, 2)
        out = query.new_empty(B, self.kv_heads, per_kv, T, d)
        for i, group in enumerate(self.groups):
            out[:, group.index] = self._attend_group(i, q_by_kv[:, group.index], attention_mask, scaling)
        return out.view(B, H, T, d).transpose(1, 2)

    def _attend_group(self, i: int, q: torch.Tensor, mask, scaling: float) -> torch.Tensor:
        """q (B, n, H/G, T, d) of group i -> head outputs (B, n, H/G, T, d)."""
        uk, uv, mu = self.bases[i]
        k, v = self.reduced(i)                                                  # (B, n, S, r_K), (B, n, S, r_V)
        if self.whole is not None:
            return self.whole.attend(q, (k, v), self.groups[i].index, self.bases[i], mask, scaling)
        B, n, per_kv, T, d = q.shape
        qr = torch.einsum("bnhtd,ndr->bnhtr", q, uk)                          # (B, n, H/G, T, r_K)
        if T == 1:  # decode: the H/G queries of a KV head share its keys; no key expansion needed
            o = F.scaled_dot_product_attention(qr.view(B, n, per_kv, -1), k, v, attn_mask=mask, scale=scaling)
        else:
            causal = mask is None and T > 1
            if causal and T != k.shape[2]:
                mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - T)
                causal = False
            qr, k, v = same_width(qr, k, v)
            o = F.scaled_dot_product_attention(qr.reshape(B, n * per_kv, T, -1), k, v, attn_mask=mask,
                                               is_causal=causal, scale=scaling, enable_gqa=per_kv > 1)
            o = o[..., :uv.shape[-1]]
        o = o.view(B, n, per_kv, T, -1)                                          # (B, n, H/G, T, r_V)
        return torch.einsum("bnhtr,ndr->bnhtd", o, uv) + mu[:, None, None]


class WholeTokens:
    """Full-width copies of a layer's first ``first`` tokens (attention sinks) and latest ``recent`` tokens, held
    beside the reduced rows of every token, as a quantized cache keeps a full-precision residual window.

    A query at position i reads token j whole when j < first or i - j < recent, else reduced: what
    :meth:`mkvlib.core.compress.Compression.keep_whole` simulates. Bytes: the reduced rows of all S tokens plus
    min(first, S) + min(recent, S) whole rows (:func:`mkvlib.core.ranks.stored_fraction`)."""

    QUERY_CHUNK = 1024   # queries attended at once in a long prefill: bounds the (T, S) score matrix

    def __init__(self, first: int, recent: int):
        self.first, self.recent = check_whole_tokens(first, recent)

    def start(self, like: torch.Tensor) -> None:
        empty = like.new_empty(like.shape[0], like.shape[1], 0, like.shape[3])
        self.first_keys = self.first_values = self.recent_keys = self.recent_values = empty
        self.readable = None

    def add(self, keys: torch.Tensor, values: torch.Tensor, position: int) -> None:
        """The T new tokens (B, G, T, d) at ``position``. Sets ``readable``: what this step's queries may read whole
        (keys, values and their positions: the first tokens before the window, then the window and the new
        tokens), once for every head group; keeps what the next steps may read whole."""
        start = position - self.recent_keys.shape[2]                     # position of the window's oldest token
        window_k, window_v = torch.cat([self.recent_keys, keys], 2), torch.cat([self.recent_values, values], 2)
        sinks = max(0, min(self.first, start))                           # first tokens no longer in the window
        positions = torch.cat([torch.arange(sinks), torch.arange(start, start + window_k.shape[2])]).to(keys.device)
        self.readable = (torch.cat([self.first_keys[:, :, :sinks], window_k], 2),
                         torch.cat([self.first_values[:, :, :sinks], window_v], 2), positions)
        room = max(0, self.first - position)
        if room:
            self.first_keys = torch.cat([self.first_keys, keys[:, :, :room]], 2)
            self.first_values = torch.cat([self.first_values, values[:, :, :room]], 2)
        keep = min(self.recent, window_k.shape[2])
        self.recent_keys = window_k[:, :, window_k.shape[2] - keep:].contiguous()
        self.recent_values = window_v[:, :, window_v.shape[2] - keep:].contiguous()

    def stored_bytes(self) -> int:
        return sum(t.nelement() * t.element_size()
                   for t in (self.first_keys, self.first_values, self.recent_keys, self.recent_values))

    def map(self, fn) -> None:
        self.first_keys, self.first_values = fn(self.first_keys), fn(self.first_values)
        self.recent_keys, self.recent_values = fn(self.recent_keys), fn(self.recent_values)
        if self.readable is not None:
            self.readable = (fn(self.readable[0]), fn(self.readable[1]), self.readable[2])

    def attend(self, q, reduced, heads, bases, mask, scaling: float) -> torch.Tensor:
        """q (B, n, H/G, T, d) of the KV heads ``heads`` -> outputs (B, n, H/G, T, d), from their reduced rows
        (B, n, S, r) and the whole ones, with one softmax over both."""
        whole_k, whole_v, held = self.readable
        whole = (whole_k[:, heads], whole_v[:, heads])
        S, T = reduced[0].shape[2], q.shape[3]
        outs = [self._attend_chunk(q[:, :, :, a:a + self.QUERY_CHUNK], reduced, whole, held, bases,
                                   None if mask is None else mask[..., a:a + self.QUERY_CHUNK, :S], S - T + a, scaling)
                for a in range(0, T, self.QUERY_CHUNK)]
        return torch.cat(outs, 3)

    def _attend_chunk(self, q, reduced, whole, held, bases, mask, offset: int, scaling: float) -> torch.Tensor:
        (uk, uv, mu), (k, v), (wk, wv) = bases, reduced, whole
        T, S = q.shape[3], k.shape[2]
        i = torch.arange(offset, offset + T, device=q.device)[:, None]
        j = torch.arange(S, device=q.device)[None, :]
        allowed = j <= i if mask is None else (mask if mask.dtype == torch.bool else mask == 0)[:, :, None]
        reads_whole = lambda pos: (pos < self.first) | (i - pos < self.recent)
        allowed_w = (held[None, :] <= i) & reads_whole(held[None, :])
        if mask is not None:
            allowed_w = allowed_w & allowed[..., held]
        scores = torch.cat([torch.einsum("bnhtr,bnsr->bnhts", torch.einsum("bnhtd,ndr->bnhtr", q, uk), k),
                            torch.einsum("bnhtd,bnsd->bnhts", q, wk)], -1).float() * scaling
        keep = torch.cat([(allowed & ~reads_whole(j)).expand(*scores.shape[:-1], S),
                          allowed_w.expand(*scores.shape[:-1], wk.shape[2])], -1)
        weights = scores.masked_fill(~keep, torch.finfo(scores.dtype).min).softmax(-1).to(q.dtype)  # pads: finite
        wc, ww = weights[..., :S], weights[..., S:]
        reduced_out = torch.einsum("bnhts,bnsr->bnhtr", wc, v)
        return (torch.einsum("bnhtr,ndr->bnhtd", reduced_out, uv) + wc.sum(-1, keepdim=True) * mu[:, None, None]
                + torch.einsum("bnhts,bnsd->bnhtd", ww, wv))


def same_width(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q, k (..., r_K) and v (..., r_V) zero-padded to one width max(r_K, r_V), which changes no score and adds
    only zero output columns (drop them after). SDPA's fused CPU and GPU kernels need one head size for all three;
    with two (r_K != r_V) it falls back to the unfused kernel, which at 4k tokens of prefill is several times
    slower and materialises every score."""
    rk, rv = k.shape[-1], v.shape[-1]
    if rk == rv:
        return q, k, v
    width = max(rk, rv)
    return F.pad(q, (0, width - rk)), F.pad(k, (0, width - rk)), F.pad(v, (0, width - rv))


class CompressedCache(Cache):
    """A transformers Cache holding each (layer, KV head)'s keys and values at its own ranks.

    ``CompressedCache(model, projections, ranks)`` then ``model.generate(..., **cache_kwargs(cache))`` with
    :func:`mkvlib.compat.cache_kwargs` (``cache=cache`` on transformers 5.24+, ``past_key_values=cache`` before).
    ``projections``: a :class:`Projections`, a path, or 'pca' / 'trained'; ``ranks``: an int, a budget in (0, 1]
    or a (L, G, 2) tensor. ``reserve``: tokens to preallocate per sequence (prompt + new tokens avoids regrowth).
    ``keep_first``, ``keep_recent``: the first tokens and each query's latest tokens read whole (full width) as
    well (:class:`WholeTokens`; their bytes are counted in :meth:`stored_bytes`).
    """

    def __init__(self, model, projections="pca", ranks=1.0, reserve: int = 0, keep_first: int = 0,
                 keep_recent: int = 0):
        geom = KVGeometry.of(model)
        proj = projections if isinstance(projections, Projections) else resolve_projections(projections, model)
        proj.check_model(model)
        self.ranks = resolve_ranks(ranks, geom)
        if not isinstance(reserve, int) or reserve < 0:
            raise ValueError(f"reserve must be a non-negative number of tokens, not {reserve!r}")
        self.geometry, self.model_name = geom, getattr(model, "mkv_name", type(model).__name__)
        self._modules = attention.attention_modules(model)
        layers = [CompressedLayer(l, head_groups(self.ranks[l]), proj.keys[l].float(), proj.values[l].float(),
                                  proj.value_mean[l].float(), reserve, id(self._modules[l]), keep_first,
                                  keep_recent)
                  for l in range(geom.layers)]
        super().__init__(layers=layers)
        enable(model)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if self._modules[layer_idx].__dict__.get("_mkv_hooks"):
            raise RuntimeError("a simulated compression (mkvlib.core.compress.attach) is active on this model: detach "
                               "it before running with a CompressedCache")
        return self.layers[layer_idx].update(key_states, value_states)

    def stored_bytes(self) -> int:
        """Bytes of the stored reduced keys and values (sum of the filled tensors' bytes)."""
        return sum(layer.stored_bytes() for layer in self.layers)

    def allocated_bytes(self) -> int:
        """Bytes of the buffers, including preallocated capacity not yet filled."""
        return sum(layer.allocated_bytes() for layer in self.layers)

    def projection_bytes(self) -> int:
        """Bytes of the fixed projection matrices (U_K, U_V truncated to the ranks) and value means."""
        return sum(layer.projection_bytes() for layer in self.layers)


def compressed_attention(module, query, key, value, attention_mask, **kwargs):
    """The attention override: reduced attention for a :class:`ReducedKV`, exact SDPA for anything else."""
    if not isinstance(key, ReducedKV):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    layer = key.layer
    if id(module) != layer.module_id:
        raise RuntimeError(f"this CompressedCache was built for another model (its layer {layer.layer_idx} belongs "
                           "to a different attention module): make a new CompressedCache for this model")
    if kwargs.get("softcap") is not None:
        raise ValueError("attention logit soft-capping is not supported by the compressed cache")
    scaling = kwargs.get("scaling")
    scaling = module.scaling if scaling is None else scaling
    return layer.attend(query, attention_mask, scaling), None


def enable(model) -> None:
    """Route the model's attention through :func:`compressed_attention` (once per model; exact SDPA for other
    caches). :func:`disable` undoes it."""
    if model.__dict__.get("_mkv_cache_handle") is None:
        model.__dict__["_mkv_cache_handle"] = attention.install(model, attend=compressed_attention)


def disable(model) -> None:
    """Remove the attention override installed by :func:`enable`."""
    handle = model.__dict__.pop("_mkv_cache_handle", None)
    if handle is not None:
        handle.remove()

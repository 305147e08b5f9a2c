"""Streaming KV statistics: float64 means and second moments per (layer, KV head), never holding the tokens.

Post-RoPE keys and values come from the attention hook; pre-RoPE keys from a forward hook on ``k_proj``
(or ``k_norm`` where the model normalises keys before RoPE, as Gemma3 does). Optionally (``queries=True``) the
post-RoPE queries too, grouped per KV head: each KV head's moments sum over the query heads that share it (for
the query-aware key basis, :func:`mkvlib.core.pca.query_aware_projections`). Introduced in notebook 01.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from .env import progress_bar as tqdm

from . import attention
from .geometry import KVGeometry
from .positions import block_offsets, shifted

KINDS = ("keys", "keys_pre_rope", "values", "queries")


@dataclass
class Moments:
    """Running sums over tokens for each (layer, KV head): count, sum (L, G, d) and outer products (L, G, d, d)."""
    count: torch.Tensor   # (L,) float64: tokens seen per layer
    total: torch.Tensor   # (L, G, d) float64
    outer: torch.Tensor   # (L, G, d, d) float64

    @classmethod
    def zeros(cls, geom: KVGeometry) -> "Moments":
        L, G, d = geom.layers, geom.kv_heads, geom.head_dim
        return cls(torch.zeros(L, dtype=torch.float64), torch.zeros(L, G, d, dtype=torch.float64),
                   torch.zeros(L, G, d, d, dtype=torch.float64))

    def update(self, layer: int, x: torch.Tensor) -> None:
        """Add tokens ``x`` of shape (B, G, S, d) to layer ``layer``."""
        x = x.detach().to("cpu", torch.float64)
        self.count[layer] += x.shape[0] * x.shape[2]
        self.total[layer] += x.sum(dim=(0, 2))
        self.outer[layer] += torch.einsum("bgsd,bgse->gde", x, x)

    def update_grouped(self, layer: int, x: torch.Tensor) -> None:
        """Add queries ``x`` (B, H, T, d) to layer ``layer``, summed over the H / G query heads of each KV head
        (head h belongs to KV head h // (H / G), as transformers' repeat_kv pairs them); counts tokens, not heads."""
        G = self.total.shape[1]
        B, H, T, d = x.shape
        x = x.detach().to("cpu", torch.float64).reshape(B, G, H // G, T, d)
        self.count[layer] += B * T
        self.total[layer] += x.sum(dim=(0, 2, 3))
        self.outer[layer] += torch.einsum("bgrsd,bgrse->gde", x, x)

    def mean(self) -> torch.Tensor:
        """(L, G, d)."""
        return self.total / self._n()[:, None, None]

    def second_moment(self) -> torch.Tensor:
        """E[x x^T], (L, G, d, d)."""
        return self.outer / self._n()[:, None, None, None]

    def covariance(self) -> torch.Tensor:
        """E[x x^T] - mu mu^T, (L, G, d, d)."""
        mu = self.mean()
        return self.second_moment() - mu[..., :, None] * mu[..., None, :]

    def _n(self) -> torch.Tensor:
        if (self.count == 0).any():
            raise RuntimeError("no tokens were seen for some layers: run collect_kv_stats on some text first")
        return self.count


@dataclass
class KVStats:
    """Moments of post-RoPE keys, pre-RoPE keys and values, plus where they came from."""
    geometry: KVGeometry
    keys: Moments
    keys_pre_rope: Moments
    values: Moments
    info: dict = field(default_factory=dict)
    queries: Moments | None = None   # post-RoPE queries grouped per KV head, when collected

    @classmethod
    def zeros(cls, geom: KVGeometry, with_queries: bool = False, **info) -> "KVStats":
        return cls(geom, Moments.zeros(geom), Moments.zeros(geom), Moments.zeros(geom), dict(info),
                   Moments.zeros(geom) if with_queries else None)

    def __getitem__(self, kind: str) -> Moments:
        if kind not in KINDS:
            raise KeyError(f"unknown statistics {kind!r}; choose from {KINDS}")
        if getattr(self, kind) is None:
            raise KeyError(f"no {kind} statistics here: collect them with collect_kv_stats(..., {kind}=True)")
        return getattr(self, kind)


def _as_bgsd(x: torch.Tensor, layout_hint: torch.Tensor, geom: KVGeometry) -> torch.Tensor:
    """Pre-RoPE keys as (B, G, S, d) from k_proj's output (B, S, G*d) or a key norm's (B, S, G, d) / (B, G, S, d).

    Models differ (Qwen3 normalises (B, S, G, d), Gemma3 (B, G, S, d)); when G == S the input's strides tell.
    """
    G, d = geom.kv_heads, geom.head_dim
    if x.dim() == 3:
        return x.reshape(x.shape[0], x.shape[1], G, d).transpose(1, 2)
    heads_first = x.shape[2] != G if x.shape[1] == G else False
    if x.shape[1] == G and x.shape[2] == G:
        heads_first = layout_hint.stride(1) < layout_hint.stride(2)
    return x if heads_first else x.transpose(1, 2)


def _pre_rope_hook(stats: KVStats, layer: int, geom: KVGeometry):
    def hook(_module, inputs, output):
        stats.keys_pre_rope.update(layer, _as_bgsd(output, inputs[0], geom))
    return hook


@torch.no_grad()
def collect_kv_stats(model, blocks: torch.Tensor, batch_size: int = 4, progress: bool = True,
                     queries: bool = False, positions: str = "spread", **info) -> KVStats:
    """Run ``model`` over ``blocks`` (N, S) of token ids and accumulate :class:`KVStats` (with ``queries``: the
    post-RoPE query moments per KV head too). ``positions``: 'spread' (each block at a seeded random offset over
    the context window, so post-RoPE key statistics cover every angle; :mod:`mkvlib.core.positions`) or 'start'."""
    geom = KVGeometry.of(model)
    stats = KVStats.zeros(geom, with_queries=queries, tokens=int(blocks.numel()), seq_len=int(blocks.shape[1]),
                          positions=positions, **info)
    offsets = block_offsets(positions, len(blocks), blocks.shape[1], model)

    def observe(module, query, key, value):
        stats.keys.update(module.layer_idx, key)
        stats.values.update(module.layer_idx, value)
        if stats.queries is not None:
            stats.queries.update_grouped(module.layer_idx, query)
        return query, key, value

    handles = []
    for module in attention.attention_modules(model):
        source = getattr(module, "k_norm", None) or module.k_proj
        handles.append(source.register_forward_hook(_pre_rope_hook(stats, module.layer_idx, geom)))
    device = next(model.parameters()).device
    try:
        with attention.install(model, hook=observe):
            for start in tqdm(range(0, len(blocks), batch_size), desc="KV statistics", disable=not progress):
                with shifted(model, None if offsets is None else offsets[start:start + batch_size]):
                    model(blocks[start:start + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats

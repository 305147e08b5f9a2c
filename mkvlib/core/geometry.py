"""The attention geometry of a model: L layers, H query heads, G key/value heads, head dim d.

Ranks are a LongTensor of shape (L, G, 2) (see :mod:`mkvlib.core.ranks`): ``ranks[l, g, K]`` for keys,
``ranks[l, g, V]`` for values. Introduced in notebook 01.
"""
from __future__ import annotations

from dataclasses import dataclass

K, V = 0, 1


@dataclass(frozen=True)
class KVGeometry:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model_or_config) -> "KVGeometry":
        config = getattr(model_or_config, "config", model_or_config)
        config = getattr(config, "text_config", None) or config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.num_hidden_layers, heads, kv_heads, head_dim)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of a ranks tensor: (L, G, 2)."""
        return (self.layers, self.kv_heads, 2)

    def entries(self) -> list[tuple[int, int, int]]:
        """Every (layer, KV head, kind) with kind K = 0 or V = 1, in that order: what one rank is set for."""
        return [(l, g, c) for l in range(self.layers) for g in range(self.kv_heads) for c in (K, V)]

    def as_dict(self) -> dict:
        return {"layers": self.layers, "heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim}

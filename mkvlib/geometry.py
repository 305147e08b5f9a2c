"""The attention geometry of a model, and ranks per (layer, KV head, K or V) with their budget.

Shapes: L layers, H query heads, G key/value heads, head dim d. Ranks are a LongTensor of shape
(L, G, 2): ``ranks[l, g, 0]`` for keys, ``ranks[l, g, 1]`` for values. Introduced in notebook 01.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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


def uniform_ranks(geom: KVGeometry, budget: float) -> torch.Tensor:
    """Every entry at round(budget * d): the uniform allocation for a budget in (0, 1]."""
    check_budget(budget)
    rank = int(round(budget * geom.head_dim))
    return torch.full(geom.shape, rank, dtype=torch.long)


def check_budget(budget: float) -> None:
    if not isinstance(budget, (int, float)) or not 0 < float(budget) <= 1:
        raise ValueError(f"budget must be a fraction in (0, 1] (e.g. 0.5 for 50%), not {budget!r}")


def resolve_ranks(spec, geom: KVGeometry) -> torch.Tensor:
    """Ranks from one integer (every entry), a float budget (uniform), or a tensor of shape (L, G, 2).

    Raises ValueError naming what was wrong; the input is never modified.
    """
    d = geom.head_dim
    if isinstance(spec, bool):
        raise ValueError("ranks must be an int, a budget fraction or a (L, G, 2) tensor, not a bool")
    if isinstance(spec, int):
        if not 0 <= spec <= d:
            raise ValueError(f"rank {spec} is out of range: ranks must lie in [0, head_dim={d}]")
        return torch.full(geom.shape, spec, dtype=torch.long)
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

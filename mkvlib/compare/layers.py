"""Shared machinery of the bench's own caches: a runner over a cache factory, the attention they use, and checks.

The bench's own cache layers (token eviction, ThinK, the SVD-of-weights latent cache, the quantized reduced
cache) hand a :class:`mkvlib.cache.ReducedKV` to the attention override of :mod:`mkvlib.cache`, which calls the
layer's ``attend(query, attention_mask, scaling)``. Such a layer carries ``layer_idx`` and ``module_id`` (the id
of the attention module it serves) like :class:`mkvlib.cache.CompressedLayer`.

Layers that store fewer tokens than they have seen, or tensors the model's mask was not built for, ignore the
model's mask and apply :func:`offset_causal_attention`: the T new queries see every stored token before them and
the new tokens causally. They serve unpadded batches only (the :class:`~mkvlib.compare.base.Runner` protocol).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .. import cache as cache_module
from ..attention import attention_modules
from .base import Runner


class CacheRunner(Runner):
    """A runner whose cache comes from ``factory(batch, tokens)``; the last cache made is kept as ``cache``."""

    def __init__(self, model, factory):
        super().__init__(model)
        self.factory, self.cache = factory, None

    def new_cache(self, batch: int, tokens: int):
        self.cache = self.factory(batch, tokens)
        return self.cache


@contextlib.contextmanager
def cache_runner(model, factory):
    """Yield a :class:`CacheRunner`; on leaving, remove the attention override if this runner installed it."""
    had_override = model.__dict__.get("_mkv_cache_handle") is not None
    try:
        yield CacheRunner(model, factory)
    finally:
        if not had_override:
            cache_module.disable(model)


def module_ids(model) -> list[int]:
    """id() of each attention module, by layer (what a bench cache layer checks its calls against)."""
    return [id(m) for m in attention_modules(model)]


def layer_types(model) -> list[str]:
    """The model's attention layer types ('full_attention', 'sliding_attention', ...), one per layer."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    window = getattr(config, "sliding_window", None)
    use = getattr(config, "use_sliding_window", window is not None)
    return ["sliding_attention" if window and use else "full_attention"] * config.num_hidden_layers


def sliding_reason(model, method: str) -> str | None:
    """A reason when ``model`` has layers other than full attention (sliding windows), which ``method``'s cache
    does not reproduce; None otherwise."""
    other = sorted(set(layer_types(model)) - {"full_attention"})
    if other:
        return (f"{method} keeps its own cache layers with full attention over what they store, but this model has "
                f"{', '.join(other)} layers (a sliding window its cache would not apply)")
    return None


def offset_causal_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                            scaling: float) -> torch.Tensor:
    """query (B, H, T, dk), keys (B, G, S, dk), values (B, G, S, dv) with S >= T, the last T stored tokens being
    the queries' own -> output (B, T, H, dv). Query i sees the S - T earlier tokens and new tokens 0..i."""
    B, H, T, _ = query.shape
    S = keys.shape[2]
    mask = None
    if T > 1:
        mask = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling,
                                         enable_gqa=H != keys.shape[1])
    return out.transpose(1, 2)


def window_attention_weights(query: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """Softmax attention weights (B, H, w, S) of the last w queries (B, H, w, dk) of a prompt over its S keys
    (B, G, S, dk), causal (query i is the prompt's token S - w + i)."""
    B, H, w, _ = query.shape
    G, S = keys.shape[1], keys.shape[2]
    expanded = keys.repeat_interleave(H // G, dim=1)                               # (B, H, S, dk)
    logits = torch.einsum("bhtd,bhsd->bhts", query.float(), expanded.float()) * scaling
    mask = torch.ones(w, S, dtype=torch.bool, device=query.device).tril(S - w)
    return logits.masked_fill(~mask, float("-inf")).softmax(-1)


def element_size(model) -> int:
    """Bytes of one element of the model's dtype (the dtype its caches store)."""
    return next(model.parameters()).element_size()


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def check_fractions(name: str, values, allow_one: bool = True) -> tuple:
    """A non-empty tuple of fractions in (0, 1], sorted from largest to smallest (least to most compressed)."""
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} needs at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1 or (v == 1 and not allow_one):
            raise ValueError(f"each of {name} must be a fraction in (0, 1], e.g. 0.5, not {v!r}")
    return tuple(sorted((float(v) for v in values), reverse=True))


FEATURE_BUDGETS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)

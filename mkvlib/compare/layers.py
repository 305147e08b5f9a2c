"""Shared machinery of the bench's own caches: a runner over a cache factory, layer types, option checks.

The bench's cache layers subclass :class:`mkvlib.core.cache.CompressedLayer`. A layer that stores fewer tokens
than it has seen ignores the model's mask and attends causally over the new tokens and to every stored token
before them, so it serves unpadded batches only, which is what the :class:`~mkvlib.compare.base.Runner` sends.
"""
from __future__ import annotations

import contextlib

from ..core import cache as cache_module
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


def bench_layers(cache, projections, reserve: int, layer_type, *options) -> list:
    """The layers of a bench cache, a :class:`~mkvlib.core.cache.CompressedCache` subclass, made after its own
    ``__init__`` as it makes its own: ``layer_type(*options, layer index, head groups, U_K, U_V, mu_V, reserve,
    attention module id)`` for each of the model's layers, with the bases in float32."""
    return [layer_type(*options, l, cache_module.head_groups(cache.ranks[l]), projections.keys[l].float(),
                       projections.values[l].float(), projections.value_mean[l].float(), reserve,
                       id(cache._modules[l])) for l in range(cache.geometry.layers)]


def layer_types(model) -> list[str]:
    """The model's attention layer types ('full_attention', 'sliding_attention', ...), one per layer."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    window = getattr(config, "sliding_window", None)
    use = getattr(config, "use_sliding_window", window is not None)
    return ["sliding_attention" if window and use else "full_attention"] * config.num_hidden_layers


def sliding_reason(model, method: str, cache: str = "its own cache layers") -> str | None:
    """A reason when ``model`` has layers other than full attention (sliding windows), which ``method``'s cache
    (``cache``, what it keeps the keys and values in) does not reproduce, and what to do; None otherwise."""
    other = sorted(set(layer_types(model)) - {"full_attention"})
    if other:
        return (f"{method} keeps {cache} with full attention over what they store, but this model has "
                f"{', '.join(other)} layers (a sliding window its cache would not apply): compare {method} on a "
                "model whose layers are all full attention")
    return None


def element_size(model) -> int:
    """Bytes of one element of the model's dtype (the dtype its caches store)."""
    return next(model.parameters()).element_size()


def check_context(context) -> int:
    """A context of at least one token (bytes per token are amortised over it)."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be a positive number of tokens, not {context!r}")
    return context


def check_count(name: str, value, least: int = 1, what: str = "a positive integer") -> None:
    """A ValueError '{name} must be {what}' unless ``value`` is an integer (not a bool) of at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be {what}, not {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def check_fractions(name: str, values) -> tuple:
    """A non-empty tuple of fractions in (0, 1], sorted from largest to smallest (least to most compressed); one
    number alone is a tuple of one (``budgets=0.5`` on the command line)."""
    values = (values,) if isinstance(values, (int, float)) and not isinstance(values, bool) else tuple(values)
    if not values:
        raise ValueError(f"{name} needs at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"each of {name} must be a fraction in (0, 1], e.g. 0.5, not {v!r}")
    return tuple(sorted((float(v) for v in values), reverse=True))


FEATURE_BUDGETS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)

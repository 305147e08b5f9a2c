"""The one small interface every KV-cache compression method of the comparison bench implements.

A method (:class:`KVMethod`) offers *settings* (a 50% feature budget, 4 bits, a 512-token window, ...), says how
many bytes each setting really stores per token (:class:`ByteReport`) and runs the model under a setting
(:class:`Runner`). Every method is judged by the same protocol, so that feature-axis, token-axis and bit-axis
methods compare like with like:

- ``runner.generate(ids, n)``: greedy decoding of ``n`` new tokens after the prompt ``ids`` (1, S), the prompt
  held in the method's cache as the method stores it (retrieval tasks);
- ``runner.score(prefix, target)``: logits (B, T, V) for ``target`` (B, T) after the prefix (B, P) has been
  stored in the method's cache (perplexity and KL against the uncompressed run of the same call).

    method = get_method("uncompressed")
    setting = method.settings(model)[0]
    with method.runner(model, setting) as run:
        new_ids = run.generate(ids, 8)
    method.bytes(model, setting, context=4096).fraction   # 1.0

:func:`at_bytes` picks the setting of a method nearest to a requested fraction of the uncompressed cache's bytes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..compat import cache_kwargs
from ..core.geometry import KVGeometry
from ..results_store import BASELINE


@dataclass(frozen=True)
class Setting:
    """One setting of a method: ``label`` for tables ("50%", "4-bit", "window 512"), ``params`` the method's
    own knobs as sorted (name, value) pairs (hashable, so settings key stored results)."""
    method: str
    label: str
    params: tuple = ()

    def get(self, name: str, default=None):
        return dict(self.params).get(name, default)

    def key(self) -> str:
        """A stable text key: method, then its parameters."""
        return self.method + "".join(f"|{k}={v}" for k, v in self.params)


@dataclass(frozen=True)
class ByteReport:
    """What a setting stores. ``per_token``: bytes per cached token over all layers, keys and values, at a
    context of ``context`` tokens (scales, zero points and full-precision residual buffers included, amortised
    over the context); ``fixed``: bytes that do not grow with tokens (projection matrices), reported apart;
    ``fraction``: ``per_token`` over the uncompressed cache's bytes per token in the same dtype."""
    per_token: float
    fixed: int
    fraction: float
    context: int
    detail: dict = field(default_factory=dict)

    @classmethod
    def of(cls, model, per_token: float, fixed: int, context: int, **detail) -> ByteReport:
        """The report of ``per_token`` bytes on ``model``: its fraction taken against the uncompressed cache."""
        return cls(float(per_token), int(fixed), per_token / full_bytes_per_token(model), context, detail)


def full_bytes_per_token(model) -> int:
    """Bytes per token of the uncompressed cache: layers x KV heads x head_dim x 2 (K, V) x element size."""
    geom = KVGeometry.of(model)
    return geom.layers * geom.kv_heads * geom.head_dim * 2 * next(model.parameters()).element_size()


class Runner:
    """Runs the model under one setting. Subclasses override :meth:`new_cache` (a cache-based method) or both
    public methods. Inputs are LongTensors on the model's device."""

    def __init__(self, model):
        self.model = model

    def new_cache(self, batch: int, tokens: int):
        """A fresh empty cache for ``batch`` sequences of up to ``tokens`` tokens (None: the model's default)."""
        return None

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding: the new token ids (1, n), n <= max_new_tokens (stops at end-of-sequence)."""
        cache = self.new_cache(ids.shape[0], ids.shape[1] + max_new_tokens)
        kwargs = {} if cache is None else cache_kwargs(cache)
        cfg = self.model.generation_config
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None, use_cache=True,
                                  pad_token_id=pad, **kwargs)
        return out[:, ids.shape[1]:]

    @torch.no_grad()
    def score(self, prefix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) at the target positions: logits[:, t] predicts target[:, t + 1]; the prefix (B, P) is
        stored in the method's cache first, then the targets run in one forward over that cache."""
        cache = self.new_cache(prefix.shape[0], prefix.shape[1] + target.shape[1])
        if cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
        self.model(prefix, **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
        return self.model(target, **cache_kwargs(cache), use_cache=True).logits


class KVMethod:
    """A compression method. ``name`` is its registry name; subclasses define the four methods below."""
    name = "?"
    axis = "?"          # "none", "feature", "token", "bits" or "composed"

    def unsupported(self, model) -> str | None:
        """None when the method applies to ``model``, else one line saying why it cannot."""
        return None

    def check_supported(self, model) -> None:
        """A ValueError saying why when the method cannot run on ``model``."""
        reason = self.unsupported(model)
        if reason:
            raise ValueError(reason)

    def settings(self, model) -> list[Setting]:
        """The settings this method offers on ``model``, from least to most compressed."""
        raise NotImplementedError

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        """What ``setting`` stores per token at ``context`` tokens (exact, computed from shapes and dtypes)."""
        raise NotImplementedError

    def runner(self, model, setting: Setting) -> contextlib.AbstractContextManager[Runner]:
        """A context manager giving a :class:`Runner`; leaving it restores the model."""
        raise NotImplementedError


class Uncompressed(KVMethod):
    """The full cache: the ceiling every method is compared with."""
    name, axis = BASELINE, "none"

    def settings(self, model) -> list[Setting]:
        return [Setting(self.name, "100%")]

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        return ByteReport.of(model, full_bytes_per_token(model), 0, context)

    @contextlib.contextmanager
    def runner(self, model, setting: Setting):
        yield Runner(model)


REGISTRY: dict[str, type[KVMethod]] = {BASELINE: Uncompressed}


def register(cls: type[KVMethod]) -> type[KVMethod]:
    """Class decorator adding a method to :data:`REGISTRY` under its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str, **options) -> KVMethod:
    """The method registered as ``name`` (a clear error listing the known names otherwise)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**options)


class BytesUnreachableError(ValueError):
    """No setting of a method stores close enough to the requested fraction of the bytes."""


def at_bytes(method: KVMethod, model, fraction: float, context: int):
    """(setting, report): the setting whose byte fraction is nearest to ``fraction`` (relative distance at most
    25%), else :class:`BytesUnreachableError` naming the fractions the method can reach."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a byte fraction is in (0, 1] (0.25 = a quarter of the uncompressed cache), not {fraction!r}")
    options = [(s, method.bytes(model, s, context)) for s in method.settings(model)]
    if not options:
        raise BytesUnreachableError(f"{method.name} offers no setting on this model")
    setting, report = min(options, key=lambda o: abs(o[1].fraction - fraction))
    if abs(report.fraction - fraction) > 0.25 * fraction:
        reach = ", ".join(f"{r.fraction:.3f}" for _, r in options)
        raise BytesUnreachableError(f"{method.name} cannot store {fraction:.3f} of the bytes at {context} tokens "
                                    f"(its settings give {reach}): ask for one of those, or drop it from --methods")
    return setting, report

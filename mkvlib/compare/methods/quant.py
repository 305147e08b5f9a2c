"""``quant``: transformers' ``QuantizedCache`` (KIVI-style), backend optimum-quanto or HQQ, at 4 and 2 bits.

Per layer, keys and values alike, in groups of ``group`` numbers along the head dimension: packed integers
(S_q x d x nbits / 8 bytes per KV head), a scale and a zero point per group in the model's dtype, and a
full-precision residual buffer of the last S_r tokens. The prompt is quantized whole at its prefill; decoded
tokens collect in the residual, folded in before it reaches ``residual_length``, so :meth:`Quant.bytes` charges
S_r = min(residual_length - 1, context), amortised over the context. :func:`quantized_bytes` is the formula,
:func:`held_bytes` what a real cache holds (the tests compare them). Packages: ``pip install optimum-quanto hqq``
(the ``compare`` extra). Models with sliding-window layers are refused.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ...core.geometry import KVGeometry
from ..base import ByteReport, KVMethod, Setting, register
from ..layers import cache_runner, check_choice, check_context, check_count, element_size, sliding_reason

BITS = {"quanto": (2, 4), "hqq": (2, 4, 8)}
PACKAGES = {"quanto": "optimum.quanto", "hqq": "hqq"}


def quantized_bytes(model, nbits: int, group: int, quantized_tokens: int, residual_tokens: int,
                    batch: int = 1) -> int:
    """Exact bytes of a filled ``QuantizedCache``: packed data, scales and zero points of ``quantized_tokens``
    tokens plus ``residual_tokens`` tokens at full precision, over all layers, keys and values."""
    geom, element = KVGeometry.of(model), element_size(model)
    heads = geom.layers * geom.kv_heads * 2 * batch                     # (layer, KV head, K/V, sequence)
    packed = quantized_tokens * geom.head_dim * nbits // 8
    scales = quantized_tokens * (geom.head_dim // group) * 2 * element
    residual = residual_tokens * geom.head_dim * element
    return heads * (packed + scales + residual)


def held_bytes(cache) -> int:
    """Bytes of the tensors a ``QuantizedCache`` holds: quanto's packed data, scales and shifts, or HQQ's packed
    data, scales and zeros, plus the residual keys and values."""
    from ...bench.caches import tensor_bytes

    total = 0
    for layer in cache.layers:
        total += tensor_bytes(layer.keys) + tensor_bytes(layer.values)
        for q in (layer._quantized_keys, layer._quantized_values):
            if isinstance(q, tuple):                                     # HQQ: (packed, meta)
                total += tensor_bytes(q[0]) + tensor_bytes(q[1]["scale"]) + tensor_bytes(q[1]["zero"])
            else:
                total += tensor_bytes(q)
    return total


@register
@dataclass(frozen=True)
class Quant(KVMethod):
    """Options: ``backend`` ('quanto' or 'hqq'), ``bits`` (the settings, most bits first: quanto 4, 2; HQQ also
    8), ``group_size`` (numbers sharing a scale and zero point; at most head_dim, which it must divide),
    ``residual_length`` (the full-precision buffer of recent tokens, >= 1)."""
    backend: str = "quanto"
    bits: tuple = (4, 2)
    group_size: int = 64
    residual_length: int = 128

    name, axis = "quant", "bits"

    def __post_init__(self):
        check_choice("backend", self.backend, tuple(BITS))
        bits = tuple(sorted(set(self.bits), reverse=True))
        if not bits or any(b not in BITS[self.backend] for b in bits):
            raise ValueError(f"bits for the {self.backend} backend are among {BITS[self.backend]}, not {self.bits!r}")
        object.__setattr__(self, "bits", bits)
        check_count("group_size", self.group_size)
        check_count("residual_length", self.residual_length)

    def group(self, model) -> int:
        """The group size used on ``model``: group_size, or head_dim when that is smaller."""
        return min(self.group_size, KVGeometry.of(model).head_dim)

    def unsupported(self, model) -> str | None:
        if importlib.util.find_spec(PACKAGES[self.backend].split(".")[0]) is None or \
                importlib.util.find_spec(PACKAGES[self.backend]) is None:
            return f"quant ({self.backend}) needs its package: pip install " + \
                   {"quanto": "optimum-quanto", "hqq": "hqq"}[self.backend]
        reason = sliding_reason(model, self.name, "transformers' QuantizedCache layers")
        if reason:
            return reason
        d = KVGeometry.of(model).head_dim
        if d % self.group(model):
            return f"quant needs a group size dividing head_dim {d}, not {self.group_size}"
        return None

    def settings(self, model) -> list[Setting]:
        group = self.group(model)
        return [Setting(self.name, f"{b}-bit {self.backend}", (("backend", self.backend), ("group", group),
                                                               ("nbits", b), ("residual", self.residual_length)))
                for b in self.bits]

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        check_context(context)
        nbits, group = setting.get("nbits"), setting.get("group")
        residual = min(self.residual_length - 1, context)
        total = quantized_bytes(model, nbits, group, context - residual, residual)
        per_token = total / context
        return ByteReport.of(model, per_token, 0, context, residual_tokens=residual,
                             quantized_tokens=context - residual)

    def runner(self, model, setting: Setting):
        self.check_supported(model)
        from transformers import QuantizedCache

        def make(batch, tokens):
            return QuantizedCache(backend=self.backend, config=model.config, nbits=setting.get("nbits"),
                                  q_group_size=setting.get("group"), residual_length=setting.get("residual"))

        return cache_runner(model, make)

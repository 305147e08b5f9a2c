"""A precision ladder on the Matryoshka bases: each basis cut into segments, each segment at its own bit width.

Every entry (layer l, KV head g, K or V) projects a token onto its ordered basis U (docs/design.md, section 2) and
cuts the d coordinates into consecutive *segments* of ``segment`` features. Each segment is stored at one width
of the ladder: the model's dtype (32 bits on a float32 model), 16 (float16, when the model's dtype is wider), 8,
4 or 2 bits, or dropped (0); widths never increase along the basis (feature 1 matters more than feature 2), and
the first segment is never dropped. A :class:`Ladder` holds the widths, shape (L, G, 2, d / segment).

Quantized features (8, 4, 2 bits) share, per token, one (low, range) pair per *group* of ``group`` consecutive
features (groups aligned on the basis; only a group's quantized features set its low and range): a feature of
b bits stores q = round((x - low) / range * (2^b - 1)) and reads back low + q * range / (2^b - 1). Low and range
are stored in float16 (``scale_bytes`` = 2; 4: float32, as quanto stores them on a float32 model). Bytes per
token of one entry:

    sum over segments of segment x bits / 8     (the model's dtype counts its own bits; dropped: 0)
  + 2 x scale_bytes x (groups holding at least one quantized feature)

and no full-precision window: every token is stored as the layout says (:meth:`Ladder.token_bytes`).

Two paths compute the same thing. Simulated (:func:`attach`): an attention hook fake-quantizes each head's
projected keys and values and maps them back (k U, quantized, times U^T), for fast scoring. Real
(:class:`LadderCache`): a cache for ``generate()`` storing the packed integers, their scales and the wider
segments, and attending through the reduced tensors (:class:`mkvlib.core.cache.CompressedLayer`).

Algorithm 1 over bytes (:func:`search`): from every segment at the model's dtype, each step lowers one segment one
rung (a width down, or 2 bits -> dropped), the step with the smallest calibration-KL increase per byte saved;
the whole path down to the floor is one :class:`LadderTrajectory`, and a byte budget is a prefix of it. The KL
increase of a step is estimated like the rank search's proxy (:class:`mkvlib.search.proxy.LocalProxy`): the
change of the head's attention output (through the output projection) on calibration text, times a
KL-per-error sensitivity of its layer and kind measured exactly (:class:`mkvlib.core.scoring.KLScorer`).
Introduced in notebook 08.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .core import attention
from .core.cache import CompressedCache, CompressedLayer, HeadGroup, ReducedKV
from .core.compress import KeepsWhole, RankedHook
from .core.geometry import KVGeometry
from .core.io import write_json
from .core.projections import Projections, resolve_projections
from .core.ranks import budget_for_bytes, check_whole_tokens, stored_fraction

FORMAT = "mkv-ladder/1"
QUANT_WIDTHS = (8, 4, 2)
SCALE_DTYPES = {2: torch.float16, 4: torch.float32}      # scale_bytes -> the dtype low and range are stored in


def widths(full_bits: int) -> tuple[int, ...]:
    """The ladder's rungs, widest first: the model's dtype, 16 when narrower than it, 8, 4, 2 and 0 (dropped)."""
    return (full_bits,) + ((16,) if full_bits > 16 else ()) + QUANT_WIDTHS + (0,)


def dtype_bits(model_or_dtype) -> int:
    dtype = model_or_dtype if isinstance(model_or_dtype, torch.dtype) else next(model_or_dtype.parameters()).dtype
    return torch.empty((), dtype=dtype).element_size() * 8


# --- the layout -------------------------------------------------------------------------------------------------
@dataclass
class Ladder:
    """Bit widths per segment, ``bits`` (L, G, 2, S) with S = d / segment, checked on creation."""
    bits: torch.Tensor
    segment: int = 8
    group: int = 32
    full_bits: int = 32
    scale_bytes: int = 2

    def __post_init__(self):
        self.bits = torch.as_tensor(self.bits, dtype=torch.long).clone()
        if self.bits.dim() != 4 or self.bits.shape[2] != 2:
            raise ValueError(f"ladder bits have shape (layers, kv_heads, 2, segments), not {tuple(self.bits.shape)}")
        d = self.head_dim
        for name, value in (("segment", self.segment), ("group", self.group)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive number of features, not {value!r}")
        if self.segment % 4:
            raise ValueError(f"segment must be a multiple of 4 features (whole bytes at 2 bits), not {self.segment}")
        if self.scale_bytes not in SCALE_DTYPES:
            raise ValueError(f"scale_bytes is 2 (float16 low and range) or 4 (float32), not {self.scale_bytes!r}")
        if self.segment <= 2 * self.scale_bytes:
            raise ValueError(f"segment ({self.segment}) must exceed 2 x scale_bytes ({2 * self.scale_bytes}), so "
                             "that every step down the ladder saves bytes even when it adds a group's scales")
        if self.group % self.segment or d % self.group:
            raise ValueError(f"group ({self.group}) must be a multiple of segment ({self.segment}) and divide the "
                             f"head dimension {d}")
        allowed = widths(self.full_bits)
        bad = sorted(set(self.bits.unique().tolist()) - set(allowed))
        if bad:
            raise ValueError(f"bit widths must be among {allowed} (the model's dtype is {self.full_bits} bits), "
                             f"not {bad}")
        rising = (self.bits[..., 1:] > self.bits[..., :-1]).nonzero()
        if len(rising):
            l, g, c, s = rising[0].tolist()
            raise ValueError(f"bit widths must not increase along the basis: layer {l}, head {g}, "
                             f"{'KV'[c]} has segment {s} at {int(self.bits[l, g, c, s])} bits and segment {s + 1} "
                             f"at {int(self.bits[l, g, c, s + 1])}")
        if (self.bits[..., 0] == 0).any():
            raise ValueError("the first segment of every entry is kept (at least 2 bits); a layout that drops a "
                             "whole key or value head is not offered")

    @property
    def head_dim(self) -> int:
        return self.bits.shape[-1] * self.segment

    @classmethod
    def uniform(cls, geom: KVGeometry, full_bits: int, bits: int | None = None, features: int | None = None,
                segment: int = 8, group: int = 32, scale_bytes: int = 2) -> Ladder:
        """The first ``features`` features (default all) at ``bits`` (default the model's dtype), the rest
        dropped: the uniform composition of a rank and a quantizer."""
        d = geom.head_dim
        features = d if features is None else features
        if features % segment or not 0 < features <= d:
            raise ValueError(f"features must be a multiple of segment {segment} in (0, {d}], not {features!r}")
        row = [full_bits if bits is None else bits] * (features // segment) + [0] * ((d - features) // segment)
        full = torch.tensor(row).expand(geom.layers, geom.kv_heads, 2, d // segment)
        return cls(full, segment, group, full_bits, scale_bytes)

    def feature_bits(self) -> torch.Tensor:
        """Widths per feature, (L, G, 2, d)."""
        return self.bits.repeat_interleave(self.segment, -1)

    def entry_bytes(self) -> torch.Tensor:
        """Bytes per token of each entry, (L, G, 2), from the formula of the module docstring."""
        return entry_bytes(self.bits, self.segment, self.group, self.scale_bytes)

    def token_bytes(self) -> float:
        """Bytes per token of the whole cache (all layers, heads, keys and values)."""
        return float(self.entry_bytes().sum())

    def bits_per_element(self) -> float:
        """Average stored bits per cache element (per token, layer, KV head, K/V and feature), scales included."""
        return self.token_bytes() * 8 / self.bits[..., 0].numel() / self.head_dim

    def fraction(self) -> float:
        """Bytes over the uncompressed cache's in the model's dtype."""
        return self.bits_per_element() / self.full_bits

    def as_dict(self) -> dict:
        return {"segment": self.segment, "group": self.group, "full_bits": self.full_bits,
                "scale_bytes": self.scale_bytes}


def entry_bytes(bits: torch.Tensor, segment: int, group: int, scale_bytes: int) -> torch.Tensor:
    """Bytes per token of rows of segment widths ``bits`` (..., S): data plus (low, range) of quantized groups."""
    fb = bits.repeat_interleave(segment, -1)
    quant = ((fb > 0) & (fb <= 8)).unflatten(-1, (-1, group)).any(-1).sum(-1)
    return bits.sum(-1) * segment / 8 + 2 * scale_bytes * quant


# --- quantization -------------------------------------------------------------------------------------------------
def _levels(fbits: torch.Tensor) -> torch.Tensor:
    return ((2 ** fbits.clamp(0, 8)) - 1).clamp_min(1).float()


def quantize(x: torch.Tensor, fbits: torch.Tensor, group: int, scale_bytes: int = 2) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """Codes and scales of the quantized features of ``x`` (..., d) at widths ``fbits`` (broadcast to x).

    Returns q (..., d) float codes (0 where a feature is not quantized) and meta (..., d / group, 2): low and
    range per group in float16 (``scale_bytes`` 2) or float32 (4), rounded as stored (0 for a group without
    quantized features)."""
    x = x.float()
    shape = torch.broadcast_shapes(x.shape, fbits.shape)
    fbits = fbits.to(x.device).expand(shape)
    mask = (fbits > 0) & (fbits <= 8)
    xg, mg = x.expand(shape).unflatten(-1, (-1, group)), mask.unflatten(-1, (-1, group))
    low = torch.where(mg, xg, math.inf).amin(-1)
    high = torch.where(mg, xg, -math.inf).amax(-1)
    has = mg.any(-1)
    low, high = torch.where(has, low, 0.0), torch.where(has, high, 0.0)
    meta = torch.stack([low, high - low], -1).to(SCALE_DTYPES[scale_bytes])
    low_f = meta[..., 0].float().repeat_interleave(group, -1)
    rng_f = meta[..., 1].float().repeat_interleave(group, -1)
    levels = _levels(fbits)
    q = ((x - low_f) / rng_f.clamp_min(1e-12) * levels).round().clamp(min=0)
    q = torch.minimum(q, levels)
    return torch.where(mask, q, 0.0), meta


def dequantize(q: torch.Tensor, meta: torch.Tensor, fbits: torch.Tensor, group: int) -> torch.Tensor:
    """Values low + q * range / (2^b - 1) of codes ``q`` (..., d) (only meaningful where 0 < fbits <= 8)."""
    low = meta[..., 0].float().repeat_interleave(group, -1)
    rng = meta[..., 1].float().repeat_interleave(group, -1)
    return low + q * rng / _levels(fbits.to(q.device))


def simulate(x: torch.Tensor, fbits: torch.Tensor, group: int, full_bits: int, scale_bytes: int = 2) -> torch.Tensor:
    """``x`` (..., d) as a ladder stores and reads it back: kept, cast to float16, quantized or zero, per feature."""
    xf = x.float()
    q, meta = quantize(xf, fbits, group, scale_bytes)
    out = dequantize(q, meta, fbits, group)
    fbits = fbits.to(x.device)
    out = torch.where(fbits == 16, xf.to(torch.float16).float(), out)
    out = torch.where(fbits >= full_bits, xf, out)
    return torch.where(fbits == 0, 0.0, out)


def pack(q: torch.Tensor, nbits: int) -> torch.Tensor:
    """Codes (..., n) in [0, 2^nbits) -> uint8 (..., n * nbits / 8), 8 / nbits codes a byte (n * nbits % 8 == 0)."""
    q = q.to(torch.uint8).unflatten(-1, (-1, 8 // nbits))
    shifts = torch.arange(0, 8, nbits, dtype=torch.uint8, device=q.device)
    return (q << shifts).sum(-1, dtype=torch.uint8)


_UNPACK_TABLES: dict = {}


def unpack(packed: torch.Tensor, nbits: int) -> torch.Tensor:
    """The float codes (..., n) of :func:`pack`'s bytes (..., n * nbits / 8): one table look-up per byte."""
    key = (nbits, packed.device)
    if key not in _UNPACK_TABLES:
        shifts = torch.arange(0, 8, nbits, device=packed.device)
        _UNPACK_TABLES[key] = ((torch.arange(256, device=packed.device)[:, None] >> shifts) & (2 ** nbits - 1)).float()
    return F.embedding(packed.int(), _UNPACK_TABLES[key]).flatten(-2)


# --- the simulated path -------------------------------------------------------------------------------------------
class LadderHook(KeepsWhole, RankedHook):
    """A ladder attached as an attention hook: keys k -> simulate(k U) U^T, values (v - mu) likewise plus mu.
    ``set_ranks(bits)`` takes new widths (L, G, 2, S) (the name lets :class:`~mkvlib.core.scoring.KLScorer`
    drive it); ``enabled`` switches it off; ``keep_whole(first, recent)`` keeps tokens whole as
    :meth:`mkvlib.core.compress.Compression.keep_whole` does."""

    def __init__(self, model, projections: Projections, ladder: Ladder):
        self.model, self.geometry, self.enabled = model, KVGeometry.of(model), True
        device = next(model.parameters()).device
        self.keys, self.values = projections.keys.float().to(device), projections.values.float().to(device)
        self.value_mean = projections.value_mean.float().to(device)
        self.ladder = ladder
        self.set_ranks(ladder.bits)
        self._handle = attention.install(model, hook=self)

    def set_ranks(self, bits) -> None:
        lad = self.ladder
        self.ladder = Ladder(bits, lad.segment, lad.group, lad.full_bits, lad.scale_bytes)
        self.ranks = self.ladder.bits
        self._fbits = self.ladder.feature_bits().to(self.keys.device)

    @property
    def budget(self) -> float:
        return self.ladder.fraction()

    def __call__(self, module, query, key, value):
        if not self.enabled:
            return query, key, value
        l = module.layer_idx
        uk, uv, mu = self.keys[l], self.values[l], self.value_mean[l][None, :, None]
        fb = self._fbits[l][:, :, None, :]                                          # (G, 2, 1, d)
        kp = torch.einsum("bgsd,gde->bgse", key.float(), uk)
        vp = torch.einsum("bgsd,gde->bgse", value.float() - mu, uv)
        args = (self.ladder.group, self.ladder.full_bits, self.ladder.scale_bytes)
        k = torch.einsum("bgse,gde->bgsd", simulate(kp, fb[:, 0], *args), uk)
        v = torch.einsum("bgse,gde->bgsd", simulate(vp, fb[:, 1], *args), uv) + mu
        return (query, *self.with_whole(k.to(key.dtype), v.to(value.dtype), key, value))


def identity_projections(model) -> Projections:
    """The standard basis for every entry: a ladder on it quantizes the cache's own coordinates (bits only)."""
    geom = KVGeometry.of(model)
    eye = torch.eye(geom.head_dim).expand(geom.layers, geom.kv_heads, -1, -1).clone()
    return Projections(eye, eye.clone(), torch.zeros(geom.layers, geom.kv_heads, geom.head_dim),
                       meta={"model": getattr(model, "mkv_name", None), "kind": "identity"})


def attach(model, projections, ladder: Ladder, keep_first: int = 0, keep_recent: int = 0) -> LadderHook:
    """Attach ``ladder`` over ``projections`` (object, path, 'pca' or 'trained') as a simulated compression, with
    the first ``keep_first`` tokens and each query's ``keep_recent`` latest ones read whole."""
    check_whole_tokens(keep_first, keep_recent)
    proj = resolve_projections(projections, model)
    geom = KVGeometry.of(model)
    if ladder.bits.shape[:2] != (geom.layers, geom.kv_heads) or ladder.head_dim != geom.head_dim:
        raise ValueError(f"a ladder of shape {tuple(ladder.bits.shape)} x segment {ladder.segment} does not fit "
                         f"the model's (layers, kv_heads, head_dim) = {(geom.layers, geom.kv_heads, geom.head_dim)}")
    if ladder.full_bits != dtype_bits(model):
        raise ValueError(f"the ladder's full width is {ladder.full_bits} bits but the model computes in "
                         f"{dtype_bits(model)}-bit numbers")
    hook = LadderHook(model, proj, ladder)
    hook.keep_whole(keep_first, keep_recent)
    return hook


def stored_bits(ladder: Ladder, tokens: int, first: int = 0, recent: int = 0) -> float:
    """Bits per element held for ``tokens`` tokens by a ladder cache that also keeps ``first`` + ``recent`` tokens
    whole in the model's dtype (:func:`mkvlib.core.ranks.stored_fraction`, the ladder's fraction as the budget)."""
    return stored_fraction(ladder.fraction(), tokens, first, recent) * ladder.full_bits


def bits_for_bytes(bits_per_element: float, tokens: int, first: int, recent: int, full_bits: int) -> float:
    """The ladder's own bits per element when ``tokens`` tokens with ``first`` + ``recent`` of them also held whole
    store ``bits_per_element`` in all; a clear error when the whole tokens alone take that much."""
    return budget_for_bytes(bits_per_element / full_bits, tokens, first, recent) * full_bits


# --- the real path ------------------------------------------------------------------------------------------------
class LadderLayer(CompressedLayer):
    """One layer of a :class:`LadderCache`: per KV head and kind, the wide segments in the model's dtype (and
    float16), the packed 8-, 4- and 2-bit codes, and the float16 (low, range) of the groups holding them."""

    def __init__(self, layer_idx: int, fbits: torch.Tensor, ladder: Ladder, keys, values, value_mean,
                 module_id: int, keep_first: int = 0, keep_recent: int = 0):
        self.fbits, self.ladder = fbits, ladder                                         # (G, 2, d)
        kept = (fbits > 0).sum(-1)
        groups = [HeadGroup((g,), int(kept[g, 0]), int(kept[g, 1])) for g in range(fbits.shape[0])]
        super().__init__(layer_idx, groups, keys, values, value_mean, 0, module_id, keep_first, keep_recent)
        self._full = (keys, values, value_mean)
        self.parts: list = []
        self.plans = [[self._plan(fbits[g, c]) for c in (0, 1)] for g in range(fbits.shape[0])]

    def _plan(self, fb: torch.Tensor) -> tuple:
        """What reading one head and kind needs, fixed by its widths: the feature boundaries (:meth:`_bounds`),
        the first feature of its first quantized group, and the levels 2^b - 1 over those groups (n, group)
        (None when no feature is quantized)."""
        e, group = self._bounds(fb), self.ladder.group
        if e[5] == e[2]:
            return e, 0, None
        first = e[2] // group * group
        span = fb[first:-(-e[5] // group) * group]
        return e, first, _levels(span).unflatten(-1, (-1, group))

    def lazy_initialization(self, key_states, value_states):
        super().lazy_initialization(key_states, value_states)
        self.full_bases = [t.to(self.device, torch.float32) for t in self._full]
        self.parts = [[[] for _ in (0, 1)] for _ in self.groups]
        self.plans = [[(e, first, None if lv is None else lv.to(self.device)) for e, first, lv in head]
                      for head in self.plans]

    def _bounds(self, fb: torch.Tensor) -> list[int]:
        """Feature boundaries of one head and kind: [0, end of full, end of 16-bit, end of 8, of 4, of 2 bits]."""
        full = self.ladder.full_bits
        counts = [int((fb >= full).sum()), int(((fb == 16) & (full > 16)).sum())]
        counts += [int((fb == b).sum()) for b in QUANT_WIDTHS]
        return [0] + [sum(counts[:i + 1]) for i in range(len(counts))]

    def _split(self, x: torch.Tensor, fb: torch.Tensor, e: list) -> list:
        """x (B, 1, T, d) projected -> the stored tensors of one head and kind (feature boundaries ``e``): the
        model's dtype part, the float16 part, packed 8-, 4-, 2-bit codes, and (low, range) of the groups holding
        quantized features."""
        group = self.ladder.group
        q, meta = quantize(x, fb, group, self.ladder.scale_bytes)
        out = [x[..., :e[1]].to(self.dtype), x[..., e[1]:e[2]].to(torch.float16)]
        out += [pack(q[..., e[i]:e[i + 1]], b) for i, b in zip((2, 3, 4), QUANT_WIDTHS)]
        out.append(meta[..., e[2] // group:-(-e[5] // group), :] if e[5] > e[2] else meta[..., :0, :])
        return out

    def _read(self, parts: list, plan: tuple) -> torch.Tensor:
        """The stored tensors of one head and kind -> its kept features (B, 1, S, r) in the model's dtype: the
        codes of each width unpacked in one look-up, dequantized per group (low + q x range / levels) at once."""
        wide, half, *codes, meta = parts
        e, first, levels = plan
        pieces = [t.float() for t in (wide, half) if t.shape[-1]]
        if levels is not None:
            q = torch.cat([unpack(p, b) for p, b in zip(codes, QUANT_WIDTHS) if p.shape[-1]], -1)
            q = F.pad(q, (e[2] - first, levels.numel() - (e[5] - first))).unflatten(-1, levels.shape)
            meta = meta.float()
            x = (meta[..., :1] + q * meta[..., 1:] / levels).flatten(-2)
            pieces.append(x[..., e[2] - first:e[5] - first])
        return (torch.cat(pieces, -1) if len(pieces) > 1 else pieces[0]).to(self.dtype)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        uk, uv, mu = self.full_bases
        kp = torch.einsum("bgsd,gde->bgse", key_states.float(), uk)
        vp = torch.einsum("bgsd,gde->bgse", value_states.float() - mu[None, :, None], uv)
        for g in range(len(self.groups)):
            for c, x in enumerate((kp, vp)):
                new = self._split(x[:, g:g + 1], self.fbits[g, c], self.plans[g][c][0])
                old = self.parts[g][c]
                self.parts[g][c] = new if not old else [torch.cat([a, b], 2) for a, b in zip(old, new)]
        if self.whole is not None:
            self.whole.add(key_states, value_states, self.length)
        self.length += key_states.shape[2]
        handle = ReducedKV(self)
        return handle, handle

    def reduced(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self._read(self.parts[i][c], self.plans[i][c]) for c in (0, 1))

    def stored_bytes(self) -> int:
        whole = self.whole.stored_bytes() if self.whole is not None and self.is_initialized else 0
        return whole + sum(t.nelement() * t.element_size() for head in self.parts for kind in head for t in kind)

    allocated_bytes = stored_bytes

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a ladder cache cannot be cropped")

    def reset(self) -> None:
        super().reset()
        if self.is_initialized:
            self.parts = [[[] for _ in (0, 1)] for _ in self.groups]

    def _map_batch(self, fn) -> None:
        if self.is_initialized:
            self.parts = [[[fn(t) for t in kind] for kind in head] for head in self.parts]
            self.batch_size = self.parts[0][0][0].shape[0] if self.parts[0][0] else self.batch_size
            if self.whole is not None:
                self.whole.map(fn)


class LadderCache(CompressedCache):
    """A transformers Cache storing every entry as ``ladder`` says (see the module docstring); use like
    :class:`mkvlib.core.cache.CompressedCache`. ``stored_bytes()`` equals ``ladder.token_bytes()`` x tokens x batch,
    plus, with ``keep_first``/``keep_recent``, whole copies of those tokens in the model's dtype
    (:class:`mkvlib.core.cache.WholeTokens`; bits per element: :func:`stored_bits`)."""

    def __init__(self, model, projections, ladder: Ladder, keep_first: int = 0, keep_recent: int = 0):
        check_whole_tokens(keep_first, keep_recent)
        proj = resolve_projections(projections, model)
        fbits = ladder.feature_bits()
        kept = (fbits > 0).sum(-1)
        super().__init__(model, proj, kept, 0)
        self.ladder = ladder
        self.layers = [LadderLayer(l, fbits[l], ladder, proj.keys[l].float(), proj.values[l].float(),
                                   proj.value_mean[l].float(), id(self._modules[l]), keep_first, keep_recent)
                       for l in range(self.geometry.layers)]


# --- Algorithm 1 over bytes ---------------------------------------------------------------------------------------
def moves(row: list, full_bits: int) -> dict:
    """{segment: new width} of every allowed one-rung step of one entry's widths ``row``: a rung down, never
    below the next segment, and the first segment never dropped."""
    rungs = widths(full_bits)
    nxt = dict(itertools.pairwise(rungs))
    out = {}
    for s, w in enumerate(row):
        new = nxt.get(w)
        if new is None or (s == 0 and new == 0) or (s + 1 < len(row) and new < row[s + 1]):
            continue
        out[s] = new
    return out


class HeadErrors:
    """Squared change of each head's attention output (through its columns of o_proj), mean per calibration
    token, when one entry is stored as a ladder row says and everything else is exact."""

    @torch.no_grad()
    def __init__(self, model, projections: Projections, blocks: torch.Tensor, offsets=None, batch_size: int = 4):
        from .core.positions import shifted

        self.geom = KVGeometry.of(model)
        self.modules = attention.attention_modules(model)
        self.proj = projections
        captured: dict = {}

        def capture(module, q, k, v):
            captured.setdefault(module.layer_idx, []).append((q.float(), k.float(), v.float()))
            return q, k, v

        device = next(model.parameters()).device
        with attention.install(model, hook=capture):
            for i in range(0, len(blocks), batch_size):
                with shifted(model, None if offsets is None else offsets[i:i + batch_size]):
                    model(blocks[i:i + batch_size].to(device), use_cache=False)
        self.qkv = {l: tuple(torch.cat(t, 0) for t in zip(*parts)) for l, parts in captured.items()}
        self.tokens = blocks.numel()
        self.reference = {}

    def _out(self, l: int, g: int, k, v) -> torch.Tensor:
        q = self.qkv[l][0]
        per = q.shape[1] // self.geom.kv_heads
        qg = q[:, g * per:(g + 1) * per]
        o = F.scaled_dot_product_attention(qg, k.expand(-1, per, -1, -1), v.expand(-1, per, -1, -1),
                                           is_causal=True, scale=self.modules[l].scaling)
        d = self.geom.head_dim
        w = self.modules[l].o_proj.weight[:, g * per * d:(g + 1) * per * d].float()
        return o.transpose(1, 2).flatten(2) @ w.T

    @torch.no_grad()
    def error(self, entry: tuple, fbits: torch.Tensor, full_bits: int, group: int, scale_bytes: int = 2) -> float:
        l, g, c = entry
        _, key, value = self.qkv[l]
        k, v = key[:, g:g + 1], value[:, g:g + 1]
        if (l, g) not in self.reference:
            self.reference[(l, g)] = self._out(l, g, k, v)
        u = (self.proj.keys if c == 0 else self.proj.values)[l, g].float().to(k.device)
        if c == 0:
            k = simulate(k @ u, fbits, group, full_bits, scale_bytes) @ u.T
        else:
            mu = self.proj.value_mean[l, g].float().to(v.device)
            v = simulate((v - mu) @ u, fbits, group, full_bits, scale_bytes) @ u.T + mu
        return float((self._out(l, g, k, v) - self.reference[(l, g)]).pow(2).sum()) / self.tokens


@dataclass
class LadderTrajectory:
    """Steps (layer, head, kind, segment, new width, bits per element after, estimated KL after) from every
    segment at the model's dtype down to the floor; :meth:`at` replays the prefix for a budget."""
    model: str
    fingerprint: str
    geometry: tuple
    layout: dict
    steps: list
    meta: dict = field(default_factory=dict)

    def start(self) -> Ladder:
        L, G, d = self.geometry
        return Ladder.uniform(KVGeometry(L, G, G, d), self.layout["full_bits"], None, None, self.layout["segment"],
                              self.layout["group"], self.layout["scale_bytes"])

    def at(self, bits_per_element: float) -> Ladder:
        """The layout after the shortest prefix whose bits per element are <= the budget."""
        lad = self.start()
        if bits_per_element >= lad.bits_per_element():
            return lad
        bits = lad.bits
        for l, g, c, s, w, bpe, _ in self.steps:
            bits[l, g, c, s] = w
            if bpe <= bits_per_element + 1e-9:
                return Ladder(bits, **self.layout)
        raise ValueError(f"this ladder trajectory ends at {self.steps[-1][5]:.3f} bits per element; "
                         f"{bits_per_element!r} is below its floor")

    def save(self, path, **extra) -> Path:
        obj = {"format": FORMAT, "model": self.model, "fingerprint": self.fingerprint,
               "geometry": list(self.geometry), "layout": self.layout, "meta": self.meta,
               "step_fields": ["layer", "head", "kind", "segment", "bits", "bits_per_element", "kl"],
               "steps": self.steps, **extra}
        write_json(path, obj, indent=None)
        return Path(path)

    @classmethod
    def load(cls, path) -> LadderTrajectory:
        obj = json.loads(Path(path).read_text())
        if obj.get("format") != FORMAT:
            raise ValueError(f"{path} is not a ladder trajectory ({FORMAT})")
        return cls(obj["model"], obj["fingerprint"], tuple(obj["geometry"]), obj["layout"],
                   [tuple(s) for s in obj["steps"]], obj.get("meta", {}))


def search(model, projections, blocks: torch.Tensor, segment: int = 8, group: int = 32, scale_bytes: int = 2,
           offsets=None, batch_size: int = 4, stop_bits: float = 0.0, probe_bits: int = 4,
           progress: bool = False) -> LadderTrajectory:
    """Algorithm 1 over bytes on calibration ``blocks`` (N, T) (optional position ``offsets``): every step
    lowers the segment with the smallest estimated KL increase per byte saved, down to the floor (or to
    ``stop_bits`` per element). Sensitivities: per layer and kind, the exact KL of its heads at the probe layout
    (first half of the features at ``probe_bits``, the rest dropped) over their summed output error."""
    start_time = time.time()
    proj = resolve_projections(projections, model)
    geom = KVGeometry.of(model)
    layout = {"segment": segment, "group": group, "full_bits": dtype_bits(model), "scale_bytes": scale_bytes}
    errors = HeadErrors(model, proj, blocks, offsets, batch_size)
    raw, base_kl = probe_sensitivities(model, proj, errors, blocks, offsets, batch_size, probe_bits, layout,
                                       progress)
    positive = [s for s in raw.values() if s > 0]
    sens = {k: max(s, min(positive) if positive else 1.0) for k, s in raw.items()}
    steps = greedy_steps(geom, errors, sens, base_kl, layout, stop_bits, progress)
    meta = {"calibration_tokens": int(blocks.numel()), "base_kl": base_kl, "probe_bits": probe_bits,
            "sensitivity": [[round(raw[(l, c)], 6) for c in (0, 1)] for l in range(geom.layers)],
            "seconds": round(time.time() - start_time, 1)}
    return LadderTrajectory(getattr(model, "mkv_name", "?"), proj.fingerprint(),
                            (geom.layers, geom.kv_heads, geom.head_dim), layout, steps, meta)


def probe_sensitivities(model, proj, errors: HeadErrors, blocks, offsets, batch_size: int, probe_bits: int,
                        layout: dict, progress: bool) -> tuple[dict, float]:
    """({(layer, kind): exact KL increase per unit of summed output error, the layer's heads of that kind at the
    probe layout}, KL of the uncompressed ladder)."""
    from .core.env import progress_bar as tqdm
    from .core.scoring import KLScorer

    geom, full = KVGeometry.of(model), layout["full_bits"]
    segment, group, scale_bytes = layout["segment"], layout["group"], layout["scale_bytes"]
    lad = Ladder.uniform(geom, full, None, None, segment, group, scale_bytes)
    probe = Ladder.uniform(geom, full, probe_bits, geom.head_dim // 2, segment, group, scale_bytes)
    raw = {}
    with attach(model, proj, lad) as hook:
        scorer = KLScorer(model, hook, blocks, batch_size, 0.0, offsets)
        scorer.set_state(lad.bits)
        for l in tqdm(range(geom.layers), desc="ladder: sensitivities", disable=not progress):
            for c in (0, 1):
                trial = lad.bits.clone()
                trial[l, :, c] = probe.bits[l, :, c]
                err = sum(errors.error((l, g, c), probe.feature_bits()[l, g, c], full, group, scale_bytes)
                          for g in range(geom.kv_heads))
                raw[(l, c)] = (scorer.score(trial, l) - scorer.kl) / err if err > 0 else 0.0
        return raw, scorer.kl


def greedy_steps(geom: KVGeometry, errors: HeadErrors, sens: dict, base_kl: float, layout: dict, stop_bits: float,
                 progress: bool) -> list:
    """The trajectory's steps from every segment at the model's dtype: each lowers the segment whose move costs
    the least estimated KL (sensitivity x output error) per byte saved, until no move is left or the bits per
    element reach ``stop_bits``."""
    from .core.env import progress_bar as tqdm

    full, segment, group, scale_bytes = (layout[k] for k in ("full_bits", "segment", "group", "scale_bytes"))
    bits = Ladder.uniform(geom, full, None, None, segment, group, scale_bytes).bits.clone()
    now_bytes = entry_bytes(bits, segment, group, scale_bytes)
    err_now = {e: 0.0 for e in geom.entries()}
    candidates: dict = {}

    def rescore(e):
        for key in [k for k in candidates if k[:3] == e]:
            del candidates[key]
        for s, w in moves(bits[e].tolist(), full).items():
            trial = bits[e].clone()
            trial[s] = w
            new_bytes = float(entry_bytes(trial, segment, group, scale_bytes))
            err = errors.error(e, trial.repeat_interleave(segment), full, group, scale_bytes)
            harm = sens[(e[0], e[2])] * (err - err_now[e])
            candidates[(*e, s)] = (harm / (float(now_bytes[e]) - new_bytes), w, err, new_bytes, harm)

    for e in tqdm(geom.entries(), desc="ladder: first candidates", disable=not progress):
        rescore(e)
    steps, kl, elements = [], base_kl, geom.layers * geom.kv_heads * 2 * geom.head_dim
    total = float(now_bytes.sum())
    with tqdm(desc="ladder: greedy steps", disable=not progress) as bar:
        while candidates:
            key = min(candidates, key=lambda k: (candidates[k][0], k))
            _, w, err, new_bytes, harm = candidates[key]
            e = key[:3]
            bits[e + (key[3],)] = w
            total += new_bytes - float(now_bytes[e])
            now_bytes[e] = new_bytes
            err_now[e] = err
            kl += harm
            steps.append([*key, int(w), round(total * 8 / elements, 5), round(kl, 6)])
            bar.update(1)
            if total * 8 / elements <= stop_bits:
                break
            rescore(e)
    return steps


def calibration_kl(model, projections, ladder: Ladder, blocks: torch.Tensor, offsets=None,
                   batch_size: int = 4) -> float:
    """Exact KL(base || ladder) per token on ``blocks`` (the simulated path)."""
    from .core.scoring import KLScorer

    with attach(model, projections, ladder) as hook:
        return KLScorer(model, hook, blocks, batch_size, 0.0, offsets).set_state(ladder.bits)

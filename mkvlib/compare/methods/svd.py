"""``svd``: Palu-style low-rank keys and values from the SVD of the weights W_k, W_v (no calibration text).

Per layer and KV head, W (d, hidden) is that head's rows of ``k_proj`` (or ``v_proj``, the bias as one more
column) and W = U S V^T; the cache stores per token the rank-r latents h_K = U_K[:, :r]^T k_pre and
h_V = U_V[:, :r]^T v. Keys get RoPE after the projection, and a position-dependent rotation does not commute
with a fixed basis, so, as in Palu, the latent is taken *pre-RoPE*: the layer undoes the rotation of the
post-RoPE keys our hook sees (exact up to rounding) and re-applies it to the keys reconstructed at every
attention, k = RoPE(U_K[:, :r] h_K). Values carry no RoPE: their latent is an orthogonal projection as in
MatryoshkaKV.

Calibration-free, the basis treats every input direction as equally likely, so on the embedded model cutting the
values costs far more than cutting the keys, and far more than ``pca`` at the same rank.

Bytes per token: sum over (l, g) of (r_K + r_V) x element size; fixed: the truncated bases. Ranks are uniform,
round(b x d). Refused: models with k_norm, RoPE over part of the head, or sliding-window layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...core.attention import attention_modules
from ...core.cache import CompressedCache, CompressedLayer, same_width
from ...core.geometry import KVGeometry
from ...core.projections import Projections
from ...core.ranks import resolve_ranks
from ..base import ByteReport, KVMethod, Setting, register
from ..layers import FEATURE_BUDGETS, bench_layers, cache_runner, check_fractions, element_size, sliding_reason
from .projection import projection_bytes


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def weight_bases(model) -> Projections:
    """Left singular vectors (L, G, d, d) of each KV head's [W | b] for keys and for values, columns by
    decreasing singular value; zero value means."""
    geom = KVGeometry.of(model)
    keys, values = [], []
    for module in attention_modules(model):
        per_layer = []
        for linear in (module.k_proj, module.v_proj):
            w = linear.weight.detach().double()                                     # (G d, hidden)
            if linear.bias is not None:
                w = torch.cat([w, linear.bias.detach().double()[:, None]], 1)
            w = w.view(geom.kv_heads, geom.head_dim, -1)                            # (G, d, hidden [+1])
            per_layer.append(torch.linalg.svd(w, full_matrices=True)[0].float())    # (G, d, d)
        keys.append(per_layer[0])
        values.append(per_layer[1])
    return Projections(torch.stack(keys), torch.stack(values),
                       torch.zeros(geom.layers, geom.kv_heads, geom.head_dim), meta={"kind": "svd-of-weights"})


class RopeTable:
    """cos and sin (S, d) of the model's rotary embedding at positions 0..S-1, grown on demand, shared by layers."""

    def __init__(self, rotary):
        self.rotary, self.cos, self.sin = rotary, None, None

    def __call__(self, start: int, end: int, like: torch.Tensor):
        if self.cos is None or self.cos.shape[0] < end or self.cos.device != like.device:
            positions = torch.arange(max(end, 2 * (0 if self.cos is None else self.cos.shape[0])),
                                     device=like.device)[None]
            cos, sin = self.rotary(torch.zeros(1, dtype=torch.float32, device=like.device), positions)
            self.cos, self.sin = cos[0].float(), sin[0].float()
        return self.cos[start:end], self.sin[start:end]


class LatentKeyLayer(CompressedLayer):
    """A compressed layer storing pre-RoPE key latents: it un-rotates incoming keys (B, G, T, d) before the
    projection and re-applies RoPE to the reconstructed keys (B, n, S, d) in attention."""

    def __init__(self, rope: RopeTable, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rope = rope

    def update(self, key_states, value_states, *args, **kwargs):
        T = key_states.shape[2]
        cos, sin = self.rope(self.length, self.length + T, key_states)
        k = key_states.float()
        pre = (k * cos - rotate_half(k) * sin).to(key_states.dtype)                 # R(p)^T k_post
        return super().update(pre, value_states)

    def _attend_group(self, i, q, mask, scaling):
        """q (B, n, H/G, T, d) of group i -> head outputs (B, n, H/G, T, d)."""
        uk, uv, mu = self.bases[i]
        latent_k, latent_v = self.reduced(i)                                        # (B, n, S, r_K), (B, n, S, r_V)
        S = latent_k.shape[2]
        cos, sin = self.rope(0, S, latent_k)
        pre = torch.einsum("bnsr,ndr->bnsd", latent_k.float(), uk.float())          # (B, n, S, d)
        keys = (pre * cos + rotate_half(pre) * sin).to(q.dtype)
        B, n, per_kv, T, d = q.shape
        causal = mask is None and T > 1
        if causal and T != S:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
            causal = False
        qf, vf = q.reshape(B, n * per_kv, T, d), latent_v
        if T > 1:                        # prefill: one width for the fused kernel; decode unpadded, as in the cache
            qf, keys, vf = same_width(qf, keys, vf)
        o = F.scaled_dot_product_attention(qf, keys, vf, attn_mask=mask, is_causal=causal, scale=scaling,
                                           enable_gqa=per_kv > 1)[..., :latent_v.shape[-1]]
        o = o.reshape(B, n, per_kv, T, -1)                                          # (B, n, H/G, T, r_V)
        return torch.einsum("bnhtr,ndr->bnhtd", o, uv) + mu[:, None, None]


class LatentCache(CompressedCache):
    """A :class:`CompressedCache` of :class:`LatentKeyLayer` s (keys stored as pre-RoPE latents)."""

    def __init__(self, model, projections: Projections, ranks, reserve: int = 0):
        super().__init__(model, projections, ranks, reserve)
        self.layers = bench_layers(self, projections, reserve, LatentKeyLayer, RopeTable(model.model.rotary_emb))


@register
@dataclass(frozen=True)
class SVD(KVMethod):
    """Options: ``budgets`` (feature budgets in (0, 1], the settings; uniform ranks round(b x d))."""
    budgets: tuple = FEATURE_BUDGETS
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    name, axis = "svd", "feature"

    def __post_init__(self):
        object.__setattr__(self, "budgets", check_fractions("budgets", self.budgets))

    def bases(self, model) -> Projections:
        if id(model) not in self._memo:
            self._memo[id(model)] = weight_bases(model)
        return self._memo[id(model)]

    def unsupported(self, model) -> str | None:
        reason = sliding_reason(model, self.name)
        if reason:
            return reason
        module = attention_modules(model)[0]
        if getattr(module, "k_norm", None) is not None:
            return "svd: this model normalises keys after k_proj (k_norm), so the SVD of W_k does not span its keys"
        rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
        if rotary is None:
            return "svd needs the model's rotary embedding (model.model.rotary_emb) to store pre-RoPE key latents"
        cos, _ = rotary(torch.zeros(1), torch.arange(2)[None])
        d = KVGeometry.of(model).head_dim
        if cos.shape[-1] != d:
            return f"svd: RoPE covers {cos.shape[-1]} of the {d} key dimensions (partial rotary is not handled)"
        return None

    def settings(self, model) -> list[Setting]:
        return [Setting(self.name, f"{100 * b:g}%", (("budget", b),)) for b in self.budgets]

    def bytes(self, model, setting: Setting, context: int) -> ByteReport:
        geom, element = KVGeometry.of(model), element_size(model)
        ranks = resolve_ranks(float(setting.get("budget")), geom)
        per_token = int(ranks.sum()) * element
        return ByteReport.of(model, per_token, projection_bytes(ranks, geom.head_dim, element), context)

    def runner(self, model, setting: Setting):
        self.check_supported(model)
        bases, budget = self.bases(model), float(setting.get("budget"))
        return cache_runner(model, lambda batch, tokens: LatentCache(model, bases, budget, reserve=tokens))

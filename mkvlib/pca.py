"""PCA bases from KV statistics: eigenvectors of each (layer, KV head) moment matrix, sorted descending.

Introduced in notebook 01.
"""
from __future__ import annotations

import datetime as _dt

import torch

from .projections import Projections
from .stats import KVStats


def eigh_descending(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (..., d) descending and orthonormal eigenvectors (..., d, d) as columns, in float64.

    Signs are fixed so that each column's largest-magnitude entry is positive (deterministic bases).
    """
    evals, evecs = torch.linalg.eigh(matrix.double())
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    idx = evecs.abs().argmax(dim=-2, keepdim=True)
    signs = torch.sign(torch.gather(evecs, -2, idx))
    signs[signs == 0] = 1
    return evals.clamp_min(0), evecs * signs


def energy_rank(spectrum: torch.Tensor, fraction: float) -> torch.Tensor:
    """Smallest r whose top-r eigenvalues hold ``fraction`` of the energy, for a spectrum (..., d)."""
    cum = spectrum.cumsum(-1) / spectrum.sum(-1, keepdim=True).clamp_min(1e-30)
    return (cum < fraction - 1e-12).sum(-1) + 1


def fit_pca(stats: KVStats, center_keys: bool = True, center_values: bool = False, model_name: str | None = None,
            key_source: str = "keys") -> Projections:
    """PCA projections from :class:`KVStats`.

    Keys (default ``center_keys=True``): eigenbasis of the covariance of post-RoPE keys. A key mean shifts every
    score of a query by the same amount, which softmax ignores, so the mean direction costs no rank.
    Values (default ``center_values=False``): eigenbasis of E[v v^T] with a zero mean. Centring values
    (``center_values=True``, mean added back after attention) minimises the plain reconstruction error, but
    measured worse on SmolLM2: attention-sink tokens have values near zero and take most of the attention
    weight; uncentred they stay exactly zero after projection, centred they become (I - P) mu.
    """
    if key_source not in ("keys", "keys_pre_rope"):
        raise ValueError("key_source must be 'keys' (post-RoPE, what the cache stores) or 'keys_pre_rope'")
    kstats, vstats = stats[key_source], stats.values
    kmat = kstats.covariance() if center_keys else kstats.second_moment()
    vmat = vstats.covariance() if center_values else vstats.second_moment()
    k_eval, k_vec = eigh_descending(kmat)
    v_eval, v_vec = eigh_descending(vmat)
    vmean = vstats.mean() if center_values else torch.zeros_like(vstats.mean())
    meta = {
        "model": model_name or stats.info.get("model"),
        "geometry": stats.geometry.as_dict(),
        "kind": "pca",
        "key_source": key_source, "center_keys": center_keys, "center_values": center_values,
        "calibration": {k: v for k, v in stats.info.items() if k != "model"},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return Projections(k_vec.float(), v_vec.float(), vmean.float(), k_eval.float(), v_eval.float(), meta)


def spectra(stats: KVStats, center_keys: bool = True, center_values: bool = False) -> dict[str, torch.Tensor]:
    """Eigenvalue spectra (L, G, d), descending, of post-RoPE keys, pre-RoPE keys and values."""
    out = {}
    for kind, centre in (("keys", center_keys), ("keys_pre_rope", center_keys), ("values", center_values)):
        moments = stats[kind]
        out[kind] = eigh_descending(moments.covariance() if centre else moments.second_moment())[0]
    return out

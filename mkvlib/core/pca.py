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


# --- the query-aware key basis -------------------------------------------------------------------------

KEY_BASES = ("query", "key-range", "whitened", "sym")


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of PSD matrices (..., d, d), float64 (negative round-off eigenvalues clipped)."""
    evals, evecs = torch.linalg.eigh(matrix.double())
    return (evecs * evals.clamp_min(0).sqrt()[..., None, :]) @ evecs.transpose(-1, -2)


def _ordered_qr(columns: torch.Tensor) -> torch.Tensor:
    """Orthonormalise columns in order (every prefix spans the same space as the columns' prefix), signs so that
    each new column points along the column it came from."""
    q, r = torch.linalg.qr(columns)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs[signs == 0] = 1
    return q * signs[..., None, :]


def score_moments(stats: KVStats) -> tuple[torch.Tensor, torch.Tensor]:
    """(S_q, C_k), each (L, G, d, d) float64: the second moment of post-RoPE queries summed over each KV head's
    query heads, and the covariance of its post-RoPE keys."""
    return stats["queries"].second_moment(), stats.keys.covariance()


def score_error(stats: KVStats, keys: torch.Tensor, rank: int) -> torch.Tensor:
    """Expected squared score error per (layer, KV head), (L, G): tr(S_q (I - P) C_k (I - P)) with P the rank-r
    prefix projector of the key bases ``keys`` (L, G, d, d). This is E[(q^T (I - P)(k - mu_k))^2] for queries
    independent of keys; the key mean shifts all scores of a query equally, which softmax ignores."""
    sq, ck = score_moments(stats)
    u = keys.double()[..., :rank]
    q = torch.eye(u.shape[-2], dtype=torch.float64) - u @ u.transpose(-1, -2)
    return torch.einsum("lgij,lgjk,lgkm,lgmi->lg", q, sq, q, ck)


def query_aware_keys(sq: torch.Tensor, ck: torch.Tensor, method: str = "query") -> tuple[torch.Tensor, torch.Tensor]:
    """Key bases (..., d, d) and their spectra (..., d) that keep q.k scores given S_q and C_k; see
    :func:`query_aware_projections` for the derivation and the choice of ``method``."""
    if method not in KEY_BASES:
        raise ValueError(f"unknown query-aware key basis {method!r}; choose from {KEY_BASES}")
    sq, ck = sq.double(), ck.double()
    if method == "sym":
        evals, evecs = eigh_descending((sq @ ck + ck @ sq) / 2)
        return evecs, evals
    if method == "query":
        half = _sqrtm(sq)
        evals, u = eigh_descending(half @ ck @ half)
        return _ordered_qr(half @ u), evals
    half = _sqrtm(ck)
    evals, w = eigh_descending(half @ sq @ half)
    return (w if method == "whitened" else _ordered_qr(half @ w)), evals


def query_aware_projections(stats: KVStats, method: str = "query", model_name: str | None = None,
                            center_values: bool = False) -> Projections:
    """Projections whose key bases keep the attention scores q.k best, given query and key second moments.

    Needs ``stats`` collected with ``queries=True``. Values keep PCA (exactly as :func:`fit_pca`).

    The derivation. A rank-r orthogonal projector P changes the score of query q and key k by
    e = q^T (I - P) k; the part q^T (I - P) mu_k is the same for every key of a query, which softmax ignores, so
    with keys and queries independent E[e^2] = tr(S_q Q C_k Q), Q = I - P, where S_q = E[q q^T] summed over the
    query heads that share the KV head and C_k the key covariance (:func:`score_error`). PCA minimises it only for
    S_q = I. Dropping the constraint that the rank-r map M be an orthogonal projector,
    E[(q^T (I - M) k)^2] = ||S_q^1/2 (I - M) C_k^1/2||_F^2, whose minimum (Eckart-Young) truncates the SVD
    S_q^1/2 C_k^1/2 = U S W^T: M = S_q^-1/2 U_r U_r^T S_q^1/2 = C_k^1/2 W_r W_r^T C_k^-1/2, with U the eigenvectors
    of S_q^1/2 C_k S_q^1/2 and W those of C_k^1/2 S_q C_k^1/2. The cache needs an orthogonal P
    (q^T P k = (P q)^T (P k)), and four bases come out of this (``method``):

    - ``"whitened"``: W itself, the eigenvectors of C_k^1/2 S_q C_k^1/2. They are coordinates of whitened keys;
      as a key basis they are right only when S_q and C_k commute.
    - ``"sym"``: the eigenvectors of sym(S_q C_k), from the expansion
      tr(S_q Q C_k Q) = tr(S_q C_k) - 2 tr(P sym(S_q C_k)) + tr(P S_q P C_k) without its last term. That term is
      not small, and sym(S_q C_k) is indefinite, so the order of its eigenvectors says little.
    - ``"key-range"``: C_k^1/2 W orthonormalised in order: the column space of the optimal M (where it puts keys).
    - ``"query"`` (default): S_q^1/2 U orthonormalised in order: the row space of the optimal M, the directions
      in which it reads the query. Every prefix of r columns spans S_q^1/2 U_r, so the basis is Matryoshka-ordered.

    Measured on SmolLM2-135M (16k tokens of C4 + Wikipedia to fit; held out: tinyshakespeare and unseen C4;
    causal score error with each query's mean over its keys removed, relative to the score variance, mean over
    every third layer and all KV heads), as a fraction of PCA's error at rank 16 / 32 of 64:
    ``query`` 0.56 / 0.45 (Shakespeare), 0.53 / 0.43 (C4), lower than PCA for every head; ``whitened``
    0.82 / 0.81, 0.79 / 0.80; ``key-range`` 0.83 / 0.83, 0.80 / 0.81; ``sym`` 1.56 / 4.29, 1.41 / 4.37 (worse
    than PCA). ``query`` wins because the scores depend on a key only through the directions queries look along:
    a direction in which keys vary but queries never point costs no score, and PCA spends rank on it. A numerical
    minimisation of tr(S_q Q C_k Q) over subspaces improves on ``query`` by only about 10% at ranks 16 and 32.
    The spectrum stored is that of the matrix whose eigenvectors were taken (score energy per direction).
    """
    sq, ck = score_moments(stats)
    keys, spectrum = query_aware_keys(sq, ck, method)
    base = fit_pca(stats, center_values=center_values, model_name=model_name)
    meta = dict(base.meta, kind="query-aware", key_basis=method)
    meta.pop("key_source", None)
    return Projections(keys.float(), base.values, base.value_mean, spectrum.float(), base.value_spectrum, meta)

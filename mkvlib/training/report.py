"""Comparing projections after training: targets on quality curves, the Matryoshka check, loss curves.

Introduced in notebook 02.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..projections import Projections

TARGETS = {"ppl_ratio@50%": 1.15, "kl_vs_pca@50%": 1 / 3, "ppl_ratio@37.5%": 1.35}


def at_budget(rows: list, budget: float) -> dict:
    """The row of a curve at ``budget``."""
    for r in rows:
        if abs(r["budget"] - budget) < 1e-6:
            return r
    raise KeyError(f"no row at budget {budget}; have {[r['budget'] for r in rows]}")


def targets(curves: dict, trained: str = "trained", pca: str = "PCA") -> dict:
    """The issue's targets measured on ``curves``: perplexity ratios at 50% / 37.5%, KL at 50% relative to PCA."""
    t, p = curves[trained], curves[pca]
    out = {"ppl_ratio@50%": at_budget(t, 0.5)["perplexity_ratio"],
           "kl_vs_pca@50%": at_budget(t, 0.5)["kl_to_base"] / at_budget(p, 0.5)["kl_to_base"]}
    try:
        out["ppl_ratio@37.5%"] = at_budget(t, 0.375)["perplexity_ratio"]
    except KeyError:
        pass
    return {k: {"measured": round(v, 4), "target": round(TARGETS[k], 4), "met": v <= TARGETS[k]}
            for k, v in out.items()}


def reversed_columns(proj: Projections) -> Projections:
    """The same bases with their columns in reverse order: keeping the first r columns now keeps the r least
    important ones. Evaluating both shows that the order carries the importance (the Matryoshka property)."""
    return Projections(proj.keys.flip(-1), proj.values.flip(-1), proj.value_mean, None, None,
                       dict(proj.meta, kind=f"{proj.meta.get('kind', '?')}-reversed"))


def load_record(projections_path) -> dict | None:
    """The JSON training record beside a trained .safetensors file, or None."""
    path = Path(projections_path).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def loss_curves(history: list, evals: list | None = None, smooth: int = 5, title: str = ""):
    """Training loss parts (KD, LM) per step, smoothed over ``smooth`` steps, and periodic eval KL if given."""
    import matplotlib.pyplot as plt

    n = 2 if evals else 1
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 3.4), squeeze=False)
    ax = axes[0][0]
    steps = np.array([r["step"] for r in history])
    for key in ("kd", "lm"):
        if key in history[0]:
            y = np.array([r[key] for r in history])
            k = max(1, min(smooth, len(y)))
            ax.plot(steps, y, alpha=0.3)
            ax.plot(steps[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), label=f"{key} (mean of {k})",
                    color=ax.lines[-1].get_color())
    ax.set(xlabel="step", ylabel="loss", title="training loss at sampled ranks")
    ax.legend()
    ax.grid(alpha=0.3)
    if evals:
        ax = axes[0][1]
        for i, budget in enumerate(r["budget"] for r in evals[0]["rows"]):
            ax.plot([e["step"] for e in evals], [e["rows"][i]["kl_to_base"] for e in evals], marker="o",
                    label=f"{budget:.0%}")
        ax.set(xlabel="step", ylabel="KL(base || compressed)", title="held-out KL")
        ax.legend(title="budget")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

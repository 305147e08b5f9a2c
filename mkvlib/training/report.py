"""Comparing projections after training: targets on quality curves, the Matryoshka check, loss curves, and the
training routes of notebook 02 against their CPU time.

``data/results/ood_routes.json`` (read with :func:`mkvlib.results_store.load_result`) holds ``routes``, each
{route, group (one of :data:`GROUPS`), cpu_minutes, tokens, ood_kl_50, ood_ppl_50, in_domain_kl_50, command}::

    routes = load_result("ood_routes.json")["routes"]
    routes_figure(routes, reference_lines(routes))        # KL at 50% against CPU-minutes, one point per route

Introduced in notebook 02.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from ..core.projections import Projections

GROUPS = ("start", "objective", "combined", "reference")
OBJECTIVE = re.compile(r"^\s*KD\s*:\s*LM\s*=\s*([0-9.]+)\s*:\s*([0-9.]+)\s*$")
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

    from ..plots import finish_figure

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
    return finish_figure(fig, title)


# --- training routes ---------------------------------------------------------------------------------------------
def objective_weights(label: str) -> tuple[float, float]:
    """(kd_weight, lm_weight) of an objective route's label: 'KD only' -> (1, 0), 'KD : LM = 1 : 3' -> (1, 3)."""
    if label.strip().lower() == "kd only":
        return 1.0, 0.0
    match = OBJECTIVE.match(label)
    if not match:
        raise ValueError(f"not an objective label: {label!r} (expected 'KD only' or 'KD : LM = a : b')")
    return float(match.group(1)), float(match.group(2))


def same_ratio(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when the loss weights (kd, lm) ``a`` and ``b`` weigh KD against LM the same (their scale aside)."""
    return abs(a[0] * b[1] - a[1] * b[0]) <= 1e-9 * max(1.0, *a, *b)


def routes_of(record: dict, group: str) -> list[dict]:
    """The routes of one group (see :data:`GROUPS`), in file order."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, not {group!r}")
    return [r for r in record["routes"] if r["group"] == group]


def routes_figure(routes: list, lines: dict | None = None, title: str = "Training routes: out of domain at 50%"):
    """Out-of-domain KL at a 50% budget against CPU-minutes, one point per route (its own colour, the marker of its
    group, named in the legend); ``lines`` {label: KL} are drawn as horizontal references (e.g. a third of PCA's)."""
    import textwrap

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.4))
    markers = {"start": "o", "objective": "s", "combined": "*", "reference": "D"}
    for i, r in enumerate(routes):
        ax.scatter(max(r["cpu_minutes"], 1e-2), r["ood_kl_50"], color=plt.get_cmap("tab10")(i % 10), zorder=3,
                   marker=markers.get(r["group"], "o"), s=120 if r["group"] == "combined" else 40,
                   label=textwrap.fill(f"{r['route']} ({r['group']})", 48))
    for i, (label, value) in enumerate((lines or {}).items()):
        ax.axhline(value, ls="--" if i == 0 else ":", lw=1, color="0.4", label=label)
    ax.set_xscale("log")
    ax.set(xlabel="CPU-minutes (log scale)", ylabel="out-of-domain KL at a 50% KV budget", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="route (group)", title_fontsize=8)
    fig.tight_layout()
    return fig


def reference_lines(routes: list) -> dict:
    """{label: KL} for :func:`routes_figure` from the routes themselves: a third of PCA's KL (the route named
    'PCA...') and the KL of the reference route (group 'reference': KD : LM = 3 : 1 on WikiText-2 and Wikipedia),
    where present."""
    lines = {}
    pca = [r for r in routes if r["route"].startswith("PCA")]
    if pca:
        lines["a third of PCA's KL"] = pca[0]["ood_kl_50"] / 3
    reference = [r for r in routes if r["group"] == "reference"]
    if reference:
        lines["KD : LM = 3 : 1 on WikiText-2 (reference)"] = reference[0]["ood_kl_50"]
    return lines


class CpuClock:
    """CPU time of this process (all threads) over a ``with`` block: ``.minutes`` and ``.seconds`` afterwards."""

    def __enter__(self):
        self._start, self.seconds = time.process_time(), None
        return self

    def __exit__(self, *exc):
        self.seconds = time.process_time() - self._start

    @property
    def minutes(self) -> float:
        if self.seconds is None:
            raise RuntimeError("the clock is still running: read it after the with block")
        return self.seconds / 60

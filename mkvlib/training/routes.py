"""Reading the out-of-domain results of notebook 02: the suite's gap, the training routes and their CPU time.

Two committed files (written by the measurements recorded inside them, see :mod:`mkvlib.docs.ood`):

- ``data/results/ood_suite.json``: rows of :func:`mkvlib.suite.compare_suite` per method, domain and budget;
  ``domain`` is a held-out domain, ``"mean"`` (mean over them) or ``"in-domain"`` (text like the training text);
- ``data/results/ood_routes.json``: ``routes``, each {route, group (one of :data:`GROUPS`), cpu_minutes, tokens,
  ood_kl_50, ood_ppl_50, in_domain_kl_50, command}.

    suite = load_result("ood_suite.json")                 # None, with a note, until the file exists
    gap_rows(suite, 0.5)                                  # per method: KL and perplexity ratio in and out of domain
    routes = load_result("ood_routes.json")["routes"]
    routes_figure(routes, reference_lines(routes))        # KL at 50% against CPU-minutes, one point per route

Introduced in notebook 02.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..runtime import shipped_data_dir

GROUPS = ("start", "objective", "combined", "reference")
OBJECTIVE = re.compile(r"^\s*KD\s*:\s*LM\s*=\s*([0-9.]+)\s*:\s*([0-9.]+)\s*$")


def results_path(name: str) -> Path:
    """data/results/<name> of the project."""
    return shipped_data_dir() / "results" / name


def load_result(name: str) -> dict | None:
    """The JSON file data/results/<name>, or None (with one line on stdout saying so) when it is not there yet."""
    path = results_path(name)
    if not path.is_file():
        print(f"{path.relative_to(shipped_data_dir().parent)} is not there yet: the cells that read it are skipped")
        return None
    return json.loads(path.read_text())


def suite_cell(rows: list, method: str, budget: float, domain: str = "mean") -> dict:
    """The suite row of ``method`` at target ``budget`` on ``domain`` ('mean', 'in-domain' or a domain name)."""
    for r in rows:
        if r["method"] == method and r["domain"] == domain and abs(r.get("target_budget", r["budget"]) - budget) < 1e-9:
            return r
    have = sorted({(r["method"], r["domain"]) for r in rows})
    raise KeyError(f"no suite row for {method!r} on {domain!r} at budget {budget}; rows hold {have}")


def gap_rows(record: dict, budget: float = 0.5) -> list[dict]:
    """Per method of a suite record: KL and perplexity ratio out of domain (the mean row) and in domain at
    ``budget``, and ``kl_gap`` = out-of-domain KL / in-domain KL (None without an in-domain row)."""
    out = []
    for method in (m["label"] for m in record["methods"]):
        ood = suite_cell(record["rows"], method, budget)
        try:
            ind = suite_cell(record["rows"], method, budget, "in-domain")
        except KeyError:
            ind = None
        out.append({"method": method, "ood_kl": ood["kl_to_base"], "ood_ppl_ratio": ood["perplexity_ratio"],
                    "in_domain_kl": ind and ind["kl_to_base"], "in_domain_ppl_ratio": ind and ind["perplexity_ratio"],
                    "kl_gap": ind and ood["kl_to_base"] / ind["kl_to_base"]})
    return out


def suite_curves(rows: list, domain: str = "mean") -> dict:
    """{method: rows of ``domain`` ordered by falling budget}: curves for :func:`mkvlib.plots.quality_vs_budget`."""
    curves: dict = {}
    for r in rows:
        if r["domain"] == domain:
            curves.setdefault(r["method"], []).append(r)
    return {m: sorted(rs, key=lambda r: -r["budget"]) for m, rs in curves.items()}


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


__all__ = ["CpuClock", "GROUPS", "gap_rows", "load_result", "objective_weights", "reference_lines",
           "results_path", "routes_figure", "routes_of", "same_ratio", "suite_cell", "suite_curves"]

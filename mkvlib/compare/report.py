"""Reading a comparison summary (``mkv compare``'s JSON): quality at a byte fraction, where a method breaks, the
quality-against-bytes figure of notebook 07.

    result = load_result("data/results/compare.json")
    quality(result, "streaming", "passkey", 1024, 0.25)         # accuracy relative to the uncompressed model
    breaks_at(result, "streaming", "niah", 1024)                 # largest fraction below 90% of it, or None
    plot_quality_vs_bytes(result, 1024)
"""
from __future__ import annotations

from .run import load_result  # noqa: F401  (the reader, re-exported for notebooks)

AXIS_STYLE = {"none": "-", "feature": "-", "token": ":", "bits": "-.", "composed": "--"}
BREAK = 0.9      # a method breaks a retrieval task below this fraction of the uncompressed accuracy


def rows_of(result: dict, method: str, task: str, length: int) -> list[dict]:
    """The measured rows of one method on one task and length, most bytes first."""
    rows = [r for r in result["rows"] if r["method"] == method and r["task"] == task and r["length"] == length
            and r.get("n")]
    return sorted(rows, key=lambda r: -r["fraction"])


def metric(row: dict) -> float | None:
    """KL to the uncompressed model (ppl), or accuracy relative to the uncompressed one (retrieval; None when the
    task is flagged: the model cannot do it)."""
    return row["kl"] if row["task"] == "ppl" else row.get("relative")


def quality(result: dict, method: str, task: str, length: int, requested: float) -> float | None:
    """:func:`metric` of ``method`` at the setting chosen for ``requested`` bytes (None: not measured)."""
    for r in rows_of(result, method, task, length):
        if requested in r["requested"]:
            return metric(r)
    return None


def breaks_at(result: dict, method: str, task: str, length: int, threshold: float = BREAK) -> float | None:
    """The largest stored byte fraction at which ``method`` answers ``task`` below ``threshold`` of the ceiling
    (None: it holds at every fraction measured, or the task is flagged)."""
    failing = [r["fraction"] for r in rows_of(result, method, task, length)
               if r.get("relative") is not None and r["relative"] < threshold]
    return max(failing) if failing else None


def mean_relative(result: dict, method: str, length: int, requested: float) -> float | None:
    """Mean relative accuracy over the retrieval tasks the model can do (flagged ones left out)."""
    values = [quality(result, method, t, length, requested) for t in result["tasks"] if t != "ppl"]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def plot_quality_vs_bytes(result: dict, length: int, title: str = ""):
    """One panel per task: KL (log scale, lower is better) or relative accuracy against the stored byte fraction,
    a line per method (line style by axis: solid feature, dotted token, dash-dot bits, dashed compositions,
    which are also marked with stars)."""
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    methods = [m for m in result["methods"] if any(rows_of(result, m, t, length) for t in tasks)]
    colors = plt.get_cmap("tab20")(range(len(methods)))
    for ax, task in zip(axes[0], tasks):
        for color, m in zip(colors, methods):
            rows = [r for r in rows_of(result, m, task, length) if metric(r) is not None]
            if not rows:
                continue
            axis = rows[0]["axis"]
            ys = [max(metric(r), 1e-4) if task == "ppl" else metric(r) for r in rows]
            ax.plot([r["fraction"] for r in rows], ys, AXIS_STYLE.get(axis, "-"), color=color, label=m,
                    marker="*" if rows[0].get("composed") else "o", markersize=9 if rows[0].get("composed") else 4)
        flagged = any(f["task"] == task and f["length"] == length for f in result["flagged"])
        ax.set_title(f"{task} at {length:,} tokens" + (" (flagged: model cannot do it)" if flagged else ""),
                     fontsize=9)
        ax.set_xlabel("bytes stored / uncompressed")
        if task == "ppl":
            ax.set_yscale("log")
            ax.set_ylabel("KL to uncompressed (lower is better)")
        else:
            ax.set_ylabel("accuracy / uncompressed accuracy")
            ax.axhline(BREAK, color="grey", lw=0.7, ls=":")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

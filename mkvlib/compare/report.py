"""Reading a comparison summary (``mkv compare``'s JSON): quality at a byte fraction, the quality-against-bytes
figure of notebook 07.

    result = load_result("data/results/compare.json")
    quality(result, "streaming", "passkey", 1024, 0.25)         # accuracy relative to the uncompressed model
    plot_quality_vs_bytes(result, 1024)
    print(table(result, 1024, requested=0.25))                  # one line per method, in words
"""
from __future__ import annotations

from pathlib import Path

from ..results_store import BASELINE
from .run import load_result  # noqa: F401  (the reader, re-exported for notebooks)

AXIS_STYLE = {"none": "-", "feature": "-", "token": ":", "bits": "-.", "composed": "--"}
NAMES = {"uncompressed": "uncompressed", "pca": "PCA", "matryoshka": "MatryoshkaKV", "svd": "SVD of the weights",
         "think": "ThinK (keys pruned)", "quant": "KIVI-style quantized", "streaming": "StreamingLLM",
         "snapkv": "SnapKV", "matryoshka+quant": "MatryoshkaKV, quantized",
         "streaming+matryoshka": "StreamingLLM on MatryoshkaKV"}
TASK_NAMES = {"ppl": "held-out text", "passkey": "passkey", "niah": "needles", "vt": "chain"}


def method_name(spec: str) -> str:
    """A method spec in words: 'matryoshka:allocation=uniform' -> 'MatryoshkaKV, uniform ranks'. Options that
    are settings (budgets, keep, bits) are left to the setting's label."""
    from .run import parse_method

    name, options = parse_method(spec)
    words = [NAMES.get(name, name)]
    if name in ("pca", "matryoshka"):
        default = "adaptive" if name == "matryoshka" else "uniform"
        words.append("searched ranks" if options.get("allocation", default) == "adaptive" else "uniform ranks")
    if "projections" in options:
        words.append(f"projections {Path(str(options['projections'])).stem}")
    if "trajectory" in options:
        words.append(f"ranks of {Path(str(options['trajectory'])).name.split('.trajectory')[0]}")
    if options.get("only", "both") != "both":
        words.append(f"{options['only']} only")
    if options.get("layers", "all") != "all":
        words.append(f"layers {options['layers']}")
    return ", ".join(words)


def row_at(result: dict, method: str, task: str, length: int, requested: float) -> dict | None:
    """The measured row of ``method`` on ``task`` at the setting chosen for ``requested`` bytes (None: none)."""
    return next((r for r in rows_of(result, method, task, length) if requested in r["requested"]), None)


def _columns(lines: list[list[str]], left: int = 1) -> str:
    """Rows of cells as aligned text: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in lines if i < len(row)) for i in range(max(map(len, lines)))]
    return "\n".join("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in lines)


def table(result: dict, length: int, requested: float | None = None, methods=None, guess: dict | None = None,
          extra: dict | None = None) -> str:
    """A text table in words: one line per measured (method, setting) at ``length`` (only the settings chosen for
    ``requested`` bytes, and the uncompressed one, when given; only ``methods`` when given): bytes stored, KL to
    the uncompressed model in nats, and the share of retrieval items answered. ``guess`` (task -> share) adds a
    line with the score of a model that copies a number of the context at random; ``extra`` is another summary
    whose rows at ``length`` are appended (a method measured apart)."""
    tasks = result["tasks"]
    lines = [["method", "setting", "bytes"] + ["KL (nats)" if t == "ppl" else TASK_NAMES.get(t, t) for t in tasks]]
    for source in [result] + ([extra] if extra else []):
        groups: dict = {}
        for r in source["rows"]:
            if source is extra:              # a method measured apart: all of its rows, no second ceiling
                keep = r["method"] != BASELINE
            else:
                keep = (requested is None or requested in r["requested"] or r["method"] == BASELINE) and \
                    (methods is None or r["method"] in methods or r["method"] == BASELINE)
            if keep and r["length"] == length and r.get("n"):
                groups.setdefault((r["method"], r["setting"]), {})[r["task"]] = r
        for (m, setting), by in groups.items():
            cells = ["-" if t not in by else f"{by[t]['kl']:.3f}" if t == "ppl" else f"{by[t]['accuracy']:.0%}"
                     for t in tasks]
            lines.append([method_name(m), setting, f"{next(iter(by.values()))['fraction']:.1%}"] + cells)
    if guess:
        lines.append(["copying a number (guessing)", "", ""] + ["" if t == "ppl" else f"{guess[t]:.0%}"
                                                                for t in tasks])
    return _columns(lines, left=2)


def pivot(result: dict, length: int, task: str) -> str:
    """One line per compressing method, one column per byte fraction asked for: KL in nats (ppl) or the share of
    items answered; where the setting chosen stores another fraction, that fraction follows in brackets."""
    fractions = sorted(result["fractions"], reverse=True)
    lines = [[f"{TASK_NAMES.get(task, task)} at {length:,} tokens"] + [f"{f:.1%} asked" for f in fractions]]
    for m in result["methods"]:
        rows = {f: row_at(result, m, task, length, f) for f in fractions}
        if m == BASELINE or not any(rows.values()):
            continue
        cells = []
        for f in fractions:
            r = rows.get(f)
            value = "-" if r is None else f"{r['kl']:.3f}" if task == "ppl" else f"{r['accuracy']:.0%}"
            stored = "" if r is None or abs(r["fraction"] - f) < 0.005 else f" ({r['fraction']:.1%})"
            cells.append(value + stored)
        lines.append([method_name(m)] + cells)
    return _columns(lines)


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
    row = row_at(result, method, task, length, requested)
    return None if row is None else metric(row)


def mean_relative(result: dict, method: str, length: int, requested: float) -> float | None:
    """Mean relative accuracy over the retrieval tasks the model can do (flagged ones left out)."""
    values = [quality(result, method, t, length, requested) for t in result["tasks"] if t != "ppl"]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


AXIS_WORDS = {"feature": "features", "token": "tokens", "bits": "bits", "composed": "two axes"}
TASK_TITLES = {"ppl": "held-out text", "passkey": "passkey retrieval", "niah": "needles in a haystack (multi-key)",
               "vt": "variable tracking (chain)"}


def plot_quality_vs_bytes(result: dict, length: int, title: str = "", guess: dict | None = None):
    """One panel per task against the stored byte fraction, a line per method named in words with its axis
    (line style by axis: solid features, dotted tokens, dash-dot bits, dashed with stars for compositions):
    KL to the uncompressed model in nats (log scale, lower is better), or the share of retrieval items answered,
    with the uncompressed model's share and, when ``guess`` (task -> share) is given, the share a model that
    copies a number of the context at random would get."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    from ..plots import finish_figure

    tasks = result["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    methods = [m for m in result["methods"] if m != BASELINE and any(rows_of(result, m, t, length) for t in tasks)]
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7] + ["#00429d", "#8c6d31"]
    colors = (palette * len(methods))[:len(methods)]            # no grey: the reference lines are black and grey
    for ax, task in zip(axes[0], tasks):
        for color, m in zip(colors, methods):
            rows = [r for r in rows_of(result, m, task, length) if (r["kl"] if task == "ppl" else
                                                                    r.get("accuracy")) is not None]
            if not rows:
                continue
            axis, composed = rows[0]["axis"], rows[0].get("composed")
            ys = [max(r["kl"], 1e-4) if task == "ppl" else r["accuracy"] for r in rows]
            ax.plot([r["fraction"] for r in rows], ys, AXIS_STYLE.get(axis, "-"), color=color,
                    label=f"{method_name(m)} ({AXIS_WORDS.get(axis, axis)})", marker="*" if composed else "o",
                    markersize=9 if composed else 4)
        ax.set_title(f"{TASK_TITLES.get(task, task)}, {length:,} tokens", fontsize=9)
        ax.set_xlabel("bytes stored (share of uncompressed)", fontsize=8)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        if task == "ppl":
            ax.set_yscale("log")
            ax.set_ylabel("KL to uncompressed (nats, lower is better)", fontsize=8)
        else:
            ceiling = result["ceiling"].get(task, {}).get(str(length))
            if ceiling is not None:
                ax.axhline(ceiling, color="black", lw=1, ls="--", label="uncompressed model")
            if guess and task in guess:
                ax.axhline(guess[task], color="black", lw=1, ls=(0, (1, 2)), label="copying a number at random")
            ax.set_ylabel("items answered", fontsize=8)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            ax.set_ylim(-0.05, 1.08)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return finish_figure(fig, title)

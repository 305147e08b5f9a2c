"""Tables and plots of accuracy against KV budget from a sweep's results CSV (see :mod:`.sweep`).

Accuracy is shown as a share of the uncompressed model's, per task and averaged over tasks (the paper's
"% of baseline average"), and also normalised above chance: (acc - chance) / (acc_100% - chance), which is
the fairer scale for a small model whose baseline is itself not far above chance. Introduced in notebook 04.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..results_store import BASELINE
from ..runtime import note
from .sweep import read_rows

# chance accuracy of each task (1 / number of choices; ARC-Easy has a few 3- and 5-choice items, ~0.25)
CHANCE = {"piqa": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25, "hellaswag": 0.25, "winogrande": 0.5,
          "openbookqa": 0.25, "tiny_mc": 0.4}
LABELS = {"pca-uniform": "PCA, uniform", "trained-uniform": "trained, uniform", "trained-adaptive":
          "MatryoshkaKV (trained, adaptive)", "pca-adaptive": "PCA, adaptive", BASELINE: "uncompressed"}
AVERAGE = "average"
# fewer items per task than this and the numbers only show that the pipeline runs (fast mode scores 4): their
# standard error is larger than the differences between methods, so they are labelled as a check, not a result
RESULT_ITEMS = 100


def pipeline_check(items) -> str | None:
    """'pipeline check (N items), not a result' when ``items`` (per task; the largest if several) is below
    :data:`RESULT_ITEMS`, else None: the label every table and figure of a handful of items carries."""
    n = int(max(items)) if hasattr(items, "__iter__") else int(items)
    return f"pipeline check ({n} items), not a result" if n < RESULT_ITEMS else None


def budget_label(budget) -> str:
    """A budget as every table and figure shows it, in % of the full cache: 0.375 -> '37.5%'."""
    return f"{100 * float(budget):g}%"


def caption(df: pd.DataFrame) -> str:
    """What a sweep's numbers are: a pipeline check (a handful of items) or a result on N items per task."""
    items = df.groupby("task")["items"].max()
    return pipeline_check(items) or "result: " + ", ".join(f"{t} {int(n)} items" for t, n in items.items())


def load_results(path, limit=None) -> pd.DataFrame:
    """The sweep CSV as a DataFrame with numeric budget, acc, acc_norm and items.

    A CSV may hold sweeps run at several item limits, or cells re-run after the projections changed. Ratios
    are only meaningful within one run, so this keeps one limit (``limit``; default the largest, a whole split
    counting as the largest) and, per (model, method, budget, task), the newest row: a method re-measured with
    newer projections supersedes its older rows (git and the docs keep those). A note says what was left out.
    """
    rows = read_rows(path)
    if not rows:
        raise FileNotFoundError(f"no sweep results in {path}: run `mkv lm-eval --sweep {path} --tasks ...` first")
    df = pd.DataFrame(rows)
    for col in ("budget", "kv_budget", "acc", "acc_norm", "items", "seconds"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    limits = sorted(df["limit"].astype(str).unique(), key=lambda x: float("inf") if x == "full" else float(x))
    chosen = limits[-1] if limit is None else str(limit)
    if chosen not in limits:
        raise ValueError(f"{path} holds no cells run with limit {limit!r}; it has limits {limits}")
    kept = df[df["limit"].astype(str) == chosen]
    kept = kept.sort_values("finished_at").drop_duplicates(["model", "method", "budget", "task"], keep="last")
    if len(kept) < len(df):
        note(f"{path}: using the {len(kept)} cells run with limit {chosen} (newest of each); left out "
             f"{len(df) - len(kept)} (other limits {[x for x in limits if x != chosen]}, or superseded)")
    return kept.reset_index(drop=True)


def curves(df: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Long table (method, budget, task, value, baseline, relative, above_chance), the shared 100% cell repeated
    under every method, plus ``average`` rows where a (method, budget) has every task the baseline has."""
    base = df[df.method == BASELINE].set_index("task")[metric]
    if base.empty:
        raise ValueError("the results hold no uncompressed (100%) cells: every ratio needs that baseline")
    methods = [m for m in df.method.unique() if m != BASELINE] or [BASELINE]
    parts = [df[df.method != BASELINE]] * (methods != [BASELINE]) + \
        [df[df.method == BASELINE].assign(method=m) for m in methods]
    long = pd.concat(parts, ignore_index=True)[["method", "budget", "task", metric, "items"]]
    long = long.rename(columns={metric: "value"})
    long = long[long.task.isin(base.index)]
    avg = (long.groupby(["method", "budget"]).filter(lambda g: set(g.task) == set(base.index))
           .groupby(["method", "budget"], as_index=False).agg(value=("value", "mean"), items=("items", "sum")))
    long = pd.concat([long, avg.assign(task=AVERAGE)], ignore_index=True)
    base_avg = float(base.mean())
    chance = {t: CHANCE.get(t, 0.0) for t in base.index}
    chance[AVERAGE] = sum(chance.values()) / len(chance)
    long["baseline"] = long.task.map(lambda t: base_avg if t == AVERAGE else float(base[t]))
    long["chance"] = long.task.map(chance)
    long["relative"] = long.value / long.baseline
    long["above_chance"] = (long.value - long.chance) / (long.baseline - long.chance)
    return long.sort_values(["method", "task", "budget"], ascending=[True, True, False]).reset_index(drop=True)


def accuracy_table(df: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy (%) with one row per (budget, method) and one column per task, then the average over tasks; and
    the average's rows of :func:`curves`, indexed by (budget, method), for the columns a table adds from them."""
    long = curves(df, metric)
    tasks = [t for t in long.task.unique() if t != AVERAGE]
    wide = long.pivot_table(index=["budget", "method"], columns="task", values="value")
    wide = wide.reindex(columns=tasks + [AVERAGE]) * 100
    return wide, long[long.task == AVERAGE].set_index(["budget", "method"])


def full_cell_first(wide: pd.DataFrame, compressed: pd.DataFrame) -> pd.DataFrame:
    """The shared 100% cell of ``wide`` once as 'uncompressed' (:func:`curves` repeats it under every method),
    then the ``compressed`` rows."""
    full = wide.xs(1.0, level="budget", drop_level=False).iloc[:1].rename(index=lambda m: BASELINE, level=1)
    return pd.concat([full, compressed])


def titled(wide: pd.DataFrame, df: pd.DataFrame, heading: str) -> pd.DataFrame:
    """``wide`` rounded to 0.1, its columns headed ``heading``, or said to be a pipeline check where ``df`` has a
    handful of items per task (said on the table itself)."""
    wide.columns.name = pipeline_check(df["items"]) or heading
    return wide.round(1)


def table1(df: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """The paper's Table 1 layout: one row per (budget, method), one column per task, then the average and
    the average as % of the uncompressed model's (accuracies in %)."""
    wide, avg = accuracy_table(df, metric)
    wide["% of 100%"] = avg["relative"] * 100
    wide = wide.sort_index(level=["budget", "method"], ascending=[False, True])
    wide = full_cell_first(wide, wide.drop(index=1.0, level="budget"))
    wide.index = wide.index.set_levels([[budget_label(b) for b in wide.index.levels[0]],
                                        [LABELS.get(m, m) for m in wide.index.levels[1]]])
    wide.index.names = ["budget", "method"]
    return titled(wide, df, "task")


def kept_at(df: pd.DataFrame, budgets=(0.5, 0.375), metric: str = "acc") -> pd.DataFrame:
    """% of the uncompressed average accuracy kept, and the above-chance share kept, per method and budget."""
    avg = curves(df, metric)
    avg = avg[(avg.task == AVERAGE) & avg.budget.isin(budgets)]
    return (avg.assign(kept=100 * avg.relative, kept_above_chance=100 * avg.above_chance)
            .pivot_table(index="method", columns="budget", values=["kept", "kept_above_chance"]).round(1))


def named(df: pd.DataFrame) -> pd.DataFrame:
    """The sweep's rows with ``method`` replaced by a readable set-up name: how the projections were made and how
    the ranks were chosen ('PCA, uniform ranks', 'MatryoshkaKV trained, searched ranks', or an earlier recipe;
    :mod:`.recipes`), read from each row's projections fingerprint and allocation; the 100% cell stays
    'uncompressed'. The sweep's own method name is kept as ``sweep_method``."""
    from .recipes import setup_name

    names = [BASELINE if m == BASELINE else setup_name(f, a, model)
             for m, f, a, model in zip(df.method, df.fingerprint, df.allocation, df.model)]
    return df.assign(sweep_method=df.method, method=names)


def summary(df: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Table 1 with both scales of what is kept: one row per (budget, set-up), accuracy (%) per task and its
    average over tasks, the average as % of the uncompressed model's ('% kept') and the share of the
    uncompressed model's margin over chance that remains ('% kept above chance'). Within a budget, rows go from
    the set-up that keeps least to the one that keeps most; the 100% cell comes once, first. Where the
    uncompressed accuracy is itself at chance (a handful of items) the share above chance is undefined: NaN."""
    wide, avg = accuracy_table(df, metric)
    wide["% kept"] = 100 * avg["relative"]
    wide["% kept above chance"] = (100 * avg["above_chance"]).replace([float("inf"), -float("inf")], float("nan"))
    rest = wide.drop(index=1.0, level="budget").reset_index().sort_values(["budget", "% kept"],
                                                                          ascending=[False, True])
    wide = full_cell_first(wide, rest.set_index(["budget", "method"]))
    wide.index = pd.MultiIndex.from_tuples([(budget_label(b), m) for b, m in wide.index], names=["budget", "set-up"])
    return titled(wide, df, "accuracy (%)")


def accuracy_vs_budget(df: pd.DataFrame, scale: str = "relative", metric: str = "acc"):
    """One panel per task plus the average: accuracy against budget for every method, side by side.

    ``scale``: "relative" (% of uncompressed), "above_chance" (% of the baseline's margin over chance)
    or "value" (accuracy in %, chance drawn dashed). The legend sits below the panels.
    """
    import matplotlib.pyplot as plt

    if scale not in ("relative", "above_chance", "value"):
        raise ValueError(f"scale must be 'relative', 'above_chance' or 'value', not {scale!r}")
    long = curves(df, metric)
    tasks = [t for t in long.task.unique() if t != AVERAGE] + [AVERAGE]
    # one colour per method in every panel; the legend in order of the average kept at the compressed budget that
    # most methods were measured at (methods without it last)
    avg = long[(long.task == AVERAGE) & (long.budget < 1)]
    common = avg.budget.mode().max() if not avg.empty else 1.0
    order = (long[(long.task == AVERAGE) & (long.budget == common)].set_index("method").relative
             .reindex(long.method.unique()).fillna(float("inf")).sort_values(kind="stable").index.tolist())
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(order)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.3 * len(tasks), 3.3), sharey=scale != "value",
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = long[long.task == task]
        for method in order:
            g = sub[sub.method == method]
            if not g.empty:
                ax.plot(100 * g.budget, 100 * g[scale], marker="o", color=colours[method],
                        label=LABELS.get(method, method))
        chance = 100 * sub.chance.iloc[0]                       # on the accuracy scale
        if scale != "value":
            ax.axhline(100, ls=":", c="black", lw=1, label="uncompressed")
            chance = chance / sub.baseline.iloc[0] if scale == "relative" else 0
        ax.axhline(chance, ls="--", c="grey", lw=1, label="chance (guessing)")
        items = int(sub[sub.method == sub.method.iloc[0]]["items"].max())
        ax.set(title=f"{task} ({items:,} items)", xlabel="KV budget (% of the full cache)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    ylabel = {"relative": "% of uncompressed accuracy", "above_chance": "% of margin above chance kept",
              "value": f"{'accuracy' if metric == 'acc' else metric} (%)"}[scale]
    axes[0][0].set_ylabel(ylabel)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    columns = min(3, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    check = pipeline_check(long[long.task != AVERAGE]["items"])
    if check:
        fig.suptitle(check, color="firebrick")
    legend_rows = -(-len(labels) // columns)
    fig.tight_layout(rect=(0, min(0.45, 0.06 * legend_rows + 0.01), 1, 1))
    return fig


def scratch_path(name: str = "lm_eval_live.csv") -> Path:
    """A fresh CSV path in a new temporary folder, for a throw-away (fast-mode) sweep."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="mkv-lmeval-")) / name


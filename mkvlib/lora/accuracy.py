"""Task accuracy of a fine-tuned (merged) model against budget, per kind of projections. Notebook 06.

Every cell runs lm-eval (:func:`mkvlib.lmeval.run_lm_eval`) on the in-memory model with the projections
attached at a uniform budget; 100% is computed once with compression off (it is exact at full rank). Each
finished cell is stored at once in a CSV (a :class:`~mkvlib.results_store.ResultStore`: rewritten atomically,
under a lock so that processes sharing the file each add their own cells) and skipped when it is already there,
so an interrupted curve resumes.
"""
from __future__ import annotations

import time

from ..core.compress import attach
from ..lmeval import LMEvalConfig, run_lm_eval, wrap
from ..core.ranks import ranks_for
from ..results_store import BASELINE, ResultStore, measure_all, unstored

FIELDS = ["model", "adapter", "projections", "fingerprint", "budget", "task", "acc", "acc_norm", "items", "limit",
          "seconds", "ranks"]
KEY = ("model", "adapter", "fingerprint", "budget", "task", "limit", "ranks")


def results_store(path) -> ResultStore:
    """The accuracy CSV at ``path``: one row per (model, adapter, projections, budget, task, limit, ranks)."""
    return ResultStore(path, KEY, FIELDS)


def read_rows(path) -> list[dict]:
    """The rows of the accuracy CSV at ``path``, budget and accuracies as floats (None where not measured)."""
    rows = results_store(path).rows()
    for r in rows:
        r["budget"] = float(r["budget"])
        for k in ("acc", "acc_norm"):
            r[k] = float(r[k]) if r[k] not in ("", "None") else None
    return rows


def accuracy_curve(model, tokenizer, projections: dict, budgets, adapter: str, task: str = "arc_easy",
                   limit: int | None = None, batch_size: int = 32, out=None, progress: bool = True,
                   trajectories: dict | None = None, uncompressed: bool = True) -> list[dict]:
    """Rows {projections, budget, acc, ...} for ``model`` (the merged fine-tuned model) with each of
    ``projections`` ({label: Projections}) at each budget < 1, plus one uncompressed row at budget 1
    (``uncompressed=False`` leaves it out, e.g. to score it in another process writing to the same ``out``).

    Ranks are uniform, except for labels in ``trajectories`` ({label: Trajectory or path}, searched with that
    label's projections on this model), whose ranks at each budget are the search's (adaptive); the ``ranks``
    column says which ('uniform', or a digest of the adaptive ranks). ``adapter`` names the fine-tuned weights in
    the rows (e.g. the adapter's weights hash). With ``out`` (a CSV path) rows already stored are reused and new
    ones appended as they finish.
    """
    from ..lmeval.sweep import ranks_digest

    trajectories = _read_trajectories(trajectories, projections)
    store = results_store(out) if out else None
    config = LMEvalConfig(tasks=[task], limit=limit, batch_size=batch_size)
    name = getattr(model, "mkv_name", "?")
    cells = []
    for label, proj, budget in ([(BASELINE, None, 1.0)] if uncompressed else []) + [
            (label, proj, float(b)) for label, proj in projections.items() for b in budgets if b < 1]:
        ranks = None if proj is None else ranks_for(model, proj, "adaptive" if label in trajectories else "uniform",
                                                    budget, trajectories.get(label))
        cells.append(({"model": name, "adapter": adapter, "projections": label,
                       "fingerprint": proj.fingerprint() if proj is not None else BASELINE, "budget": budget,
                       "task": task, "limit": limit, "ranks": ranks_digest(ranks)}, proj, ranks))
    todo = unstored(store, cells, lambda cell: cell[0])
    lm = wrap(model, tokenizer, batch_size, progress=progress) if todo else None
    new = measure_all(store, todo, lambda cell: [{**cell[0], **_score(model, tokenizer, config, task, lm, *cell[1:])}],
                      "accuracy", progress=progress)
    have = {store.key(r): r for r in read_rows(out)} if out else {}
    made = {id(cell[0]): row for cell, row in zip(todo, new)}
    return [made.get(id(row)) or {**have[store.key(row)], "projections": row["projections"]} for row, _, _ in cells]


def _read_trajectories(trajectories: dict | None, projections: dict) -> dict:
    """{label: Trajectory}, each given file read once; every label must be one of ``projections``."""
    from ..core.trajectory import Trajectory

    trajectories = {label: t if isinstance(t, Trajectory) else Trajectory.load(t)
                    for label, t in (trajectories or {}).items()}
    unknown = sorted(set(trajectories) - set(projections))
    if unknown:
        raise KeyError(f"trajectories given for {unknown}, which are not among the projections {list(projections)}")
    return trajectories


def _score(model, tokenizer, config: LMEvalConfig, task: str, lm, proj, ranks) -> dict:
    """Accuracy of ``model`` on ``task`` (the config's one task), with ``proj`` attached at ``ranks`` (uncompressed when
    ``proj`` is None): {acc, acc_norm, items, seconds}."""
    start = time.perf_counter()
    if proj is None:
        summary = run_lm_eval(model, tokenizer, config, lm=lm)
    else:
        with attach(model, proj, ranks=ranks):
            summary = run_lm_eval(model, tokenizer, config, lm=lm)
    res = summary["tasks"][task]
    return dict(acc=res["acc"], acc_norm=res["acc_norm"], items=res["items"],
                seconds=round(time.perf_counter() - start, 1))


def baseline(rows: list[dict], label: str, metric: str = "acc") -> float:
    """The uncompressed accuracy of the fine-tuned model that ``label``'s rows were measured on."""
    adapters = {r["adapter"] for r in rows if r["projections"] == label}
    base = [r[metric] for r in rows if r["projections"] == BASELINE and r["adapter"] in adapters]
    if not base:
        raise KeyError(f"no uncompressed row for the adapter of {label!r}")
    return base[0]


def keep_ratio(rows: list[dict], label: str, budget: float, metric: str = "acc") -> float:
    """Accuracy of ``label`` at ``budget`` over the uncompressed accuracy of the same fine-tuned model."""
    at = [r[metric] for r in rows if r["projections"] == label and abs(r["budget"] - budget) < 1e-9]
    if not at:
        raise KeyError(f"no {label!r} row at budget {budget}")
    return at[0] / baseline(rows, label, metric)


def _labels(rows):
    return list(dict.fromkeys(r["projections"] for r in rows if r["projections"] != BASELINE))


def items_note(rows: list[dict]) -> str | None:
    """'pipeline check (N items), not a result' when the rows score a handful of items (fast mode), else None."""
    from ..lmeval.report import pipeline_check

    items = [int(r["items"]) for r in rows if r.get("items") not in ("", None)]
    return pipeline_check(items) if items else None


def accuracy_table(rows: list[dict], metric: str = "acc") -> str:
    """Plain text: one line per projections kind, one column per budget; 100% is that adapter's uncompressed
    accuracy, and the last column the share of it kept at 50%. Rows of a handful of items are headed as a
    pipeline check."""
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    width = max([14] + [len(label) + 2 for label in _labels(rows)])
    lines = [f"{metric:<{width}}" + "".join(f"{b:>9.1%}" for b in budgets) + f"{'kept@50%':>10}"]
    for label in _labels(rows):
        vals = {r["budget"]: r[metric] for r in rows if r["projections"] == label}
        vals[1.0] = baseline(rows, label, metric)
        kept = f"{vals[0.5] / vals[1.0]:>10.1%}" if 0.5 in vals and vals[1.0] else f"{'-':>10}"
        lines.append(f"{label:<{width}}" + "".join(f"{vals[b]:>9.3f}" if b in vals else f"{'-':>9}" for b in budgets)
                     + kept)
    note = items_note(rows)
    return "\n".join(([note] if note else []) + lines)


def plot_accuracy(rows: list[dict], metric: str = "acc", title: str = ""):
    """Accuracy against budget (%), one line per projections kind, each ending at its fine-tuned model's
    uncompressed accuracy (100%); dotted: 97% of the last kind's uncompressed accuracy. A handful of items is
    titled as a pipeline check."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    labels = _labels(rows)
    for label in labels:
        pts = sorted((r["budget"], r[metric]) for r in rows if r["projections"] == label)
        pts.append((1.0, baseline(rows, label, metric)))
        ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if labels:
        ax.axhline(0.97 * baseline(rows, labels[-1], metric), ls=":", color="gray", lw=1,
                   label=f"97% of {labels[-1]} at 100%")
    first, note = rows[0], items_note(rows)
    title = title or f"fine-tuned model, {first['items']} items"
    ax.set(xlabel="KV budget (% of the full cache)", ylabel=f"{first['task']} {metric}",
           title=f"{note}\n{title}" if note else title)
    if note:
        ax.title.set_color("firebrick")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def evaluate_bundle(folder, projections=None, budgets=(0.5,), task: str = "arc_easy", limit: int | None = None,
                    batch_size: int = 32, out=None, progress: bool = True, trajectories: dict | None = None,
                    uncompressed: bool = True) -> list[dict]:
    """Accuracy rows of a bundle's fine-tuned model, merged (``merge_and_unload``) into a freshly loaded base.

    ``projections``: {label: Projections | 'pca' | 'trained' | 'general' | 'bundle' | path}; default
    {"two-stage": the bundle's own projections}. 'general' is the shipped trained projections, else PCA.
    ``trajectories``: {label: trajectory path}, adaptive ranks for those labels; ``uncompressed=False``: no
    uncompressed row (see :func:`accuracy_curve`). Two processes may share ``out``, e.g. one per CPU core:
    ``evaluate_bundle(b, budgets=(), out=csv)`` and ``evaluate_bundle(b, uncompressed=False, out=csv)``.
    """
    from ..models import load_model
    from ..core.projections import resolve_projections
    from .bundle import load_merged, read_manifest
    from .stages import general_projections

    model, tokenizer = load_model(read_manifest(folder).get("base_model"))
    merged, own, _ = load_merged(folder, model)
    adapter = merged.mkv_adapter
    specs = projections or {"two-stage": "bundle"}
    trajectories = trajectories or {}
    kinds = {}
    for label, spec in specs.items():
        if isinstance(spec, str) and spec == "bundle":
            if own is None:
                raise ValueError(f"{folder} holds no projections (a stage-1 bundle): name others to evaluate")
            kinds[label] = own
        elif isinstance(spec, str) and spec == "general":
            kinds[label] = general_projections(merged)[0]
        else:
            kinds[label] = resolve_projections(spec, merged)
        seen = [k for k, v in kinds.items() if k != label and v.fingerprint() == kinds[label].fingerprint()
                and trajectories.get(k) == trajectories.get(label)]
        if seen:
            print(f"{label}: the same projections as {seen[0]} (no trained projections shipped?): not evaluated twice")
            del kinds[label]
    return accuracy_curve(merged, tokenizer, kinds, budgets, adapter=adapter, task=task, limit=limit,
                          batch_size=batch_size, out=out, progress=progress, trajectories=trajectories,
                          uncompressed=uncompressed)


def committed_rows(path, folder, labels, budgets=(0.5,), limit: int | None = None, task: str = "arc_easy",
                   uncompressed: bool = True) -> list[dict]:
    """The rows :func:`evaluate_bundle` would give for the bundle in ``folder``, read from the results CSV at
    ``path`` instead of measured: no model, no weights (the committed bundles ship without them), no lm-eval.

    Rows are those of the bundle's fine-tuned model (the CSV's ``adapter`` column is the manifest's
    ``adapter_weights_hash``), ``task`` and ``limit`` (None: the whole split); per (label, budget < 1) the newest
    row (the last in the file), plus the newest uncompressed row of that model first (``uncompressed=False``: not).
    ``labels``: a list of labels, or {label: spec} as :func:`evaluate_bundle` takes; a label whose spec is
    ``'bundle'`` only takes rows measured with the bundle's own projections (the manifest's fingerprint), since the
    same fine-tuned model may have been scored with other projections under the same label. A cell not in the
    CSV is a KeyError naming it.
    """
    from .bundle import read_manifest

    manifest = read_manifest(folder)
    adapter = manifest["adapter_weights_hash"]
    specs = labels if isinstance(labels, dict) else dict.fromkeys(labels)
    want_limit = "" if limit is None else str(limit)
    newest = {}
    for r in read_rows(path):
        if r["adapter"] != adapter or r["task"] != task or str(r.get("limit") or "") != want_limit:
            continue
        label = r["projections"]
        if label != BASELINE and (label not in specs or (
                specs[label] == "bundle" and r["fingerprint"] != manifest.get("projections_fingerprint"))):
            continue
        if r["items"] not in ("", None):
            r["items"] = int(r["items"])
        newest[(label, r["budget"])] = r                  # later rows replace earlier ones
    cells = ([(BASELINE, 1.0)] if uncompressed else []) + [
        (label, float(b)) for label in specs for b in budgets if b < 1]
    missing = [c for c in cells if c not in newest]
    if missing:
        raise KeyError(f"{path} has no rows for {missing} of the model in {folder} (adapter {adapter}, task {task}, "
                       f"limit {limit}): measure them with evaluate_bundle or `mkv lm-eval --adapter {folder} ...`")
    return [newest[c] for c in cells]



def kept_table(rows: list[dict], runs: dict, budget: float = 0.5, metric: str = "acc"):
    """One line per named run, each from two rows of an accuracy CSV and their ratio: a DataFrame indexed by
    name with the ranks, the items scored, the accuracy at 100% and at ``budget``, and the share kept (%).

    ``runs``: {name: {"adapter": weights hash, "fingerprint": projections, "ranks": "uniform" | "adaptive",
    "limit": the item limit as stored ('' for the whole split)}}. Per cell the newest row (the last in the file)
    is used; a run without its uncompressed row or its row at ``budget`` is a KeyError naming it.
    """
    import pandas as pd

    from ..lmeval.report import budget_label

    def newest(run, **want):
        found = [r for r in rows if r["adapter"] == run["adapter"] and str(r["limit"] or "") == str(run["limit"])
                 and all(r[k] == v for k, v in want.items())]
        return found[-1] if found else None

    at_label = budget_label(budget)
    lines = {}
    for name, run in runs.items():
        full = newest(run, projections=BASELINE)
        at = [r for r in rows if r["adapter"] == run["adapter"] and r["fingerprint"] == run["fingerprint"]
              and r["budget"] == budget and str(r["limit"] or "") == str(run["limit"])
              and r["ranks"].startswith(run["ranks"])]
        if full is None or not at:
            raise KeyError(f"run {name!r}: no {'uncompressed' if full is None else at_label} row for adapter "
                           f"{run['adapter']} (limit {run['limit']!r}) in these rows")
        lines[name] = {"ranks": run["ranks"], "items": int(at[-1]["items"]), "at 100%": full[metric],
                       f"at {at_label}": at[-1][metric], f"kept at {at_label} (%)": 100 * at[-1][metric] / full[metric]}
    return pd.DataFrame.from_dict(lines, orient="index")


def curve(rows: list[dict], adapter: str, fingerprint: str, ranks: str = "uniform", limit="500",
          metric: str = "acc") -> dict[float, float]:
    """{budget: accuracy} of one fine-tuned model (``adapter``) with one set of projections (``fingerprint``) and
    ``ranks`` ('uniform' or 'adaptive'), on ``limit`` items ('' for the whole split): the newest row per budget,
    and at 1.0 that model's newest uncompressed row. Budgets never measured are absent."""
    same = [r for r in rows if r["adapter"] == adapter and str(r["limit"] or "") == str(limit)]
    out = {}
    for r in same:                                           # later rows replace earlier ones
        if r["projections"] == BASELINE:
            out[1.0] = r[metric]
        elif r["fingerprint"] == fingerprint and r["ranks"].startswith(ranks) and r["budget"] < 1:
            out[r["budget"]] = r[metric]
    if 1.0 not in out or len(out) < 2:
        raise KeyError(f"no uncompressed row, or no compressed row, for adapter {adapter} with projections "
                       f"{fingerprint} ({ranks} ranks, limit {limit!r})")
    return dict(sorted(out.items(), reverse=True))


def curves_table(curves: dict, missing=None):
    """A DataFrame, one line per named curve ({name: {budget: accuracy}} as :func:`curve` gives; a tuple name
    makes a multi-level index): accuracy (%) at every budget, then the share of the uncompressed accuracy kept at
    the lowest budget every curve measured, in %. Budgets a curve never measured are NaN, or ``missing`` (e.g.
    a dash) when given."""
    import pandas as pd

    from ..lmeval.report import budget_label

    budgets = sorted({b for c in curves.values() for b in c}, reverse=True)
    common = min(set.intersection(*(set(c) for c in curves.values())) - {1.0}, default=None)
    table = pd.DataFrame({name: {budget_label(b): 100 * c[b] if b in c else float("nan") for b in budgets}
                          for name, c in curves.items()}).T
    if common is not None:
        table[f"% kept at {budget_label(common)}"] = [100 * c[common] / c[1.0] for c in curves.values()]
    table = table.round(1)
    if missing is not None:
        table = table.astype(object).where(table.notna(), missing)
    table.columns.name = "accuracy (%) at each KV budget"
    return table


def plot_kept(curves: dict, title: str = "", target: float | None = 0.97):
    """Share of each fine-tuned model's uncompressed accuracy kept (%) against KV budget, one line per named curve
    ({name: {budget: accuracy}}; a tuple name is joined with commas); lines whose name mentions searched ranks are
    dashed. ``target`` draws that share dotted. The legend sits below the plot."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    for name, c in curves.items():
        label = ", ".join(name) if isinstance(name, tuple) else str(name)
        budgets = sorted(c)
        ax.plot([100 * b for b in budgets], [100 * c[b] / c[1.0] for b in budgets], marker="o", label=label,
                ls="--" if "searched" in label else "-")
    if target is not None:
        ax.axhline(100 * target, ls=":", color="gray", lw=1, label=f"{100 * target:g}% kept")
    ax.set(xlabel="KV budget (% of the full cache)", ylabel="% of the fine-tuned model's accuracy kept",
           title=title)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    fig.tight_layout()
    return fig

"""Stage lmeval: zero-shot accuracy of PCA uniform, trained uniform and trained adaptive at every budget on the
tasks' full splits (``--lmeval-limit``: the first N items), through the Sweep engine: each finished cell is in
lmeval.csv at once. Cells run in order of importance (the uncompressed baseline, then 50%, 37.5%, 25%, 75%,
62.5%); once the measured seconds per request say a cell will not finish in the stage's time, it is skipped."""
from __future__ import annotations

import importlib.util

from ..results_store import BASELINE, measure_all
from . import clock
from .config import METHODS
from .context import StageSkipped

BUDGET_ORDER = (1.0, 0.5, 0.375, 0.25, 0.75, 0.625)


def lmeval_missing(tasks) -> str | None:
    """Why lm-eval cannot run ``tasks`` here (not installed, task files missing), or None."""
    if importlib.util.find_spec("lm_eval") is None:
        return "lm-eval is not installed (pip install lm-eval; on an air-gapped machine the offline bundle brings it)"
    try:
        importlib.import_module("lm_eval.models.huggingface")
    except ImportError as err:       # e.g. its `datasets` dependency missing
        return f"lm-eval cannot be imported here: {err}"
    from ..lmeval.tasks import TaskFilesMissingError, resolve_task_paths

    try:
        resolve_task_paths(list(tasks))
    except (TaskFilesMissingError, ValueError) as err:
        return f"task files missing: {err}"
    return None


def sweep_methods(ctx) -> list:
    from ..core.ranks import Method

    ctx.pca()
    methods = [Method("pca-uniform", ctx.pca_spec)]
    try:
        ctx.trained()
    except StageSkipped as why:
        ctx.log(f"lm-eval: only PCA ({why})")
        return methods
    return [Method("trained-adaptive", ctx.trained_spec, "adaptive", ctx.trajectory_path),
            Method("trained-uniform", ctx.trained_spec)] + methods


def priority(cell, tasks) -> tuple:
    budget = BUDGET_ORDER.index(cell.budget) if cell.budget in BUDGET_ORDER else len(BUDGET_ORDER)
    method = METHODS.index(cell.method.name) if cell.method else -1
    return budget, method, list(tasks).index(cell.task)


def run(ctx, deadline) -> dict:
    from ..lmeval import Sweep, SweepConfig, wrap

    why = lmeval_missing(ctx.config.tasks)
    if why:
        raise StageSkipped(why)
    p, tasks = ctx.profile, list(ctx.config.tasks)
    config = SweepConfig(out=str(ctx.path("lmeval")), methods=sweep_methods(ctx), budgets=list(p.lmeval_budgets),
                             tasks=tasks, limit=ctx.config.lmeval_limit, batch_size=p.lmeval_batch)
    sweep = Sweep(ctx.model, ctx.tokenizer, config)
    cells = sorted(sweep.pending(), key=lambda c: priority(c, tasks))
    for name, reason in sweep.skipped.items():
        ctx.log(f"lm-eval: method {name} skipped: {reason}")
    lm = wrap(ctx.model, ctx.tokenizer, p.lmeval_batch)
    ran, skipped = run_cells(ctx, sweep, cells, lm, deadline)
    from ..lmeval.sweep import read_rows

    return {"limit": ctx.config.lmeval_limit or "full", "tasks": tasks, "cells_run": ran,
            "cells_skipped_for_time": skipped, "methods_skipped": sweep.skipped,
            "table": accuracy_table(read_rows(config.out), tasks)}


def run_cells(ctx, sweep, cells, lm, deadline) -> tuple[int, list]:
    skipped = []

    def measure(cell):
        left = deadline - clock.now()
        estimate = sweep.estimate([cell])
        if left <= 0 or (estimate["measured_on_cells"] and estimate["seconds"] > left):
            skipped.append(cell.label)
            return []
        row = sweep.measure(cell, lm)
        ctx.log(f"lm-eval: {cell.label}: acc {float(row['acc']):.4f} ({row['items']} items, {row['seconds']}s)")
        return [row]

    ran = len(measure_all(sweep.store, cells, measure, "lm-eval", progress=False))
    if skipped:
        ctx.log(f"lm-eval: {len(skipped)} cells left out for time (first: {skipped[0]})")
    return ran, skipped


def accuracy_table(rows: list[dict], tasks) -> list[dict]:
    """One row per (method, budget): each task's acc, their average, and the average as a share of the
    uncompressed model's ('kept'), where every task has a cell."""
    base = {r["task"]: float(r["acc"]) for r in rows if r["method"] == BASELINE}
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["method"], float(r["budget"])), {})[r["task"]] = float(r["acc"])
    table = []
    for (method, budget), accs in sorted(cells.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        row = {"method": method, "budget": budget, **{t: accs.get(t) for t in tasks}}
        if all(t in accs for t in tasks):
            row["average"] = sum(accs[t] for t in tasks) / len(tasks)
            if all(t in base for t in tasks):
                row["kept"] = row["average"] / (sum(base[t] for t in tasks) / len(tasks))
        table.append(row)
    return table

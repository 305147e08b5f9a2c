"""mkv lm-eval: zero-shot accuracy of the compressed model through lm-evaluation-harness, or a whole sweep."""
from __future__ import annotations

import sys

from ..cli import add_options
from .common import emit, load_model_and_adapter


def register(sub) -> None:
    p = sub.add_parser("lm-eval", help="zero-shot accuracy through lm-evaluation-harness (one budget, or a sweep)")
    add_options(p, "model")
    p.add_argument("--projections", default=None,
                   help="'pca' (default), 'trained' (shipped) or a .safetensors file; with --sweep, a file replaces "
                   "the shipped trained projections in the trained methods; 'bundle' (with --adapter) the bundle's own")
    add_options(p, "adapter")
    p.add_argument("--budget", type=float, default=1.0, help="KV budget in (0, 1]; 1 = uncompressed (default)")
    p.add_argument("--allocation", choices=["uniform", "adaptive"], default="uniform",
                   help="uniform ranks, or the shipped greedy-search trajectory for these projections")
    p.add_argument("--trajectory", default=None, metavar="JSON",
                   help="adaptive ranks from this `mkv search` file instead of the shipped one (implies adaptive; "
                   "with --sweep, the trained-adaptive method's ranks)")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks, e.g. piqa,arc_easy,hellaswag")
    p.add_argument("--include-path", default=None, help="a folder of your own lm-eval task YAMLs")
    p.add_argument("--source", choices=["auto", "local", "hub"], default="auto",
                   help="task data: local files in MKV_DATA_DIR, the Hugging Face Hub, or auto (default: local "
                   "when MKV_DATA_DIR is set or the Hub is offline or unreachable, else the Hub)")
    p.add_argument("--limit", type=int, default=None, help="items per task (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sweep", default=None, metavar="CSV",
                   help="run the methods x budgets x tasks grid instead, storing each cell in CSV (resumable)")
    p.add_argument("--methods", default="pca-uniform,trained-uniform,trained-adaptive", help="with --sweep")
    p.add_argument("--budgets", default="1,0.875,0.75,0.625,0.5,0.375,0.25", help="with --sweep")
    add_options(p, "device", "json", "debug", dry_run="with --sweep: print the cost estimate and stop")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..lmeval import LMEvalConfig

    config = LMEvalConfig(args.tasks, args.limit, args.batch_size, args.source, args.include_path)
    if args.sweep:
        return run_sweep(args)
    from ..lmeval.tasks import resolve_task_paths

    resolve_task_paths(config.tasks, config.source, config.include_path)   # missing files fail before loading
    model, tokenizer = load_model_and_adapter(args)
    allocation = "adaptive" if args.trajectory else args.allocation          # --trajectory implies adaptive
    result = evaluate_one(model, tokenizer, config, args.projections or "pca", args.budget, allocation,
                          args.trajectory)
    emit(labelled(result, result["items"].values()), args.json)
    return 0


def labelled(result: dict, items) -> dict:
    """``result`` headed by what it is when it scored only a handful of items: a pipeline check, not a result."""
    from ..lmeval.report import pipeline_check

    items = [int(n) for n in items]
    note = pipeline_check(items) if items else None
    return {"status": note, **result} if note else result


def evaluate_one(model, tokenizer, config, projections: str, budget: float, allocation: str,
                 trajectory: str | None = None) -> dict:
    """Accuracy at one budget: uncompressed at 1.0 with uniform ranks, else through the attached compression
    (adaptive ranks from the shipped trajectory, or from ``trajectory``)."""
    from ..core.checks import check_budget
    from ..core.compress import attach
    from ..lmeval import flat_result, run_lm_eval
    from ..core.ranks import ranks_for
    from ..core.projections import resolve_projections

    check_budget(budget)
    meta = dict(model=model.mkv_name, budget=budget, allocation=allocation, projections=projections)
    if getattr(model, "mkv_adapter", None):
        meta["adapter"] = model.mkv_adapter
    if trajectory:
        meta["trajectory"] = str(trajectory)
    if budget == 1.0 and allocation == "uniform":
        summary = run_lm_eval(model, tokenizer, config)
        return flat_result(summary, **meta, fingerprint="none")
    proj = resolve_projections(projections, model)
    with attach(model, proj, ranks_for(model, proj, allocation, budget, trajectory)) as comp:
        summary = run_lm_eval(model, tokenizer, config)
        meta.update(kv_budget=comp.budget)
    return flat_result(summary, **meta, fingerprint=proj.fingerprint())


def run_sweep(args) -> int:
    from ..core.checks import check_budgets
    from ..lmeval import Sweep, SweepConfig
    from ..lmeval.sweep import with_own_files

    if args.projections in ("pca", "trained"):
        raise ValueError(f"--projections {args.projections} has no effect with --sweep: the methods name their "
                         f"projections (--methods pca-uniform,trained-adaptive ...); give a .safetensors file to "
                         f"replace the shipped trained ones")
    model, tokenizer = load_model_and_adapter(args)     # '--projections bundle' becomes the bundle's file
    budgets = list(check_budgets(args.budgets, "--budgets"))
    methods = with_own_files(args.methods, args.projections, args.trajectory)
    if not args.dry_run:
        from ..lmeval.tasks import resolve_task_paths

        resolve_task_paths(args.tasks, args.source, args.include_path)   # missing task files: one clear error now
    config = SweepConfig(out=args.sweep, methods=methods, budgets=budgets, tasks=args.tasks, limit=args.limit,
                         batch_size=args.batch_size, source=args.source, include_path=args.include_path)
    sweep = Sweep(model, tokenizer, config)
    rows = sweep.run(progress=not args.json, dry_run=args.dry_run)
    result = {"out": args.sweep, "cells_run": len(rows), "skipped": sweep.skipped, **sweep.estimate()}
    emit(labelled(result, [r["items"] for r in rows]), args.json)
    print(f"results in {args.sweep}", file=sys.stderr)
    return 0

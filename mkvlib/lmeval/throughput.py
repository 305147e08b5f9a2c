"""Overhead of evaluating through the compression wrapper: the same lm-eval run on the plain model and with
compression attached at full rank (100% budget), interleaved so that a shared machine's load hits both alike.

Wall-clock items/s depends on whatever else runs on the machine; the process's CPU seconds per item measure
the work itself. Introduced in notebook 04.
"""
from __future__ import annotations

import time

from .evaluate import LMEvalConfig, run_lm_eval, wrap


def compare_throughput(model, tokenizer, config: LMEvalConfig, projections, repeats: int = 2) -> dict:
    """Items/s (wall) and CPU s/item for the plain model and the wrapper at 100%, ``repeats`` runs each,
    alternating. Returns the best run of each and ``overhead`` = wrapper time / plain time - 1 (wall and CPU)."""
    from ..compress import attach

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    lm = wrap(model, tokenizer, config.batch_size)
    run_lm_eval(model, tokenizer, config, lm=lm)          # warm-up: datasets, task index, kernels
    runs = {"plain": [], "wrapper": []}
    for _ in range(repeats):
        for kind in ("plain", "wrapper"):
            cpu = time.process_time()
            if kind == "plain":
                summary = run_lm_eval(model, tokenizer, config, lm=lm)
            else:
                with attach(model, projections, 1.0):
                    summary = run_lm_eval(model, tokenizer, config, lm=lm)
            items = sum(r["items"] for r in summary["tasks"].values())
            runs[kind].append({"wall_s": summary["seconds"], "cpu_s": time.process_time() - cpu, "items": items})
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    best_cpu = {k: min(r["cpu_s"] for r in v) for k, v in runs.items()}
    return {"items": best["plain"]["items"], "batch_size": config.batch_size, "repeats": repeats,
            "plain_items_per_s": best["plain"]["items"] / best["plain"]["wall_s"],
            "wrapper_items_per_s": best["wrapper"]["items"] / best["wrapper"]["wall_s"],
            "plain_cpu_s_per_item": best_cpu["plain"] / best["plain"]["items"],
            "wrapper_cpu_s_per_item": best_cpu["wrapper"] / best["wrapper"]["items"],
            "overhead_wall": best["wrapper"]["wall_s"] / best["plain"]["wall_s"] - 1,
            "overhead_cpu": best_cpu["wrapper"] / best_cpu["plain"] - 1, "runs": runs}

"""The driver of `mkv fullrun`: load the model, run the stages in order within the time budget, record each
stage in summary.json the moment it ends, stop at the first failure, and draw figures.png at the end.

A stage ends as ``passed``, ``skipped`` (with a note: out of time, or something it needs is missing) or
``failed`` (the run stops: :class:`StageFailed` names the stage and what failed); stages after a failure or an
interrupt are ``not run``. SIGTERM (a job's time limit) is handled like Ctrl-C: the current stage is marked
``interrupted`` (training saves its checkpoint and projections first), the summary and figures are written.
"""
from __future__ import annotations

import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from . import clock
from .clock import Budget
from .config import PROFILES
from .context import FILES, RunContext, StageError, StageSkipped


class StageFailed(RuntimeError):
    """A stage failed; the run stopped after writing what earlier stages produced."""


def prepare_out(config) -> Path:
    """The output folder: new or empty, or (``overwrite``) holding only a previous run's files, which go."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder")
    present = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if present and not config.overwrite:
        raise ValueError(f"--out {out} is not empty ({', '.join(present[:4])}{' ...' if len(present) > 4 else ''}): "
                         "give a new folder, or --overwrite to replace a previous run's files")
    foreign = [n for n in present if n not in FILES.values() and not n.startswith(".")]
    if foreign:
        raise ValueError(f"--out {out} holds files a full run does not write ({', '.join(foreign[:4])}): "
                         "give a new folder")
    for name in present:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def load(config):
    """(model, tokenizer, profile name) on the run's device and dtype."""
    from ..runtime import device_and_dtype
    from ..core.env import fast_mode

    device, dtype = device_and_dtype(config.device, config.dtype)
    if config.tiny:
        from .tiny import tiny_pair

        model, tokenizer = tiny_pair(dtype, seed=config.seed)
        return model.to(device), tokenizer, "tiny"
    from ..models import load_model

    model, tokenizer = load_model(config.model, device=device, dtype=dtype)
    return model, tokenizer, "gpu" if device.type == "cuda" and not fast_mode() else "cpu"


def header(ctx, load_s: float) -> dict:
    import torch
    import transformers

    from ..lmeval.sweep import git_commit

    cuda = ctx.device.type == "cuda"
    command = "mkv " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("mkv", "__main__.py") else None
    return {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "status": "running",
            "minutes": ctx.config.minutes, "train_minutes": ctx.config.train_minutes,
            "lmeval_limit": ctx.config.lmeval_limit, "tasks": list(ctx.config.tasks),
            "stages_asked": list(ctx.config.stages), "profile": ctx.profile.name,
            "model": getattr(ctx.model, "mkv_name", "?"), "device": str(ctx.device),
            "dtype": str(next(ctx.model.parameters()).dtype).replace("torch.", ""), "load_s": round(load_s, 1),
            "hardware": {"gpu": torch.cuda.get_device_name(ctx.device) if cuda else None,
                         "gpu_memory_bytes": torch.cuda.get_device_properties(ctx.device).total_memory if cuda
                         else None, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                         "platform": platform.platform()},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__}, "git_commit": git_commit(),
            "data_dir": os.environ.get("MKV_DATA_DIR"), "stages": {}}


def run_fullrun(config) -> dict:
    """Run ``config`` (a :class:`~mkvlib.fullrun.config.FullRunConfig`); returns the summary. Raises
    :class:`StageFailed` after writing everything when a stage fails, KeyboardInterrupt when interrupted."""
    from ..training.trainer import sigterm_interrupts

    budget = Budget(config.minutes, config.train_minutes)
    out = prepare_out(config)
    with sigterm_interrupts():
        start = clock.now()
        model, tokenizer, profile = load(config)
        ctx = RunContext(config, PROFILES[profile], model, tokenizer, out, budget)
        ctx.summary = header(ctx, clock.now() - start)
        ctx.log(f"fullrun: {ctx.summary['model']} on {ctx.summary['device']} ({ctx.summary['dtype']}), profile "
                f"{profile}, {config.minutes:g} minutes, stages {','.join(config.stages)}")
        try:
            if "train" in config.stages:
                ctx.prefetch_training_data()
            run_stages(ctx)
        finally:
            finish(ctx)
    return ctx.summary


def run_stages(ctx) -> None:
    stages = list(ctx.config.stages)
    for i, stage in enumerate(stages):
        share = ctx.budget.share(stage, stages[i:])
        if stage != "smoke" and (share <= 0 or share < ctx.profile.min_stage_s):
            ctx.summary["stages"][stage] = {"status": "skipped", "note": f"out of time ({max(0, ctx.budget.left()):.0f}"
                                            f"s of the run's {ctx.config.minutes:g} minutes left)"}
            ctx.log(f"{stage}: skipped, out of time")
            ctx.write_summary()
            continue
        run_stage(ctx, stage, clock.now() + share)


def run_stage(ctx, stage: str, deadline: float) -> None:
    module = importlib.import_module(f"{__package__}.{stage}")
    rec = ctx.summary["stages"][stage] = {"status": "running", "share_s": round(deadline - clock.now(), 1)}
    ctx.write_summary()
    ctx.log(f"{stage}: started ({rec['share_s']:.0f}s)")
    start = clock.now()
    try:
        rec.update(module.run(ctx, deadline))
        rec["status"] = "passed"
    except StageSkipped as why:
        rec.update(status="skipped", note=str(why))
    except KeyboardInterrupt:
        rec["status"] = "interrupted"
        ctx.log(f"{stage}: interrupted")
        raise
    except Exception as err:  # noqa: BLE001 - any failure stops the run, named, after the summary is written
        message = str(err) if isinstance(err, StageError) else f"{type(err).__name__}: {err}"
        rec.update(status="failed", error=message)
        with open(ctx.path("log"), "a", encoding="utf-8") as fh:
            traceback.print_exc(file=fh)
        ctx.summary.update(failed_stage=stage, message=f"stage '{stage}' failed: {message}")
        ctx.log(ctx.summary["message"])
        raise StageFailed(ctx.summary["message"]) from err
    finally:
        rec["seconds"] = round(clock.now() - start, 1)
        if ctx.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()          # what a stage cached is free for the next one
        ctx.log(f"{stage}: {rec['status']} in {rec['seconds']:.1f}s" + (f" ({rec['note']})" if rec.get("note") else ""))
        ctx.write_summary()


def overall(stages: dict, asked) -> str:
    states = [stages.get(s, {}).get("status", "not run") for s in asked]
    for bad in ("failed", "interrupted"):
        if bad in states:
            return bad
    return "passed" if all(s == "passed" for s in states) else "partial"


def finish(ctx) -> None:
    import json

    for stage in ctx.config.stages:
        ctx.summary["stages"].setdefault(stage, {"status": "not run", "note": "an earlier stage failed or the run "
                                                                              "was interrupted"})
    ctx.summary["status"] = overall(ctx.summary["stages"], ctx.config.stages)
    try:
        bench = json.loads(ctx.path("bench").read_text()) if ctx.path("bench").is_file() else None
        from .figures import write_figures

        write_figures(ctx, bench)
    except Exception as err:  # noqa: BLE001 - figures never hide the results
        ctx.log(f"figures: not drawn ({type(err).__name__}: {err})")
    ctx.summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ctx.write_summary()
    ctx.log(f"fullrun: {ctx.summary['status']} in {ctx.budget.elapsed():.0f}s; files in {ctx.out}: "
            + ", ".join(sorted(ctx.summary["files"])))
    ctx.close()

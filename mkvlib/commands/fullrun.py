"""mkv fullrun: the full-size run in one command (smoke test, training, search, out-of-domain suite, benchmark,
lm-eval, LoRA) within --minutes, every result under --out (at most eight files). See mkvlib.fullrun."""
from __future__ import annotations

import argparse

from ..cli import add_options


def register(sub) -> None:
    from ..fullrun.config import STAGES, TASKS

    p = sub.add_parser("fullrun", help="the full-size run in one command, within a time budget: smoke test, "
                       "training, search, suite, benchmark, lm-eval, LoRA")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of the whole run (default 10)")
    p.add_argument("--out", required=True, help="folder for the results (new or empty)")
    p.add_argument("--model", default=None, help="Hugging Face id, folder or .gguf (default: embedded SmolLM2-135M)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="training's budget (default: its share of the time left, about 40%%)")
    p.add_argument("--lmeval-limit", type=int, default=None, help="lm-eval items per task (default: full splits)")
    p.add_argument("--tasks", default=",".join(TASKS), help="lm-eval tasks (default piqa,arc_easy,hellaswag)")
    add_options(p, "device")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, else fp32)")
    add_options(p, "seed", overwrite="replace a previous run's files in --out",
                tiny=argparse.SUPPRESS)   # tiny random model: the test rehearsal
    add_options(p, "debug", json="print the summary's stage statuses as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")     # lm-eval's and datasets' progress bars; log.txt tells progress
    from ..fullrun.config import FullRunConfig
    from ..fullrun.runner import run_fullrun

    config = FullRunConfig(out=args.out, minutes=args.minutes, model=args.model, stages=args.stages,
                           train_minutes=args.train_minutes, lmeval_limit=args.lmeval_limit, tasks=args.tasks,
                           device=args.device, dtype=args.dtype, tiny=args.tiny, overwrite=args.overwrite,
                           seed=args.seed)
    try:
        summary = run_fullrun(config)
    except KeyboardInterrupt:
        print(f"mkv fullrun: interrupted; what finished is in {args.out}", flush=True)
        return 130
    stages = {k: {"status": v["status"], "seconds": v.get("seconds"), **({"note": v["note"]} if v.get("note") else {})}
              for k, v in summary["stages"].items()}
    if args.json:
        print(json.dumps({"status": summary["status"], "out": args.out, "elapsed_s": summary["elapsed_s"],
                          "stages": stages}))
    else:
        for name, s in stages.items():
            seconds = "" if s["seconds"] is None else s["seconds"]
            print(f"{name:<7} {s['status']:<11} {seconds:>7}  {s.get('note', '')}")
        print(f"{summary['status']} in {summary['elapsed_s']:.0f}s: {args.out}")
    return 0

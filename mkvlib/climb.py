"""The longer climb: out-of-domain KL against tokens trained, on a log axis, with its trend carried forward.

A run that continues the shipped projections (``mkv train --init trained``, e.g. two processes through
``accelerate launch``) evaluates itself every ``--eval-every`` steps on ``--eval-tokens`` of the out-of-domain
suite, as the last stage of the shipped route did. With the same number of suite tokens both runs read the same
blocks, so their evaluations lie on one curve: :func:`climb_points` places each at the tokens trained since the
route's first end-to-end step, :func:`log_trend` fits KL = a + b log2(tokens) to the continuing run's points (b: the
change per doubling of the tokens) and carries it to a larger token count::

    python -m mkvlib.climb --run build/climb/climb.json --out data/results/climb.json

reads the JSON record ``mkv train`` wrote beside ``build/climb/climb.safetensors`` and the shipped record
(``data/projections/<model>.trained.json``), and writes the points, the fits and the run's settings and cost.
Notebook 02 and docs/results.md show them (:func:`climb_figure`).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import numpy as np

# tokens the full-size GPU run trains on (the README's GPU path): where the trend is read off
GPU_TOKENS = 20_000_000


def _tokens_per_step(record: dict) -> int:
    c = record["config"]
    return int(record["seq_len"] * c["batch_size"] * c.get("grad_accum", 1) * record["hardware"].get("processes", 1))


def _eval_tokens(record: dict) -> int:
    return int((record.get("eval") or {}).get("tokens") or 0)


def climb_points(shipped: dict, run: dict) -> list[dict]:
    """One point per (evaluation, budget) of the shipped record's last stage and of the continuing ``run``:
    source ('shipped route' or 'climb'), step, tokens (trained since the route's first end-to-end step), budget,
    kl_to_base, perplexity_ratio, top1_agreement. ValueError when the two did not read the same suite tokens or
    the run did not start from the shipped projections."""
    if run.get("init_fingerprint") != shipped.get("fingerprint"):
        raise ValueError(f"the run started from projections {run.get('init_fingerprint')}, not the shipped "
                         f"{shipped.get('fingerprint')}: continue them with `mkv train --init trained`")
    if not _eval_tokens(run) or _eval_tokens(run) != _eval_tokens(shipped):
        raise ValueError(f"the run evaluated {_eval_tokens(run)} suite tokens and the shipped run "
                         f"{_eval_tokens(shipped)}: give the run --eval-tokens {_eval_tokens(shipped)}")
    end = int(shipped["tokens_seen"])                    # the route's tokens, its earlier stages included
    start = end - int(shipped["steps"]) * _tokens_per_step(shipped)
    points = []
    for source, record, offset in (("shipped route", shipped, start), ("climb", run, end)):
        per_step = _tokens_per_step(record)
        for ev in record["evals"]:
            if source == "climb" and ev["step"] == 0:
                continue                                 # the shipped projections again: the route's last point
            for row in ev["rows"]:
                points.append(dict(source=source, step=ev["step"], tokens=offset + ev["step"] * per_step,
                                   budget=row["budget"], kl_to_base=row["kl_to_base"],
                                   perplexity_ratio=row["perplexity_ratio"],
                                   top1_agreement=row.get("top1_agreement")))
    return points


def log_trend(tokens, values, at: float) -> dict:
    """Least-squares line of ``values`` on log2(``tokens``): per_doubling (its slope) with a standard error,
    the value it gives ``at`` tokens and the doublings from the last point to there."""
    x, y = np.log2(np.asarray(tokens, float)), np.asarray(values, float)
    if len(x) < 3 or np.ptp(x) == 0:
        raise ValueError(f"a trend needs at least 3 points at different token counts, not {len(x)}")
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    se = math.sqrt(float(residual @ residual) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
    return dict(per_doubling=float(slope), per_doubling_se=se, intercept=float(intercept), points=len(x),
                at_tokens=int(at), doublings=float(math.log2(at) - x.max()),
                extrapolated=float(intercept + slope * math.log2(at)))


def trends(points: list[dict], at: float = GPU_TOKENS, metric: str = "kl_to_base") -> dict:
    """:func:`log_trend` of the climb's own points (and the shipped end it starts from) per budget, keyed
    by the budget as text ('0.5'); with six points or more, ``halves``: the same fit over the first half of the
    points and over the second (they share the middle point), which shows where the curve bends."""
    out = {}
    for b in sorted({p["budget"] for p in points}):
        ps = [p for p in points if p["budget"] == b]
        last_shipped = max((p for p in ps if p["source"] == "shipped route"), key=lambda p: p["tokens"])
        ps = [last_shipped] + [p for p in ps if p["source"] == "climb"]
        t = log_trend([p["tokens"] for p in ps], [p[metric] for p in ps], at)
        half = len(ps) // 2
        if half >= 3:       # where the curve bends: the first half of the points against the second
            t["halves"] = [dict(tokens=[part[0]["tokens"], part[-1]["tokens"]],
                                **log_trend([p["tokens"] for p in part], [p[metric] for p in part], at))
                           for part in (ps[:half + 1], ps[half:])]
        out[str(b)] = t
    return out


def climb_figure(record: dict, budget: float = 0.5):
    """KL at ``budget`` against tokens trained (log axis): the shipped route's last stage, the climb, and the
    climb's trend carried to the GPU run's tokens."""
    import matplotlib.pyplot as plt

    from .plots import finish_figure

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for source, marker in (("shipped route", "s"), ("climb", "o")):
        ps = [p for p in record["points"] if p["source"] == source and p["budget"] == budget]
        ax.plot([p["tokens"] for p in ps], [p["kl_to_base"] for p in ps], marker=marker, label=source)
    t = record["trends"][str(budget)]
    last = max(p["tokens"] for p in record["points"])
    xs = np.geomspace(record["points"][0]["tokens"], t["at_tokens"], 50)
    ax.plot(xs, t["intercept"] + t["per_doubling"] * np.log2(xs), ls="--", color="grey",
            label=f"trend of the climb, {t['per_doubling']:+.3f} per doubling")
    ax.axvline(last, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set(xlabel="tokens trained end to end (log)", ylabel=f"held-out KL at {budget:.0%} (nats/token)",
           title=f"out-of-domain KL at {budget:.0%} against tokens trained")
    ax.legend(fontsize="small")
    return finish_figure(fig)


def launch_line(run: dict) -> str | None:
    """The command line that ran ``run``: its recorded ``mkv`` command, started through ``accelerate launch``
    when it ran in several processes (two CPU processes come from torchrun, which ``--multi_gpu`` starts: accelerate's
    ``--cpu`` starts one process only without mpirun), without the ``--resume`` of a run that was resumed (the
    record's own command keeps it). None when the record holds no command."""
    command, n = run.get("command"), (run.get("hardware") or {}).get("processes", 1)
    if not command:
        return None
    words = shlex.split(command)
    if "--resume" in words[:-1]:              # a resumed run: the command that starts it afresh
        i = words.index("--resume")
        words[i:i + 2] = []
    command = shlex.join(words)
    if n <= 1:
        return command
    return (f"OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes {n} --num_machines 1 --mixed_precision "
            f"no --dynamo_backend no -m mkvlib {command.removeprefix('mkv ')}")


def same_start(shipped: dict, run: dict, budget: float = 0.5) -> dict:
    """KL at ``budget`` of the shipped run's last evaluation and of the run's step-0 evaluation: the same
    projections on the same blocks, so equal up to float noise (the check that the two lie on one curve)."""
    def kl(ev):
        return next((r["kl_to_base"] for r in ev["rows"] if abs(r["budget"] - budget) < 1e-9), None)

    first = next((ev for ev in run["evals"] if ev["step"] == 0), None)
    return dict(budget=budget, shipped_last=kl(shipped["evals"][-1]), climb_step_0=kl(first) if first else None)


def _read(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not a JSON record ({err})") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m mkvlib.climb", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="the JSON record `mkv train --init trained` wrote beside its output")
    p.add_argument("--shipped", default=None, help="the shipped projections' record (default: the model's "
                   "data/projections/<model>.trained.json)")
    p.add_argument("--to", type=float, default=GPU_TOKENS, help=f"tokens to carry the trend to (default "
                   f"{GPU_TOKENS:,}: the full-size GPU run)")
    p.add_argument("--out", required=True, help="results JSON to write")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from .core.io import existing_file, write_json
    from .core.projections import shipped_path

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    run = _read(existing_file(args.run, "training record", " (the .json `mkv train` writes beside --out)"))
    shipped = _read(existing_file(args.shipped or shipped_path("trained", run.get("model", "")).with_suffix(".json"),
                                  "shipped training record"))
    points = climb_points(shipped, run)
    keep = ("command", "model", "init_fingerprint", "fingerprint", "corpora", "train_tokens_available", "tokens_seen",
            "steps", "seq_len", "recall_span", "eval", "wall_time_s", "hardware", "config", "schedule", "finished")
    record = dict(
        what="Out-of-domain KL against tokens trained end to end: the shipped route's last stage and a run that "
             "continues it, both evaluated on the same suite tokens",
        model=run.get("model"), points=points, trends=trends(points, args.to), same_start=same_start(shipped, run),
        run={k: run.get(k) for k in keep}, shipped=dict(fingerprint=shipped.get("fingerprint"),
                                                         tokens_seen=shipped.get("tokens_seen")),
        launch=launch_line(run), command="python -m mkvlib.climb " + shlex.join(argv))
    write_json(args.out, record)
    t = record["trends"].get("0.5")
    if t:
        print(f"KL at 50%: {t['per_doubling']:+.4f} +- {t['per_doubling_se']:.4f} per doubling over {t['points']} "
              f"points; carried {t['doublings']:.1f} doublings to {t['at_tokens']:,} tokens: {t['extrapolated']:.3f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as err:     # what the user can fix: one line, no traceback
        sys.exit(f"python -m mkvlib.climb: error: {err}")

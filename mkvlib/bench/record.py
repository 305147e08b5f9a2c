"""`python -m mkvlib.bench.record decode|memory|profile ... --out FILE`: the records notebook 05 reads
(data/results/bench_*.json), each written by one command line that `mkv reproduce` can rerun.

- ``decode``: :func:`mkvlib.bench.budget_sweep` (compressed cache at each of --budgets against DynamicCache);
- ``memory``: :func:`mkvlib.bench.measure_in_subprocess` for DynamicCache and the compressed cache at batch B, and
  the compressed cache at 2B to check the memory model fitted to the first two; capacity in 8 and 16 GiB;
- ``profile``: torch.profiler over --steps decode steps per cache: self CPU seconds per step of the top ops;
- ``ladder``: decode tokens/s and the bytes each cache held of the precision ladder's real cache (the shipped
  trajectory at each of --bits per element) against DynamicCache, quanto's 4-bit cache and the compressed cache
  at the same bytes, all decoding from one real prefill of a held-out prompt (notebook 08).
"""
from __future__ import annotations

import argparse
import platform
import sys

import torch

from .config import BenchConfig
from .memory import capacity, memory_model, predicted_peak

GIB = 2 ** 30
LIMITS = {"8GiB": 8 * GIB, "16GiB": 16 * GIB}
CONTEXTS = (4096, 16384)


def label(budget: float) -> str:
    return f"compressed_{round(100 * budget)}"


def decode_record(args) -> dict:
    from .run import budget_sweep

    config = BenchConfig(context=args.context, batch=args.batch, new_tokens=args.new_tokens, repeats=args.repeats,
                         synthetic_prefix=True, baselines=("dynamic",))
    return {"rows": budget_sweep(config, args.budgets)}


def fits(models: dict, limit: float, context: int, per_sequence=None) -> dict:
    """Largest batch at ``context`` per memory model within ``limit``, and the ratio of tokens held."""
    out = {name: capacity(m["bytes_per_token"], m["fixed_bytes"], limit, context,
                          m["per_sequence_bytes"] if per_sequence is None else per_sequence)
           for name, m in models.items()}
    first, second = out.values()
    return dict(out, ratio=second["max_tokens"] / first["max_tokens"])


def memory_record(args) -> dict:
    from .process import measure_in_subprocess

    budget = args.budgets[-1]
    point = dict(context=args.context, new_tokens=args.new_tokens, prefill_chunk=args.prefill_chunk, budget=budget)
    runs = [measure_in_subprocess(kind, BenchConfig(batch=batch, **point))
            for kind, batch in (("dynamic", args.batch), ("compressed", args.batch), ("compressed", 2 * args.batch))]
    models = {"dynamic": memory_model(runs[0]), label(budget): memory_model(runs[1])}
    check = runs[2]
    predicted = predicted_peak(models[label(budget)], check["batch"], check["context"] + check["new_tokens"])
    measured = check["model_memory_bytes"] + check["peak_memory_bytes"]
    widest = max(memory_model(r)["per_sequence_bytes"] for r in runs)
    return {"runs": runs, "memory_models": models,
            "verification": {"run": f"compressed {100 * budget:g}%, batch {check['batch']} x {check['context']} "
                                    f"(+{check['new_tokens']} new tokens)",
                             "predicted_peak_bytes": predicted, "measured_peak_bytes": measured,
                             "relative_error": (measured - predicted) / measured},
            "capacity": {f"{name}_ctx{n}": fits(models, limit, n) for name, limit in LIMITS.items() for n in CONTEXTS},
            "capacity_conservative_8GiB_ctx4096": fits(models, LIMITS["8GiB"], CONTEXTS[0], widest)}


def profile_record(args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from ..core.ranks import ranks_for
    from .caches import fill_from, make_cache
    from .run import prepared
    from .speed import decode, shared_prefix

    config = BenchConfig(context=args.context, batch=args.batch, new_tokens=args.steps, synthetic_prefix=True)
    model, proj, ids = prepared(config)
    source, next_ids = shared_prefix(model, ids, config.prefill_chunk, synthetic=True)
    reserve = config.context + args.steps
    factories = {"dynamic": lambda: make_cache("dynamic", model)}
    factories.update({label(b): (lambda r=ranks_for(model, proj, "uniform", b):
                                 make_cache("compressed", model, proj, r, reserve=reserve)) for b in args.budgets})
    out = {}
    for name, factory in factories.items():
        cache = factory()
        fill_from(cache, source)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decode(model, next_ids, cache, args.steps)
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        per_step = {e.key: round(e.self_cpu_time_total / 1e6 / args.steps, 3) for e in ops[:args.top]}
        total = sum(e.self_cpu_time_total for e in ops) / 1e6 / args.steps
        out[name] = dict(per_step, total_s_per_step=round(total, 3))
    return {"profile": out}


def ladder_factories(model, proj, bits_list, reserve: int) -> dict:
    """name -> (() -> empty cache, planned bits per element or None): DynamicCache, quanto's 4-bit cache, and per
    budget the shipped ladder and the compressed cache at the same bytes (uniform ranks, budget bits / dtype bits)."""
    from ..core.geometry import KVGeometry
    from ..ladder import dtype_bits
    from ..core.ranks import resolve_ranks
    from .caches import baseline_factories, make_cache, shipped_ladder

    geom, full = KVGeometry.of(model), dtype_bits(model)
    baselines, _ = baseline_factories(model, ("dynamic", "quanto"))
    out = {name: (factory, None) for name, factory in baselines.items()}
    for b in bits_list:
        lad = shipped_ladder(model, proj, b)
        ranks = resolve_ranks(b / full, geom)
        out[f"ladder@{b:g}"] = (lambda lad=lad: make_cache("ladder", model, proj, lad), lad.bits_per_element())
        out[f"compressed@{b:g}"] = (lambda r=ranks: make_cache("compressed", model, proj, r, reserve=reserve),
                                    float(ranks.sum()) * full / ranks.numel() / geom.head_dim)
    return out


def ladder_record(args) -> dict:
    import statistics

    from ..core.geometry import KVGeometry
    from .run import prepared
    from .speed import decode_speeds

    config = BenchConfig(projections="trained", context=args.context, batch=args.batch, new_tokens=args.new_tokens,
                         repeats=args.repeats, prefill_chunk=args.prefill_chunk)
    model, proj, ids = prepared(config)
    caches = ladder_factories(model, proj, args.bits, config.context + config.new_tokens)
    speeds = decode_speeds(model, ids, {name: f for name, (f, _) in caches.items()}, config.new_tokens,
                           config.repeats, config.prefill_chunk)
    geom = KVGeometry.of(model)
    tokens = config.batch * (config.context + config.new_tokens)
    elements = tokens * geom.layers * geom.kv_heads * 2 * geom.head_dim
    dynamic = statistics.median(speeds["dynamic"])
    rows = []
    for name, (_, planned) in caches.items():
        wall = statistics.median(speeds[name])
        held = speeds["_bytes"][name]
        rows.append(dict(cache=name, kind=name.split("@")[0], planned_bits_per_element=planned,
                         context=config.context, batch=config.batch, new_tokens=config.new_tokens, prefix="real",
                         decode_tokens_per_s=wall, decode_tokens_per_s_runs=speeds[name],
                         decode_tokens_per_cpu_s=statistics.median(speeds[name + "_cpu"]),
                         speedup=wall / dynamic, cache_bytes=held, tokens_held=tokens,
                         measured_bits_per_element=held * 8 / elements))
    return {"projections": "trained", "prefill_s": speeds["_prefill_s"], "rows": rows}


RECORDS = {"decode": decode_record, "memory": memory_record, "profile": profile_record, "ladder": ladder_record}


def main(argv=None) -> int:
    from ..commands.common import hardware
    from ..core.io import write_json

    p = argparse.ArgumentParser(prog="python -m mkvlib.bench.record", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=sorted(RECORDS))
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prefill-chunk", type=int, default=256)
    p.add_argument("--steps", type=int, default=2, help="profile: decode steps profiled")
    p.add_argument("--top", type=int, default=6, help="profile: ops listed per cache")
    p.add_argument("--budgets", default="1.0,0.5", help="comma-separated budgets (memory: the last)")
    p.add_argument("--bits", default="4,2", help="ladder: comma-separated bits per element of the shipped ladder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.bits = [float(b) for b in args.bits.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    record = RECORDS[args.what](args)
    machine = f"{platform.platform()}, {torch.get_num_threads()} torch thread(s), float32"
    write_json(args.out, dict(command="python -m mkvlib.bench.record " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv),
                              machine=machine, hardware=hardware("cpu"), **record))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""mkv bench: cache bytes, peak memory, prefill time and decode tokens/s of the compressed cache against
DynamicCache and transformers' 4-bit quantized cache (quanto). See mkvlib.bench and notebook 05."""
from __future__ import annotations

from ..cli import add_options
from .common import emit


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure the real compressed KV cache against DynamicCache and quanto")
    add_options(p, "model")
    p.add_argument("--projections", default="pca", help="'pca', 'trained' (shipped) or a .safetensors file")
    p.add_argument("--budget", type=float, default=0.5, help="KV budget in (0, 1] (default 0.5)")
    p.add_argument("--allocation", choices=["uniform", "adaptive"], default="uniform",
                   help="uniform ranks, or the shipped greedy-search allocation for these projections")
    p.add_argument("--context", type=int, default=1024, help="prompt tokens per sequence (default 1024)")
    p.add_argument("--batch", type=int, default=4, help="sequences decoded together (default 4)")
    p.add_argument("--new-tokens", type=int, default=16, help="greedy decode steps timed (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved decode rounds; medians reported (default 3)")
    p.add_argument("--prefill-chunk", type=int, default=512, help="prompt tokens per prefill forward (default 512)")
    p.add_argument("--baselines", default="dynamic,quanto", help="comma-separated: dynamic,quanto (default both)")
    add_options(p, no_memory="skip the fresh-process peak-memory and prefill runs",
                synthetic_prefix="decode from random keys/values instead of a real prefill (decode cost does not "
                "depend on the values; for long contexts on a slow CPU)")
    p.add_argument("--out", default=None, help="also write the result as JSON to this file")
    add_options(p, "json", "debug")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench.config import BenchConfig
    from ..bench.run import run_bench
    from ..core.io import write_json

    baselines = tuple(b for b in args.baselines.split(",") if b)
    if "dynamic" not in baselines:
        raise ValueError("--baselines must include 'dynamic': every ratio is taken against DynamicCache")
    config = BenchConfig(projections=args.projections, budget=args.budget, allocation=args.allocation,
                         context=args.context, batch=args.batch, new_tokens=args.new_tokens, repeats=args.repeats,
                         prefill_chunk=args.prefill_chunk, baselines=baselines, memory=not args.no_memory,
                         synthetic_prefix=args.synthetic_prefix, model=args.model)
    result = run_bench(config, progress=not args.json)
    if args.out:
        write_json(args.out, result)
    emit(result, args.json)
    return 0

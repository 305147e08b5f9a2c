"""mkv compare: every method at matched real bytes on long-context retrieval and held-out perplexity/KL.

    mkv compare --methods pca,matryoshka,quant,streaming --bytes 0.25,0.125 --tasks ppl,passkey,niah,vt \\
        --lengths 1024,4096 --n 8 --out runs/compare.json

Resumable: each item is stored as it finishes (in ``items/`` beside the JSON: ``runs/items/compare_items.csv``),
and a rerun of the same command computes only what is missing. A cost estimate is printed first. Results go to
``runs/`` (git-ignored) unless ``--out`` says otherwise. ``MKV_FAST=1`` makes it CI-sized (256 tokens, one item
per task).
"""
from __future__ import annotations

from ..cli import add_options
from .common import emit, invocation, parse_numbers, split_list


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare KV-cache compression methods at matched bytes (feature axis, token "
                       "eviction, quantization) on retrieval tasks and held-out perplexity/KL")
    p.add_argument("--methods", default="all", help="comma-separated method specs: registered names, options after "
                   "colons (matryoshka:allocation=uniform); 'all' (default) = every registered method")
    p.add_argument("--bytes", default="0.25,0.125", help="byte fractions of the uncompressed cache (default "
                   "0.25,0.125); each method runs at its nearest setting, the fraction it reaches recorded")
    p.add_argument("--tasks", default="ppl,passkey,niah,vt", help="ppl (out-of-domain suite), passkey, niah "
                   "(multi-key needle), vt (variable tracking)")
    p.add_argument("--lengths", default=None, help="context lengths in tokens (default 1024,4096; 256 with MKV_FAST=1)")
    p.add_argument("--n", type=int, default=None, help="items per task and length (default 8; 1 with MKV_FAST=1)")
    add_options(p, seed="seed of the generated items")
    p.add_argument("--out", default=None, help="JSON summary (default runs/compare.json); items are stored "
                   "in items/<stem>_items.csv beside it, which a rerun resumes from")
    add_options(p, "model", "device", "debug", json="print the summary as one JSON object")
    p.set_defaults(func=run)


def method_specs(text: str) -> list[str]:
    from ..compare import REGISTRY

    specs = split_list(text, "--methods", hint=": give names such as pca,matryoshka,quant (or all)")
    return sorted(REGISTRY) if specs == ["all"] else specs


def run(args) -> int:
    from pathlib import Path

    from ..compare.run import CompareSpec, format_table, run_compare
    from ..models import load_model
    from ..runtime import pick, runs_dir

    spec = CompareSpec(method_specs(args.methods), parse_numbers(args.bytes, "--bytes"),
                       [t.strip() for t in args.tasks.split(",") if t.strip()],
                       parse_numbers(args.lengths or pick("256", "1024,4096"), "--lengths", int),
                       args.n if args.n is not None else pick(1, 8), args.seed)
    out = Path(args.out) if args.out else runs_dir() / "compare.json"
    if out.suffix != ".json":
        raise ValueError(f"--out is a .json file (the items go beside it), not {str(out)!r}")
    model, tokenizer = load_model(args.model, device=args.device)
    result = run_compare(model, tokenizer, spec, out, progress=not args.json, command=invocation())
    if args.json:
        emit(result, True)
        return 0
    print(f"{result['model']} | {len(spec.tasks)} tasks x {spec.lengths} tokens, {spec.n} items each | "
          f"bytes asked: {spec.fractions} | summary {out}")
    print(format_table(result))
    return 0

"""mkv eval: perplexity, KL to the uncompressed model and top-1 agreement at a budget or explicit ranks."""
from __future__ import annotations

import json

import torch

from .common import add_model_args, emit, setup


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate compressed attention on held-out text")
    add_model_args(p, tokens_fast=2048, tokens_full=16384, role="eval")
    p.add_argument("--projections", default="pca", help="'pca', 'trained' (shipped) or a .safetensors file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget", type=float, default=None, help="KV budget in (0, 1] (default 0.5)")
    g.add_argument("--ranks", default=None, help="JSON file with a (layers, kv_heads, 2) list of ranks")
    g.add_argument("--budgets", default=None, help="comma-separated budgets: one row per budget, base computed once "
                   "(e.g. 1,0.875,0.75,0.625,0.5,0.375,0.25,0.125)")
    p.add_argument("--allocation", choices=["uniform", "adaptive"], default="uniform",
                   help="uniform ranks, or the shipped greedy-search trajectory for these projections")
    p.add_argument("--trajectory", default=None, metavar="JSON",
                   help="adaptive ranks from this `mkv search` file instead of the shipped one (implies adaptive)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def resolve_rank_args(args, model, projections):
    """Ranks from --ranks FILE, or from --budget with the chosen allocation."""
    if args.ranks:
        with open(args.ranks) as fh:
            data = json.load(fh)
        return torch.tensor(data["ranks"] if isinstance(data, dict) else data)
    budget = 0.5 if args.budget is None else args.budget
    if args.allocation == "adaptive":
        from .. import search  # provided by the rank-search module

        return search.adaptive_ranks(model, projections, budget, args.trajectory)
    return budget


def parse_budgets(text: str) -> list[float]:
    from ..geometry import check_budget

    try:
        budgets = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--budgets must be comma-separated numbers in (0, 1], not {text!r}") from None
    for b in budgets:
        check_budget(b)
    return budgets


def run(args) -> int:
    from ..compress import attach
    from ..metrics import quality_curve
    from ..projections import resolve_projections

    budgets = parse_budgets(args.budgets) if args.budgets else None
    if args.trajectory:
        args.allocation = "adaptive"
    model, _, blocks = setup(args)
    proj = resolve_projections(args.projections, model)
    if budgets:
        settings = []
        for b in budgets:
            args.budget = b
            settings.append(resolve_rank_args(args, model, proj))
    else:
        settings = [resolve_rank_args(args, model, proj)]
    with attach(model, proj, settings[0]) as comp:
        rows = quality_curve(model, blocks, comp, settings, args.batch_size, progress=not args.json)
    common = dict(model=model.mkv_name, projections=args.projections, fingerprint=proj.fingerprint(),
                  allocation="explicit" if args.ranks else args.allocation, corpus=args.corpus, seq_len=args.seq_len)
    if budgets is None:
        emit(dict(rows[0], **common), args.json)
    elif args.json:
        emit(dict(common, rows=rows), True)
    else:
        print(f"{common['model']} | {common['projections']} ({common['fingerprint']}) | {common['allocation']} | "
              f"{common['corpus']}, {rows[0]['tokens']} tokens, base perplexity {rows[0]['base_perplexity']:.2f}")
        print(f"{'budget':>7} {'perplexity':>11} {'ratio':>7} {'KL':>7} {'top-1':>7}")
        for r in rows:
            print(f"{r['budget']:>7.3f} {r['perplexity']:>11.2f} {r['perplexity_ratio']:>7.2f} "
                  f"{r['kl_to_base']:>7.3f} {r['top1_agreement']:>7.3f}")
    return 0

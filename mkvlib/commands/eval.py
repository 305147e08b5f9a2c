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
    p.add_argument("--allocation", choices=["uniform", "adaptive"], default="uniform",
                   help="uniform ranks, or the shipped greedy-search trajectory for these projections")
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

        return search.adaptive_ranks(model, projections, budget)
    return budget


def run(args) -> int:
    from ..compress import attach
    from ..metrics import evaluate
    from ..projections import resolve_projections

    model, _, blocks = setup(args)
    proj = resolve_projections(args.projections, model)
    ranks = resolve_rank_args(args, model, proj)
    with attach(model, proj, ranks) as comp:
        result = evaluate(model, blocks, comp, args.batch_size, progress=not args.json)
    result.update(model=model.mkv_name, projections=args.projections, fingerprint=proj.fingerprint(),
                  allocation="explicit" if args.ranks else args.allocation, corpus=args.corpus,
                  seq_len=args.seq_len)
    emit(result, args.json)
    return 0

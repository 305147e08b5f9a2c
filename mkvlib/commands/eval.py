"""mkv eval: perplexity, KL to the uncompressed model and top-1 agreement at a budget or explicit ranks.

With ``--suite ood`` it evaluates the out-of-domain suite (:mod:`mkvlib.suite`) instead of one corpus: a table
per method (each --projections with each --allocation) with a line per domain and their mean; ``--retrieval``
adds passkey retrieval (:mod:`mkvlib.retrieval`) at 1k and 4k tokens beside the uncompressed model's score.
"""
from __future__ import annotations

import json
import time

import torch

from ..cli import add_options
from ..core.ranks import ranks_for
from ..suite import IN_DOMAIN_SEED, IN_DOMAIN_SKIP, SUITES
from .common import add_model_args, emit, hardware, invocation, parse_numbers, setup, split_list


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate compressed attention on held-out text (or the out-of-domain suite)")
    add_model_args(p, tokens_fast=2048, tokens_full=16384, role="eval")
    p.set_defaults(seq_len=None)   # 256, or 512 with --suite
    p.add_argument("--projections", default="pca", help="'pca', 'trained' (shipped) or a .safetensors file; with "
                   "--suite a comma-separated list, e.g. pca,trained")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget", type=float, default=None, help="KV budget in (0, 1] (default 0.5)")
    g.add_argument("--ranks", default=None, help="JSON file with a (layers, kv_heads, 2) list of ranks")
    g.add_argument("--budgets", default=None, help="comma-separated budgets: one row per budget, base computed once "
                   "(e.g. 1,0.875,0.75,0.625,0.5,0.375,0.25,0.125)")
    p.add_argument("--allocation", default="uniform", metavar="{uniform,adaptive}",
                   help="uniform ranks, or the shipped greedy-search trajectory for these projections; with --suite "
                   "both as uniform,adaptive")
    p.add_argument("--trajectory", default=None, metavar="JSON",
                   help="adaptive ranks from this `mkv search` file instead of the shipped one (implies adaptive)")
    p.add_argument("--suite", choices=SUITES, default=None, help="the out-of-domain suite (mkvlib.suite) instead "
                   "of --corpus: --tokens per domain (default 4096; 512 fast), --seq-len 512, --budgets 0.5,0.375")
    add_options(p, retrieval="with --suite: passkey retrieval too (exact match, uncompressed score beside, the "
                "budget where it first fails)")
    p.add_argument("--retrieval-lengths", default=None, help="passkey prompt lengths in tokens (default 1024,4096; "
                   "1024 with MKV_FAST=1)")
    p.add_argument("--retrieval-n", type=int, default=None, help="passkey prompts per length (default 8; 2 fast)")
    p.add_argument("--retrieval-seed", type=int, default=0, help="seed of the passkey prompts")
    p.add_argument("--position-offset", type=int, default=0, metavar="N",
                   help="feed blocks and prompts at positions N, N+1, ...: how post-RoPE projections hold late in a "
                   "long context, without its cost (default 0)")
    p.add_argument("--in-domain", type=int, default=0, metavar="TOKENS",
                   help=f"with --suite: also TOKENS of the training mixture past the first {IN_DOMAIN_SKIP:,} (never "
                   "trained on), as domain 'in-domain', out of the mean (default 0)")
    p.add_argument("--keep-first", type=int, default=0, metavar="N",
                   help="with --suite: also keep each block's first N tokens whole; budgets then count their bytes "
                   "too (default 0)")
    p.add_argument("--keep-recent", default="0", metavar="N[,N...]",
                   help="with --suite: also keep each query's N latest tokens whole; one method per value (default 0)")
    p.add_argument("--out", default=None, metavar="JSON", help="with --suite: also write the result, with this "
                   "command, the hardware and the wall time, atomically to this file")
    add_options(p, "json")
    p.set_defaults(func=run)


SUITE_BUDGETS = (0.5, 0.375)
ALLOCATIONS = ("uniform", "adaptive")


def resolve_rank_args(args, model, projections):
    """Ranks from --ranks FILE, or from --budget with the chosen allocation."""
    if args.ranks:
        with open(args.ranks) as fh:
            data = json.load(fh)
        return torch.tensor(data["ranks"] if isinstance(data, dict) else data)
    budget = 0.5 if args.budget is None else args.budget
    return ranks_for(model, projections, args.allocation, budget, args.trajectory)


def parse_budgets(text: str) -> list[float]:
    from ..core.checks import check_budgets

    return list(check_budgets(text, "--budgets"))


def parse_allocations(text: str) -> list[str]:
    values = split_list(text, "--allocation")
    for v in values:
        if v not in ALLOCATIONS:
            raise ValueError(f"--allocation takes {' or '.join(ALLOCATIONS)} (comma-separated with --suite), not {v!r}")
    return list(dict.fromkeys(values))


def parse_lengths(text: str) -> list[int]:
    lengths = parse_numbers(text, "--retrieval-lengths", int, "must be comma-separated token counts such as 1024,4096")
    if any(n < 64 for n in lengths):
        raise ValueError(f"--retrieval-lengths must be at least 64 tokens each, not {text!r}")
    return lengths


def check_offset(args, model, longest: int) -> None:
    """--position-offset must be >= 0 and leave room for ``longest`` tokens in the model's context window."""
    from ..core.positions import max_positions

    room = max_positions(model)
    if args.position_offset < 0 or args.position_offset + longest > room:
        raise ValueError(f"--position-offset {args.position_offset} with {longest}-token sequences does not fit the "
                         f"model's {room}-token window: give 0 to {max(0, room - longest)}")


def run(args) -> int:
    allocations = parse_allocations(args.allocation)
    if args.trajectory and "adaptive" not in allocations:
        allocations = ["adaptive"]
    if args.seq_len is None:
        args.seq_len = 512 if args.suite else 256
    if args.suite:
        return run_suite(args, allocations)
    for flag, given in (("--retrieval", args.retrieval), ("--in-domain", args.in_domain), ("--out", args.out),
                        ("--keep-first", args.keep_first), ("--keep-recent", args.keep_recent not in ("", "0"))):
        if given:
            raise ValueError(f"{flag} is part of the out-of-domain suite: add --suite ood")
    if len(allocations) > 1 or len(split_list(args.projections, "--projections")) > 1:
        raise ValueError("several --projections or --allocation values need --suite ood (one table per method)")
    args.allocation = allocations[0]
    return run_corpus(args)


def run_corpus(args) -> int:
    from ..core.compress import attach
    from ..metrics import quality_curve
    from ..core.positions import shifted
    from ..core.projections import resolve_projections

    budgets = parse_budgets(args.budgets) if args.budgets else None
    model, _, blocks = setup(args)
    proj = resolve_projections(args.projections, model)
    settings = []
    for b in budgets or [args.budget]:
        args.budget = b
        settings.append(resolve_rank_args(args, model, proj))
    check_offset(args, model, blocks.shape[1])
    with attach(model, proj, settings[0]) as comp, shifted(model, args.position_offset):
        rows = quality_curve(model, blocks, comp, settings, args.batch_size, progress=not args.json)
    common = dict(model=model.mkv_name, projections=args.projections, fingerprint=proj.fingerprint(),
                  allocation="explicit" if args.ranks else args.allocation, corpus=args.corpus, seq_len=args.seq_len,
                  position_offset=args.position_offset)
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


def method_record(method, model) -> dict:
    """A method as a result file stores it: label, projections (name and fingerprint), allocation, trajectory."""
    from ..core.projections import resolve_projections

    whole = dict(keep_first=method.keep_first, keep_recent=method.keep_recent) \
        if method.keep_first or method.keep_recent else {}
    return dict(label=method.name, projections=method.projections, allocation=method.allocation,
                fingerprint=resolve_projections(method.projections, model).fingerprint(),
                trajectory=method.trajectory, **whole)


def in_domain_spec(args) -> dict | None:
    """How the in-domain text of --in-domain is taken, for the record (None without it, or without the training
    mixture of a data folder)."""
    from ..corpora import DEFAULT_TRAINING_MIXTURE, default_corpus

    if not args.in_domain or default_corpus("training") != DEFAULT_TRAINING_MIXTURE:
        return None
    return dict(corpus=default_corpus("training"), tokens=args.in_domain, skip_tokens=IN_DOMAIN_SKIP,
                seed=IN_DOMAIN_SEED)


def in_domain_rows(model, tokenizer, methods, budgets, args) -> list[dict]:
    """Suite rows (domain 'in-domain') on unseen text of the training mixture, outside the suite's mean."""
    from ..corpora import mixture_blocks
    from ..suite import compare_suite

    spec = in_domain_spec(args)
    blocks = mixture_blocks(tokenizer, spec["corpus"], args.seq_len, spec["tokens"], seed=spec["seed"],
                            skip_tokens=spec["skip_tokens"])
    rows = compare_suite(model, methods, budgets, {"in-domain": blocks}, args.batch_size, progress=False)
    return [r for r in rows if r["domain"] == "in-domain"]


def suite_settings(args) -> tuple[list, list, int, int]:
    """(budgets, retrieval lengths, passkey prompts per length, tokens per domain) of ``mkv eval --suite``, checked."""
    from ..runtime import pick
    from ..suite import default_tokens

    if args.corpus:
        raise ValueError("--suite chooses its own text (mkvlib.suite.DOMAINS): leave out --corpus")
    if args.ranks:
        raise ValueError("--ranks is not supported with --suite: give --budgets (and --allocation)")
    budgets = parse_budgets(args.budgets) if args.budgets else [args.budget] if args.budget else list(SUITE_BUDGETS)
    lengths = parse_lengths(args.retrieval_lengths or pick("1024", "1024,4096"))
    n_prompts = args.retrieval_n or pick(2, 8)
    if n_prompts < 1:
        raise ValueError(f"--retrieval-n must be at least 1, not {n_prompts}")
    tokens = args.tokens or default_tokens()
    if tokens < args.seq_len:
        raise ValueError(f"--tokens ({tokens}) must be at least --seq-len ({args.seq_len})")
    if args.in_domain and args.in_domain < args.seq_len:
        raise ValueError(f"--in-domain ({args.in_domain}) must be 0 or at least --seq-len ({args.seq_len}) tokens")
    return budgets, lengths, n_prompts, tokens


def parse_recent(text: str) -> list[int]:
    values = parse_numbers(text, "--keep-recent", int, "takes comma-separated token counts such as 0,32")
    return list(dict.fromkeys(values))


def suite_methods(args, allocations) -> list:
    """One method per (projections, allocation, --keep-recent value); labels name the whole tokens kept."""
    from ..core.ranks import Method
    from ..suite import suite_label

    recents = parse_recent(args.keep_recent)

    def label(p, a, recent):
        whole = f", {args.keep_first} first + {recent} recent tokens whole" if args.keep_first or recent else ""
        return f"{suite_label(p)}, {a}{whole}"

    return [Method(label(p, a, w), p, a, args.trajectory if a == "adaptive" else None, args.keep_first, w)
            for p in split_list(args.projections, "--projections") for a in allocations for w in recents]


def run_suite(args, allocations) -> int:
    """mkv eval --suite ood: every (projections, allocation) method at every budget on every domain."""
    from ..models import load_model
    from ..core.positions import shifted
    from ..core.projections import resolve_projections
    from ..retrieval import format_retrieval_table, retrieval_curve
    from ..suite import DOMAINS, compare_suite, format_suite_table, suite_blocks

    budgets, lengths, n_prompts, tokens = suite_settings(args)
    methods = suite_methods(args, allocations)
    model, tokenizer = load_model(args.model, device=args.device)
    for m in methods:   # missing projections or trajectories, or budgets too small for whole tokens, fail here
        [m.ranks(model, resolve_projections(m.projections, model), m.feature_budget(b, args.seq_len)) for b in budgets]
    check_offset(args, model, max([args.seq_len] + ([n + 8 for n in lengths] if args.retrieval else [])))
    blocks = suite_blocks(tokenizer, tokens, args.seq_len)
    start = time.time()
    with shifted(model, args.position_offset):
        rows = compare_suite(model, methods, budgets, blocks, args.batch_size, progress=not args.json)
        if args.in_domain and in_domain_spec(args) is None:
            from ..runtime import note
            note("note: --in-domain needs the training mixture of a data folder (without one, training reads the "
                 "model's own samples, so no unseen in-domain text exists): no in-domain rows")
        elif args.in_domain:
            rows += in_domain_rows(model, tokenizer, methods, budgets, args)
        result = dict(model=model.mkv_name, suite=args.suite, seq_len=args.seq_len, tokens_per_domain=tokens,
                      domains=list(blocks), skipped=[d for d in DOMAINS if d not in blocks], budgets=budgets,
                      methods=[method_record(m, model) for m in methods], position_offset=args.position_offset,
                      in_domain=in_domain_spec(args), rows=rows)
        if args.retrieval:
            result["retrieval"] = retrieval_curve(model, tokenizer, methods, budgets, lengths, n_prompts,
                                                  args.retrieval_seed, progress=not args.json)
    if args.out:
        from ..core.io import write_json

        write_json(args.out, dict(result, command=invocation(), wall_time_s=round(time.time() - start),
                                  hardware=hardware(model.device)))
    if args.json:
        emit(result, True)
        return 0
    where = f" from position {args.position_offset}" if args.position_offset else ""
    print(f"{result['model']} | out-of-domain suite '{args.suite}' | {len(blocks)} domains x {tokens} tokens, "
          f"blocks of {args.seq_len}{where} | perplexity ratio (ppl x) and KL to the uncompressed model")
    print(format_suite_table(rows))
    if args.retrieval:
        print()
        print(format_retrieval_table(result["retrieval"]))
    return 0

"""mkv search: the greedy adaptive rank search, recorded as a trajectory JSON file (with precomputed quality)."""
from __future__ import annotations

from ..cli import add_options
from .common import (add_model_args, add_positions_arg, add_whole_token_args, check_suffix, emit, invocation,
                     load_model_and_adapter)

SUITE_TOKENS = (512, 1024)   # readout tokens per suite domain: fast, full


def register(sub) -> None:
    p = sub.add_parser("search", help="greedy adaptive rank search: record the trajectory from 100%% to the floor")
    add_model_args(p, tokens_fast=256, tokens_full=256, role="calibration")
    p.add_argument("--projections", default="pca",
                   help="'pca', 'trained' (shipped), a .safetensors file, or 'bundle' (with --adapter)")
    add_options(p, "adapter")
    p.add_argument("--step", type=int, default=None, help="rank decrement per committed step (default 8; 16 fast)")
    p.add_argument("--min-rank", type=int, default=None, help="floor of every rank (default 8; 16 fast)")
    p.add_argument("--stop-budget", type=float, default=None, help="stop at this budget (default: the floor)")
    p.add_argument("--batched", type=int, default=1, help="commit the k best candidates per scoring pass")
    p.add_argument("--strategy", choices=["exact", "lazy", "proxy"], default=None,
                   help="candidate scoring (default proxy): see mkvlib.search.SearchConfig")
    p.add_argument("--shortlist", type=int, default=0, help="proxy: re-score this many front-runners exactly per pass")
    p.add_argument("--proxy-refresh", type=int, default=None,
                   help="proxy: rebuild it around the current ranks this many times on the way (default 2; 0 fast)")
    p.add_argument("--balance", choices=["pooled", "separate"], default="pooled",
                   help="one pooled K+V budget, or key and value budgets falling together")
    p.add_argument("--nll-weight", type=float, default=None,
                   help="score steps by KL + W * calibration NLL change (default 0: KL alone, the paper's search)")
    p.add_argument("--max-spread", type=int, default=None,
                   help="keep the highest and lowest rank within this many of each other (default: no limit)")
    p.add_argument("--recall-span", type=int, default=None, help="make each calibration block's last N tokens "
                   "repeat a span from its start, so breaking lookup costs KL (default 0); 2N + seq-len/4 <= seq-len")
    add_positions_arg(p)
    add_whole_token_args(p, "score steps")
    p.add_argument("--protect-heads", default=None, metavar="FILE", help="never lower the keys and values of the "
                   "--protect-top best KV heads of this retrieval-heads file (python -m mkvlib.retrieval_heads)")
    p.add_argument("--protect-top", type=int, default=None, help="how many of --protect-heads' KV heads to keep whole")
    p.add_argument("--eval-corpus", default=None, help="one held-out corpus for the precomputed readout instead of "
                   "the default, the out-of-domain suite (mkvlib.suite: the mean over its domains)")
    p.add_argument("--eval-tokens", type=int, default=None, help="readout tokens per suite domain (default "
                   f"{SUITE_TOKENS[1]}; {SUITE_TOKENS[0]} fast), or in all with --eval-corpus (default 2048; 512 fast)")
    p.add_argument("--grid", type=int, default=None, help="budgets in the precomputed grid (default 8; 4 fast; "
                   "0: no readout now; with --readout-only: the file's own budgets)")
    p.add_argument("--readout-only", default=None, metavar="TRAJECTORY", help="search nothing: measure this "
                   "trajectory's readout again and rewrite only its `evaluations` (in place, or to --out); "
                   "--projections must be those it was searched with")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)")
    p.add_argument("--out", default=None, help="output trajectory .json (required unless --readout-only)")
    add_options(p, "json")
    p.set_defaults(func=run, seq_len=None)


def config_from_args(args):
    """A :class:`SearchConfig` from the command line (fast-mode defaults where an option is not given)."""
    from ..core.env import fast_mode
    from ..search import SearchConfig

    base = SearchConfig.fast() if fast_mode() else SearchConfig()
    if (args.protect_heads is None) != (args.protect_top is None):
        raise ValueError("--protect-heads FILE and --protect-top N go together: the file ranks the KV heads, N says "
                         "how many of them keep their keys and values whole")
    if args.protect_heads is not None:
        from ..retrieval_heads import load_protected

        base = base.with_(protect=load_protected(args.protect_heads, args.protect_top))
    given = dict(step=args.step, min_rank=args.min_rank, stop_budget=args.stop_budget, strategy=args.strategy,
                 seq_len=args.seq_len, tokens=args.tokens, batch_size=args.batch_size, corpus=args.corpus,
                 nll_weight=args.nll_weight, max_spread=args.max_spread, recall_span=args.recall_span,
                 proxy_refresh=args.proxy_refresh, keep_first=args.keep_first, keep_recent=args.keep_recent)
    return base.with_(batched=args.batched, shortlist=args.shortlist, balance=args.balance, positions=args.positions,
                      **{k: v for k, v in given.items() if v is not None})


def readout_blocks(args, tokenizer, seq_len: int):
    """(blocks, corpus) of the precomputed readout: the out-of-domain suite {domain: (n, seq_len)} named
    'ood suite', or one corpus (n, seq_len) with --eval-corpus."""
    from ..corpora import token_blocks
    from ..runtime import pick
    from ..suite import suite_blocks
    from ..core.trajectory import SUITE_CORPUS

    if args.eval_corpus:
        return token_blocks(tokenizer, args.eval_corpus, seq_len, args.eval_tokens or pick(512, 2048)), args.eval_corpus
    tokens = args.eval_tokens or max(pick(*SUITE_TOKENS), seq_len)
    return suite_blocks(tokenizer, tokens, seq_len=seq_len), SUITE_CORPUS


def _set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _summary(traj) -> dict:
    return {f"{r['allocation']}@{r['budget']:.3f}": (round(r["perplexity"], 2), round(r["kl_to_base"], 4))
            for r in (traj.evaluations or {}).get("rows", [])}


def run(args) -> int:
    if args.readout_only:
        return run_readout(args)
    import time

    from ..corpora import default_corpus, token_blocks
    from ..core.projections import resolve_projections
    from ..runtime import pick
    from ..search import budget_grid, evaluate_trajectory, greedy_search

    if not args.out:
        raise ValueError("give --out FILE.json for the trajectory (or --readout-only FILE to re-measure one)")
    check_suffix(args.out, ".json")
    config = config_from_args(args)
    _set_threads(args)
    model, tokenizer = load_model_and_adapter(args)
    proj = resolve_projections(args.projections, model)
    corpus = config.corpus or default_corpus("calibration")
    blocks = token_blocks(tokenizer, corpus, config.seq_len, config.tokens)
    config = config.with_(corpus=corpus)
    start = time.time()
    traj = greedy_search(model, proj, blocks, config, progress=not args.json)
    search_seconds = time.time() - start
    traj.meta.update(projections=args.projections, calibration_corpus=corpus)
    command = invocation()
    if command:
        traj.meta["command"] = command
    if args.protect_heads:
        traj.meta["protected"] = {"heads_file": args.protect_heads, "top": args.protect_top}
    if args.adapter:
        traj.meta["adapter"] = {"path": args.adapter, "weights_hash": model.mkv_adapter}
    eval_corpus = None
    if args.grid != 0:                  # 0: no readout now (--readout-only adds it, at any --seq-len)
        eval_blocks, eval_corpus = readout_blocks(args, tokenizer, config.seq_len)
        grid = budget_grid(traj, args.grid or pick(4, 8))
        evaluate_trajectory(model, proj, traj, eval_blocks, grid, eval_corpus, config.batch_size,
                            progress=not args.json)
    traj.meta["total_seconds"] = round(time.time() - start, 2)
    traj.save(args.out)
    emit({"out": args.out, "model": traj.model, "fingerprint": traj.fingerprint, "steps": len(traj),
          "final_budget": traj.final_budget, "search_seconds": round(search_seconds, 1),
          "candidate_evaluations": traj.meta["candidate_evaluations"], "readout": eval_corpus,
          "perplexity_kl": _summary(traj)}, args.json)
    return 0


def run_readout(args) -> int:
    """--readout-only FILE: measure the readout of an existing trajectory again; only ``evaluations`` (and the
    meta's record of how the readout was made) change. Budgets: the file's own grid unless --grid is given."""
    import time

    from ..core.io import existing_file
    from ..core.projections import resolve_projections
    from ..search import budget_grid, evaluate_trajectory
    from ..core.trajectory import Trajectory

    path = existing_file(args.readout_only, "trajectory file", "; --readout-only names an existing trajectory .json")
    out = args.out or str(path)
    check_suffix(out, ".json")
    traj = Trajectory.load(path)
    old = traj.evaluations or {}
    budgets = sorted({r["budget"] for r in old.get("rows") or []}, reverse=True)
    if args.grid or not budgets:
        budgets = budget_grid(traj, args.grid or 8)
    cfg = traj.meta.get("config") or {}
    seq_len = args.seq_len or cfg.get("seq_len") or 256
    batch_size = cfg.get("batch_size") or args.batch_size
    _set_threads(args)
    if (traj.meta.get("adapter") or {}).get("path") and not args.adapter:
        raise ValueError(f"{path} was searched on a model with the adapter {traj.meta['adapter']['path']} merged "
                         "in: give the same --adapter")
    model, tokenizer = load_model_and_adapter(args)
    proj = resolve_projections(args.projections, model)
    traj.check_projections(proj, model)          # before any text is read or measured
    eval_blocks, eval_corpus = readout_blocks(args, tokenizer, seq_len)
    start = time.time()
    evaluate_trajectory(model, proj, traj, eval_blocks, budgets, eval_corpus, batch_size, progress=not args.json)
    traj.meta["readout"] = {"command": invocation(), "seconds": round(time.time() - start, 1),
                            "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    traj.save(out)                                # atomic: the old file or the whole new one
    emit({"out": out, "model": traj.model, "fingerprint": traj.fingerprint, "steps": len(traj),
          "readout": eval_corpus, "budgets": budgets, "perplexity_kl": _summary(traj)}, args.json)
    return 0

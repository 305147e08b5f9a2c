"""mkv search: the greedy adaptive rank search, recorded as a trajectory JSON file (with precomputed quality)."""
from __future__ import annotations

from .common import add_adapter_arg, add_model_args, emit, load_model_and_adapter


def register(sub) -> None:
    p = sub.add_parser("search", help="greedy adaptive rank search: record the trajectory from 100%% to the floor")
    add_model_args(p, tokens_fast=256, tokens_full=256, role="calibration")
    p.add_argument("--projections", default="pca",
                   help="'pca', 'trained' (shipped), a .safetensors file, or 'bundle' (with --adapter)")
    add_adapter_arg(p)
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
    p.add_argument("--recall-span", type=int, default=None,
                   help="make each calibration block's last N tokens repeat a span from its start, so that breaking "
                        "long-range lookup costs KL (default 0: blocks as they are); needs 2N + seq-len/4 <= --seq-len")
    p.add_argument("--eval-corpus", default=None, help="held-out text for the precomputed readout "
                   "(default wikitext2 test with MKV_DATA_DIR, else pydoc-test)")
    p.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens (default 2048; 512 fast)")
    p.add_argument("--grid", type=int, default=None, help="budgets in the precomputed grid (default 8; 4 fast)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)")
    p.add_argument("--out", required=True, help="output trajectory .json")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run, seq_len=None)


def config_from_args(args):
    """A :class:`SearchConfig` from the command line (fast-mode defaults where an option is not given)."""
    from ..runtime import fast_mode
    from ..search import SearchConfig

    base = SearchConfig.fast() if fast_mode() else SearchConfig()
    given = {k: v for k, v in dict(step=args.step, min_rank=args.min_rank, stop_budget=args.stop_budget,
                                   strategy=args.strategy, seq_len=args.seq_len, tokens=args.tokens,
                                   batch_size=args.batch_size, corpus=args.corpus,
                                   nll_weight=args.nll_weight,
                                   max_spread=args.max_spread, recall_span=args.recall_span).items() if v is not None}
    if args.proxy_refresh is not None:
        given["proxy_refresh"] = args.proxy_refresh
    return base.with_(batched=args.batched, shortlist=args.shortlist, balance=args.balance, **given)


def run(args) -> int:
    import time

    from ..corpora import default_corpus, token_blocks
    from ..projections import resolve_projections
    from ..runtime import pick
    from ..search import budget_grid, evaluate_trajectory, greedy_search

    if not args.out.endswith(".json"):
        raise ValueError(f"--out must end in .json, not {args.out!r}")
    config = config_from_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_adapter(args)
    proj = resolve_projections(args.projections, model)
    corpus = config.corpus or default_corpus("calibration")
    blocks = token_blocks(tokenizer, corpus, config.seq_len, config.tokens)
    config = config.with_(corpus=corpus)
    start = time.time()
    traj = greedy_search(model, proj, blocks, config, progress=not args.json)
    search_seconds = time.time() - start
    traj.meta.update(projections=args.projections, calibration_corpus=corpus)
    if args.adapter:
        traj.meta["adapter"] = {"path": args.adapter, "weights_hash": model.mkv_adapter}
    eval_corpus = args.eval_corpus or default_corpus("eval")
    eval_blocks = token_blocks(tokenizer, eval_corpus, config.seq_len, args.eval_tokens or pick(512, 2048))
    grid = budget_grid(traj, args.grid or pick(4, 8))
    evaluate_trajectory(model, proj, traj, eval_blocks, grid, eval_corpus, config.batch_size, progress=not args.json)
    traj.meta["total_seconds"] = round(time.time() - start, 2)
    traj.save(args.out)
    at = {f"{a}@{r['budget']:.3f}": (round(r["perplexity"], 2), round(r["kl_to_base"], 4))
          for r in traj.evaluations["rows"] for a in [r["allocation"]]}
    emit({"out": args.out, "model": traj.model, "fingerprint": traj.fingerprint, "steps": len(traj),
          "final_budget": traj.final_budget, "search_seconds": round(search_seconds, 1),
          "candidate_evaluations": traj.meta["candidate_evaluations"], "perplexity_kl": at}, args.json)
    return 0

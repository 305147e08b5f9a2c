"""Stage search: the greedy rank search (proxy strategy) for the trained projections, calibrated on the diverse
training text, recorded in trajectory.json with its quality grid on the out-of-domain suite (adaptive against
uniform; the mean over the suite's domains)."""
from __future__ import annotations

from . import clock


def estimate(ctx, config) -> float | None:
    """Seconds the search should take, from the smoke test's search step (one proxy build at one rank per entry
    on ``smoke_tokens``): one build per refresh and one at the start, each costing that step per rank below d on
    the path, scaled by the calibration tokens (linearly on a CPU; as their square root on a GPU, which the smoke
    test's few tokens leave mostly idle). A rough guide: the summary records it beside the measured time."""
    from ..core.geometry import KVGeometry
    from ..core.greedy import rank_path

    smoke = ctx.measured.get("search_step_s")
    if not smoke:
        return None
    d = KVGeometry.of(ctx.model).head_dim
    ranks = len(rank_path(d, config.step, config.min_rank)) - 1
    scale = (config.tokens / ctx.profile.smoke_tokens) ** (0.5 if ctx.device.type == "cuda" else 1.0)
    return smoke * scale * ranks * (config.proxy_refresh + 1)


def fit(ctx, config, seconds: float):
    """``config`` with fewer proxy refreshes, then fewer calibration tokens (down to one block), until the
    estimate fits ``seconds``; the search cannot stop half-way, so it is sized before it starts."""
    est = estimate(ctx, config)
    while est is not None and est > seconds and (config.proxy_refresh or config.tokens > config.seq_len):
        if config.proxy_refresh:
            config = config.with_(proxy_refresh=config.proxy_refresh // 2)
        else:
            config = config.with_(tokens=max(config.seq_len, config.tokens // 2 // config.seq_len * config.seq_len))
        est = estimate(ctx, config)
    return config, est


def run(ctx, deadline) -> dict:
    from ..corpora import token_blocks
    from ..search import SearchConfig, budget_grid, evaluate_trajectory, greedy_search
    from ..suite import DOMAINS, suite_blocks
    from ..core.trajectory import SUITE_CORPUS

    p = ctx.profile
    proj = ctx.trained()                       # raises StageSkipped without trained projections
    corpus = ctx.corpus("calibration")
    config, est = fit(ctx, SearchConfig(**p.search, corpus=corpus), 0.8 * (deadline - clock.now()))
    if config.as_dict() != SearchConfig(**p.search, corpus=corpus).as_dict():
        ctx.log(f"search: sized to its time: {config.tokens} calibration tokens, {config.proxy_refresh} proxy "
                f"refreshes (estimated {est:.0f}s)")
    blocks = token_blocks(ctx.tokenizer, corpus, config.seq_len, config.tokens, seed=ctx.config.seed)
    start = clock.now()
    traj = greedy_search(ctx.model, proj, blocks, config, progress=False)
    search_s = clock.now() - start
    traj.meta.update(projections=str(ctx.trained_spec), calibration_corpus=corpus, command="mkv fullrun")
    # the readout: the out-of-domain suite's mean (the tiny rehearsal reads its one domain that needs no data)
    readout = suite_blocks(ctx.tokenizer, max(p.readout_tokens, config.seq_len), seq_len=config.seq_len,
                           domains=("pydoc-test",) if ctx.config.tiny else DOMAINS)
    evaluate_trajectory(ctx.model, proj, traj, readout, budget_grid(traj, p.readout_points), SUITE_CORPUS,
                        p.eval_batch, progress=False)
    traj.save(ctx.path("trajectory"))
    ctx.trajectory_path = str(ctx.path("trajectory"))
    rows = traj.evaluations["rows"]
    ctx.log(f"search: {len(traj)} steps to {traj.final_budget:.3f} in {search_s:.1f}s "
            f"({traj.meta['candidate_evaluations']} exact evaluations)")
    return {"steps": len(traj), "final_budget": traj.final_budget, "search_s": round(search_s, 1),
            "estimated_s": None if est is None else round(est, 1),
            "calibration": {"corpus": corpus, "tokens": int(blocks.numel())}, "config": config.as_dict(),
            "readout": {"corpus": SUITE_CORPUS, "domains": list(readout),
                        "tokens": traj.evaluations["tokens"],
                        "rows": [{k: r[k] for k in ("budget", "allocation", "perplexity_ratio", "kl_to_base")}
                                 for r in rows]}}

"""Stage search: the greedy rank search (proxy strategy) for the trained projections, calibrated on the diverse
training text, recorded in trajectory.json with its quality grid on held-out text (adaptive against uniform)."""
from __future__ import annotations

from . import clock


def run(ctx, deadline) -> dict:
    from ..corpora import default_corpus, token_blocks
    from ..search import SearchConfig, budget_grid, evaluate_trajectory, greedy_search

    p = ctx.profile
    proj = ctx.trained()                       # raises StageSkipped without trained projections
    corpus = ctx.corpus("calibration")
    config = SearchConfig(**p.search, corpus=corpus)
    blocks = token_blocks(ctx.tokenizer, corpus, config.seq_len, config.tokens, seed=ctx.config.seed)
    start = clock.now()
    traj = greedy_search(ctx.model, proj, blocks, config, progress=False)
    search_s = clock.now() - start
    traj.meta.update(projections=str(ctx.trained_spec), calibration_corpus=corpus, command="mkv fullrun")
    eval_corpus = "pydoc-test" if ctx.config.tiny else default_corpus("eval")
    readout = token_blocks(ctx.tokenizer, eval_corpus, config.seq_len, max(p.readout_tokens, config.seq_len))
    evaluate_trajectory(ctx.model, proj, traj, readout, budget_grid(traj, p.readout_points), eval_corpus, p.eval_batch,
                        progress=False)
    traj.save(ctx.path("trajectory"))
    ctx.trajectory_path = str(ctx.path("trajectory"))
    rows = traj.evaluations["rows"]
    ctx.log(f"search: {len(traj)} steps to {traj.final_budget:.3f} in {search_s:.1f}s "
            f"({traj.meta['candidate_evaluations']} exact evaluations)")
    return {"steps": len(traj), "final_budget": traj.final_budget, "search_s": round(search_s, 1),
            "calibration": {"corpus": corpus, "tokens": int(blocks.numel())}, "config": config.as_dict(),
            "readout": {"corpus": eval_corpus, "tokens": int(readout.numel()),
                        "rows": [{k: r[k] for k in ("budget", "allocation", "perplexity_ratio", "kl_to_base")}
                                 for r in rows]}}

"""Stage suite: the out-of-domain suite (:mod:`mkvlib.suite`: held-out text of every domain, never trained or
calibrated on) at 50% and 37.5% for PCA uniform against trained uniform and trained adaptive; the means over
domains and the per-domain KL go into summary.json."""
from __future__ import annotations

from .config import SUITE_BUDGETS
from .context import StageSkipped


def methods(ctx) -> list:
    from ..suite import Method

    out = [Method("PCA uniform", ctx.pca())]
    try:
        trained = ctx.trained()
    except StageSkipped as why:
        ctx.log(f"suite: PCA only ({why})")
        return out
    out.append(Method("trained uniform", trained))
    if ctx.trajectory_path:
        out.append(Method("trained adaptive", trained, "adaptive", ctx.trajectory_path))
    else:
        ctx.log("suite: no trajectory from this run (the search stage did not run), so no trained adaptive row")
    return out


def run(ctx, deadline) -> dict:
    from ..suite import compare_suite, format_suite_table, suite_blocks

    p = ctx.profile
    blocks = suite_blocks(ctx.tokenizer, p.suite_tokens, p.suite_seq)
    rows = compare_suite(ctx.model, methods(ctx), SUITE_BUDGETS, blocks, p.eval_batch)
    for line in format_suite_table(rows).splitlines():
        ctx.log(f"suite: {line}")
    means = {}
    for r in rows:
        key = f"{r['method']} @ {r['target_budget']:g}"
        if r["domain"] == "mean":
            means.setdefault(key, {}).update({k: round(float(r[k]), 6)
                                              for k in ("kl_to_base", "perplexity_ratio", "top1_agreement")})
        else:
            means.setdefault(key, {}).setdefault("kl_by_domain", {})[r["domain"]] = round(float(r["kl_to_base"]), 6)
    return {"budgets": list(SUITE_BUDGETS), "domains": list(blocks), "tokens_per_domain": p.suite_tokens,
            "seq_len": p.suite_seq, "results": means}

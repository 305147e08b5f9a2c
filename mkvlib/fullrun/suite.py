"""Stage suite: the out-of-domain suite (:mod:`mkvlib.suite`: held-out text of every domain, never trained or
calibrated on) at 50% and 37.5% for PCA uniform against trained uniform and trained adaptive; the means over
domains and the per-domain KL go into summary.json."""
from __future__ import annotations

from . import clock
from .config import SUITE_BUDGETS
from .context import StageSkipped

MIN_SEQ = 64          # the shortest suite block when time is short


def methods(ctx) -> list:
    from ..core.ranks import Method

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


def sized(ctx, seconds: float, passes: int) -> tuple[int, int]:
    """(tokens per domain, block length) that fit ``seconds`` at the forward rate the smoke test measured
    (``passes`` forward passes over every domain's tokens); at most the profile's size, at least one short block."""
    from ..suite import available_domains

    p, rate = ctx.profile, ctx.measured.get("forward_tokens_per_s")
    if not rate:
        return p.suite_tokens, p.suite_seq
    domains = len(available_domains(note=False))
    tokens = int(seconds * rate / (passes * max(1, domains)))
    seq = min(p.suite_seq, max(MIN_SEQ, tokens))
    return max(seq, min(p.suite_tokens, tokens // seq * seq)), seq


def run(ctx, deadline) -> dict:
    from ..suite import compare_suite, format_suite_table, suite_blocks

    p, chosen = ctx.profile, methods(ctx)
    tokens, seq = sized(ctx, deadline - clock.now(), 1 + len(chosen) * len(SUITE_BUDGETS))
    if tokens < p.suite_tokens:
        ctx.log(f"suite: {tokens} tokens per domain (of {p.suite_tokens}) to fit the stage's time")
    blocks = suite_blocks(ctx.tokenizer, tokens, seq)
    rows = compare_suite(ctx.model, chosen, SUITE_BUDGETS, blocks, p.eval_batch)
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
    return {"budgets": list(SUITE_BUDGETS), "domains": list(blocks), "tokens_per_domain": tokens, "seq_len": seq,
            "results": means}

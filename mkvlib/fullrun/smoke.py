"""Stage 1, the smoke test: every later stage's machinery once, small, on the run's own device and dtype, so a
broken install or an unsupported set-up fails in the first minute with a message that names what failed.

Checks, in order (the first failure stops the run): full-rank exactness (compression at budget 1.0 against the
plain model's logits, within the dtype's tolerance), a training step at the training size (finite loss; on a
GPU the batch halves on out-of-memory), one greedy-search step, CompressedCache generation against DynamicCache
at full rank (equal tokens; in 16-bit a first difference at a near-tie of the top two logits is accepted and
noted), and lm-eval on a few items per task (skipped with a note when lm-eval or the task files are missing).
"""
from __future__ import annotations

import math

import torch

from . import clock
from .context import StageError

# Largest max |logit difference| at full rank, relative to max(1, max |logit|), per dtype
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def smoke_ids(ctx, tokens: int) -> torch.Tensor:
    """(1, tokens) ids of calibration text on the model's device."""
    from ..corpora import token_blocks

    blocks = token_blocks(ctx.tokenizer, ctx.corpus("calibration"), tokens, tokens, seed=ctx.config.seed)
    return blocks[:1].to(ctx.device)


@torch.no_grad()
def check_exactness(ctx) -> dict:
    from ..core.compress import attach

    ids, dtype = smoke_ids(ctx, ctx.profile.smoke_tokens), next(ctx.model.parameters()).dtype
    base = ctx.model(ids).logits.float()
    with attach(ctx.model, ctx.pca(), 1.0):
        full = ctx.model(ids).logits.float()
    diff, scale = float((full - base).abs().max()), float(base.abs().max())
    allowed = TOLERANCE.get(dtype, 1e-4) * max(1.0, scale)
    top1 = float((full.argmax(-1) == base.argmax(-1)).float().mean())
    result = {"max_abs_logit_diff": diff, "max_abs_logit": scale, "tolerance": allowed, "top1_agreement": top1,
              "dtype": str(dtype).replace("torch.", "")}
    if not diff <= allowed:
        raise StageError(f"full-rank exactness: compression at budget 1.0 changes the logits by up to {diff:.3g}, "
                         f"above the {result['dtype']} tolerance {allowed:.3g} (top-1 agreement {top1:.3f})")
    return result


def check_train_step(ctx) -> dict:
    """Two training steps at the training size; the second one's seconds are the estimate training starts from."""
    while True:
        try:
            return _train_steps(ctx, ctx.train_batch)
        except torch.cuda.OutOfMemoryError:
            if ctx.train_batch == 1:
                raise StageError("training step: out of GPU memory even at batch 1") from None
            torch.cuda.empty_cache()
            ctx.log(f"smoke: training batch {ctx.train_batch} ran out of GPU memory; trying {ctx.train_batch // 2}")
            ctx.train_batch //= 2


def _train_steps(ctx, batch: int) -> dict:
    from ..corpora import token_blocks
    from ..bench.speed import synchronize
    from ..training import TrainConfig, Trainer

    p = ctx.profile
    blocks = token_blocks(ctx.tokenizer, ctx.corpus("training"), p.train_seq, 2 * batch * p.train_seq,
                          seed=ctx.config.seed)
    config = TrainConfig(steps=2, batch_size=min(batch, len(blocks)), warmup_steps=1, kd_weight=1.0,
                         lm_weight=0.0, eval_every=0, checkpoint_every=0, progress=False)
    trainer = Trainer(ctx.model, ctx.pca(), blocks, config)
    times = []
    try:
        for step in (1, 2):
            start = clock.now()
            trainer.train(until=step)
            synchronize(ctx.device)
            times.append(clock.now() - start)
    finally:
        trainer.close()
    losses = [row["loss"] for row in trainer.history]
    if not all(math.isfinite(x) for x in losses):
        raise StageError(f"training step: the loss is not finite ({losses})")
    ctx.measured["train_step_s"] = times[-1]
    # a training step is about four forward passes (teacher, student, and the student's backward)
    ctx.measured["forward_tokens_per_s"] = 4 * config.batch_size * p.train_seq / times[-1]
    return {"loss": losses, "batch": config.batch_size, "seq_len": p.train_seq, "step_s": times}


def check_search_step(ctx) -> dict:
    from ..core.geometry import KVGeometry
    from ..search import SearchConfig, greedy_search

    geom = KVGeometry.of(ctx.model)
    d, entries, step = geom.head_dim, geom.layers * geom.kv_heads * 2, geom.head_dim // 2
    tokens = ctx.profile.smoke_tokens
    config = SearchConfig(step=step, min_rank=d - step, stop_budget=1 - step / (2 * d * entries),
                          strategy="proxy", proxy_refresh=0, tokens=tokens, seq_len=tokens, batch_size=1)
    start = clock.now()
    traj = greedy_search(ctx.model, ctx.pca(), smoke_ids(ctx, tokens), config, progress=False)
    ctx.measured["search_step_s"] = clock.now() - start       # one proxy build at one rank per entry
    if len(traj) != 1 or not math.isfinite(traj.steps[0][4]):
        raise StageError(f"search step: expected one step with a finite KL, got {traj.steps}")
    layer, head, kind, rank, kl, budget = traj.steps[0]
    return {"entry": [layer, head, "KV"[kind]], "rank": rank, "kl": kl, "budget": budget}


@torch.no_grad()
def check_generation(ctx) -> dict:
    from transformers import DynamicCache

    from ..core.cache import CompressedCache
    from ..compat import cache_kwargs

    prompt, new = smoke_ids(ctx, ctx.profile.smoke_tokens)[:, :32], ctx.profile.smoke_new_tokens
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad, output_scores=True,
              return_dict_in_generate=True)
    cache = CompressedCache(ctx.model, ctx.pca(), 1.0, reserve=prompt.shape[1] + new)
    ref = ctx.model.generate(prompt, **cache_kwargs(DynamicCache(config=ctx.model.config)), **kw)
    got = ctx.model.generate(prompt, **cache_kwargs(cache), **kw)
    a, b = ref.sequences[0, prompt.shape[1]:].tolist(), got.sequences[0, prompt.shape[1]:].tolist()
    result = {"tokens": len(a), "equal": a == b}
    if a == b:
        return result
    i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    top2 = ref.scores[i][0].float().topk(2).values if i < len(ref.scores) else None
    margin = float(top2[0] - top2[1]) if top2 is not None else float("inf")
    dtype = next(ctx.model.parameters()).dtype
    allowed = TOLERANCE.get(dtype, 1e-4) * max(1.0, float(top2[0].abs()) if top2 is not None else 1)
    result.update(first_difference=i, top2_margin=margin, tolerance=allowed)
    if margin > allowed:
        raise StageError(f"compressed-cache generation: at full rank token {i} differs from DynamicCache's "
                         f"({b[i] if i < len(b) else 'none'} vs {a[i] if i < len(a) else 'none'}), and the top-2 "
                         f"logit margin there ({margin:.3g}) is no near-tie (tolerance {allowed:.3g})")
    result["note"] = f"tokens agree up to {i}, where the top two logits tie within {margin:.3g} (16-bit rounding)"
    return result


def check_lmeval(ctx) -> dict:
    from .lmeval import lmeval_missing

    why = lmeval_missing(ctx.config.tasks)
    if why:
        return {"skipped": why}
    from ..lmeval import LMEvalConfig, run_lm_eval

    items = min(ctx.profile.smoke_items, ctx.config.lmeval_limit or ctx.profile.smoke_items)
    summary = run_lm_eval(ctx.model, ctx.tokenizer, LMEvalConfig(list(ctx.config.tasks), limit=items,
                                                                batch_size=ctx.profile.lmeval_batch))
    accs = {t: r["acc"] for t, r in summary["tasks"].items()}
    if any(a is None or not 0 <= a <= 1 for a in accs.values()):
        raise StageError(f"lm-eval: accuracies out of range on {items} items per task: {accs}")
    return {"items_per_task": items, "acc": accs, "seconds": round(summary["seconds"], 1)}


CHECKS = {"exactness": check_exactness, "train_step": check_train_step, "search_step": check_search_step,
          "generation": check_generation, "lmeval": check_lmeval}


def run(ctx, deadline) -> dict:
    """Every check in order; the first failure raises StageError naming the check."""
    results = {}
    for name, check in CHECKS.items():
        start = clock.now()
        try:
            results[name] = check(ctx)
        except StageError:
            raise
        except Exception as err:  # noqa: BLE001 - any crash of a check is that check's failure
            raise StageError(f"{name}: {type(err).__name__}: {err}") from err
        res = results[name]
        res["seconds"] = round(clock.now() - start, 2)
        state = f"skipped: {res['skipped']}" if "skipped" in res else \
            "passed" + (f" ({res['note']})" if res.get("note") else "")
        ctx.log(f"smoke: {name} {state} in {res['seconds']:.1f}s")
    return {"checks": results}

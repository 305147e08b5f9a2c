"""Stage train: the projections trained from PCA on the diverse training text for a wall-clock budget.

Distillation only by default (kd_weight 1, lm_weight 0), long blocks and a large batch on a GPU. The Trainer
runs one step at a time here, so the stage stops at its deadline; the number of steps its cosine schedule spans
starts from the smoke test's measured step time and is re-estimated from the measured rate as training goes
(:func:`retime`), so the learning rate decays to its floor when the time is up. A checkpoint is written every
``checkpoint_s`` seconds (train.ckpt, removed once train.safetensors is written); an interrupt saves both.
"""
from __future__ import annotations

import torch

from . import clock
from .context import StageSkipped

MARGIN = {"gpu": 2.0, "cpu": 1.0, "tiny": 0.0}      # seconds kept for saving after the last step


def retime(trainer, total: int) -> None:
    """Make the trainer's schedule span ``total`` steps (at least the steps done), keeping its warm-up; only this
    run's trainer changes (its config and its scheduler's multiplier)."""
    from ..training.trainer import cosine_with_warmup

    c = trainer.config
    total = max(int(total), trainer.step)
    if total == c.steps:
        return
    c.steps = total
    if c.eval_every:
        c.eval_every = max(1, total // 4)
    factor = cosine_with_warmup(c.warmup_steps, max(total, 1), c.min_lr_ratio)
    scheduler = trainer.scheduler
    scheduler.lr_lambdas = [factor] * len(trainer.optimizer.param_groups)
    for group, base in zip(trainer.optimizer.param_groups, scheduler.base_lrs):   # the next step's lr, now
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in trainer.optimizer.param_groups]


def timed_loop(ctx, trainer, stop_at: float, step_s: float | None, cap: int | None = None,
               label: str = "train") -> None:
    """Train one step at a time until the schedule ends or the next step would pass ``stop_at``. ``step_s``: the
    expected seconds a step (a guess until the rate is measured from the second step on; the first step, with
    its warm-up, stands in until then)."""
    first, rated_from, next_retime = trainer.step, None, trainer.step + 2
    saved = clock.now()
    while trainer.step < trainer.config.steps and clock.now() + (step_s or 0.0) <= stop_at:
        start = clock.now()
        trainer.train(until=trainer.step + 1)
        if rated_from is None:                     # the first step carries warm-up costs: rate from the second
            rated_from, step_s = (clock.now(), trainer.step), max(step_s or 0.0, clock.now() - start)
        elif trainer.step > rated_from[1]:
            step_s = (clock.now() - rated_from[0]) / (trainer.step - rated_from[1])
        if trainer.step >= next_retime:
            total = trainer.step + int(max(0.0, stop_at - clock.now()) / step_s)
            retime(trainer, min(total, cap) if cap else total)
            next_retime = 2 * trainer.step
        if trainer.checkpoint_path and ctx.profile.checkpoint_s and clock.now() - saved > ctx.profile.checkpoint_s:
            trainer.save()
            saved = clock.now()
    ctx.log(f"{label}: {trainer.step - first} steps, {trainer.tokens_seen:,} tokens"
            + (f", {step_s:.3f}s a step" if step_s else ""))


def initial_steps(ctx, seconds: float, cap: int | None) -> int:
    step_s = ctx.measured.get("train_step_s")
    steps = max(1, int(0.9 * seconds / step_s)) if step_s else 1000
    return min(steps, cap) if cap else steps


def make_trainer(ctx, deadline: float):
    from ..training import TrainConfig, Trainer

    p, cap = ctx.profile, ctx.profile.extra.get("train_steps_max")
    corpus = ctx.corpus("training")
    start = clock.now()
    train_blocks, eval_blocks = ctx.training_data()
    ctx.log(f"train: {train_blocks.numel():,} training tokens ready ({clock.now() - start:.1f}s waited)")
    steps = initial_steps(ctx, deadline - clock.now(), cap)
    config = TrainConfig(steps=steps, batch_size=min(ctx.train_batch, len(train_blocks)), lr=p.lr,
                         warmup_steps=min(p.warmup, max(1, steps // 10)), kd_weight=1.0, lm_weight=0.0,
                         eval_every=max(1, steps // 4) if eval_blocks is not None else 0,
                         eval_budgets=p.train_eval_budgets, checkpoint_every=0, seed=ctx.config.seed, progress=False)
    trainer = Trainer(ctx.model, ctx.pca(), train_blocks, config, eval_blocks=eval_blocks,
                      checkpoint_path=ctx.path("checkpoint"))
    return trainer, corpus, cap


def run(ctx, deadline) -> dict:
    trainer, corpus, cap = make_trainer(ctx, deadline)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        eval_s = start_evaluation(ctx, trainer, deadline)
        timed_loop(ctx, trainer, deadline - eval_s - MARGIN.get(ctx.profile.name, 1.0),
                   ctx.measured.get("train_step_s"), cap)
        if trainer.step and trainer.evals and trainer.evals[-1]["step"] != trainer.step and \
                clock.now() + eval_s <= deadline:
            trainer.evals.append({"step": trainer.step, "rows": trainer.evaluate()})
    except KeyboardInterrupt:
        if trainer.step:
            save_projections(ctx, trainer, corpus)   # what was trained so far (the checkpoint is saved too)
        raise
    finally:
        trainer.close()
    if not trainer.step:
        raise StageSkipped(f"no time for a training step ({ctx.measured.get('train_step_s', 0):.1f}s each) in the "
                           "stage's share after loading the data and the starting evaluation")
    return record(ctx, trainer, corpus, save_projections(ctx, trainer, corpus))


def start_evaluation(ctx, trainer, deadline) -> float:
    """The starting point's suite KL (PCA) when it leaves time for steps; returns what one evaluation took."""
    step_s = ctx.measured.get("train_step_s") or 0.0
    if trainer.eval_blocks is None:
        return 0.0
    start = clock.now()
    trainer.evals.append({"step": 0, "rows": trainer.evaluate()})
    eval_s = clock.now() - start
    if clock.now() + 2 * eval_s + 4 * step_s > deadline:     # evaluations would crowd out the training
        trainer.config.eval_every = 0
        return 0.0
    return eval_s


def save_projections(ctx, trainer, corpus):
    proj = trainer.result(model=getattr(ctx.model, "mkv_name", None), corpora=[corpus], command="mkv fullrun")
    proj.save(ctx.path("projections"))
    ctx.trained_spec = str(ctx.path("projections"))
    return proj


def record(ctx, trainer, corpus, proj) -> dict:
    ctx.path("checkpoint").unlink(missing_ok=True)
    c, hist = trainer.config, trainer.history
    evals = [{"step": e["step"], **{f"kl@{r['budget']:g}": round(r["kl_to_base"], 5) for r in e["rows"]}}
             for e in trainer.evals]
    if evals:
        ctx.log("train: suite KL " + ", ".join(f"{k} {evals[0][k]} -> {evals[-1][k]}" for k in evals[0] if k != "step"))
    out = {"corpus": corpus, "fingerprint": proj.fingerprint(), "steps": trainer.step,
           "tokens_seen": trainer.tokens_seen, "tokens_available": int(trainer.train_blocks.numel()),
           "seq_len": int(trainer.train_blocks.shape[1]), "batch": c.batch_size,
           "wall_time_s": round(trainer.wall_time, 1),
           "tokens_per_s": round(trainer.tokens_seen / trainer.wall_time, 1) if trainer.wall_time else None,
           "config": c.to_dict(), "evals": evals,
           "history": [{k: round(float(r[k]), 5) for k in ("step", "loss", "lr", "budget") if k in r} for r in hist]}
    if ctx.device.type == "cuda":
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    return out

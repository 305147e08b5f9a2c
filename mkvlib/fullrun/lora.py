"""Stage lora (optional, when time remains): the paper's two-stage LoRA experiment at the run's size. Stage 1
fits a LoRA adapter on ARC-Easy validation (uncompressed, loss on the answers); stage 2 trains the projections
(from this run's trained ones) jointly with it at sampled ranks (KD + LM); then ARC-Easy test accuracy of the
fine-tuned model at a 50% budget (uniform ranks) with the general projections and with the two-stage ones,
against the fine-tuned model uncompressed. Each part gets a share of the stage's time; numbers go to
summary.json (no weights are written: the run's files stay within eight). The last stage: evaluating merges the
adapter into the loaded model for good."""
from __future__ import annotations

import importlib.util

from . import clock
from .context import StageSkipped
from .lmeval import lmeval_missing
from .train import timed_loop

BUDGET = 0.5


def examples(ctx):
    from ..corpora import CorpusNotFoundError
    from ..lora import encode, load_examples

    try:
        items = load_examples("arc_easy", "validation")
    except (FileNotFoundError, CorpusNotFoundError, ValueError) as err:
        raise StageSkipped(f"no ARC-Easy training items: {err}") from None
    p = ctx.profile
    ids, answers = encode(items, ctx.tokenizer, p.lora_seq, loss_on="response")
    _, every = encode(items, ctx.tokenizer, p.lora_seq, loss_on="all")
    return ids, answers, every, len(items)


def train_part(ctx, trainer, seconds: float, label: str) -> dict:
    p = ctx.profile
    guess = ctx.measured.get("train_step_s", 0.0) * (p.lora_batch * p.lora_seq) / (ctx.train_batch * p.train_seq)
    try:
        timed_loop(ctx, trainer, clock.now() + seconds, guess or None, p.extra.get("lora_steps_max"), label)
    finally:
        trainer.close()
    hist = trainer.history
    return {"steps": trainer.step, "tokens_seen": trainer.tokens_seen, "wall_time_s": round(trainer.wall_time, 1),
            "loss_first": hist[0]["loss"] if hist else None, "loss_last": hist[-1]["loss"] if hist else None}


def run(ctx, deadline) -> dict:
    if importlib.util.find_spec("peft") is None:
        raise StageSkipped("peft is not installed")
    if deadline - clock.now() < 4 * ctx.profile.min_stage_s:
        raise StageSkipped(f"too little time left for two training stages ({deadline - clock.now():.0f}s)")
    from ..lora import LoRASettings, add_adapter, stage1_config, stage1_trainer, stage2_config, stage2_trainer

    ids, answers, every, n = examples(ctx)
    general = general_projections(ctx)
    p, seconds = ctx.profile, deadline - clock.now()
    peft_model = add_adapter(ctx.model, LoRASettings())
    common = dict(steps=1000, batch_size=min(p.lora_batch, len(ids)), checkpoint_every=0, progress=False,
                  warmup_steps=2)
    one = stage1_trainer(peft_model, ids, answers, stage1_config(**common))
    result = {"examples": n, "rows": int(len(ids)), "seq_len": p.lora_seq,
              "stage1": train_part(ctx, one, 0.4 * seconds, "lora stage 1")}
    two = stage2_trainer(peft_model, general, ids, every, stage2_config(**common))
    result["stage2"] = train_part(ctx, two, 0.4 * seconds, "lora stage 2")
    result["accuracy"] = accuracy(ctx, peft_model, general, two.result(model=ctx.model.mkv_name, stage=2), deadline)
    return result


def general_projections(ctx):
    """This run's trained projections (else the shipped ones, else PCA): stage 2's start and the comparison."""
    try:
        return ctx.trained()
    except StageSkipped:
        return ctx.pca()


def accuracy(ctx, peft_model, general, two_stage, deadline) -> dict:
    """ARC-Easy test accuracy: uncompressed, general and two-stage projections at 50% (merges the adapter)."""
    why = lmeval_missing(["arc_easy"])
    if why:
        return {"skipped": why}
    if clock.now() >= deadline:
        return {"skipped": "out of time"}
    from ..core.compress import attach
    from ..lmeval import LMEvalConfig, run_lm_eval
    from ..lora import merge

    model = merge(peft_model)
    config = LMEvalConfig(["arc_easy"], limit=ctx.config.lmeval_limit, batch_size=ctx.profile.lmeval_batch)
    out = {"task": "arc_easy", "budget": BUDGET, "limit": ctx.config.lmeval_limit or "full"}
    out["uncompressed"] = run_lm_eval(model, ctx.tokenizer, config)["tasks"]["arc_easy"]["acc"]
    for label, proj in (("general", general), ("two_stage", two_stage)):
        if clock.now() >= deadline:
            out[label] = None
            continue
        with attach(model, proj, BUDGET):
            out[label] = run_lm_eval(model, ctx.tokenizer, config)["tasks"]["arc_easy"]["acc"]
        ctx.log(f"lora: ARC-Easy at {BUDGET:.0%}, {label} projections: {out[label]:.4f} "
                f"(uncompressed fine-tuned {out['uncompressed']:.4f})")
    for label in ("general", "two_stage"):
        if out.get(label) is not None and out["uncompressed"]:
            out[f"{label}_kept"] = out[label] / out["uncompressed"]
    return out

"""mkv sft: two-stage LoRA fine-tuning with a compressed KV cache (notebook 06).

    mkv sft --stage 1 --out data/lora/arc_easy                 # LoRA adapter on ARC-Easy validation
    mkv sft --stage 2 --adapter data/lora/arc_easy --out ...   # projections trained with that adapter
    mkv sft --stage 2 ... --eval-budgets 0.75,0.5 --eval-limit 200   # then accuracy of the merged model
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..cli import add_options
from ..runtime import pick
from .common import (add_training_args, drive_trainer, emit, hardware, invocation, launched_accelerator,
                     parse_schedule, training_settings, utc_now)


def register(sub) -> None:
    p = sub.add_parser("sft", help="LoRA fine-tuning (stage 1) and projections trained with the adapter (stage 2)")
    p.add_argument("--stage", type=int, choices=[1, 2], required=True)
    p.add_argument("--data", default="arc_easy", help="'arc_easy' (local files), an lm-eval task name, or a "
                   ".jsonl file of {prompt, response} rows")
    p.add_argument("--split", default="validation", help="split of --data to train on (never arc_easy test)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    add_options(p, no_pack="one example per row instead of packing")
    p.add_argument("--loss-on", choices=["response", "all"], default=None,
                   help="tokens the LM loss counts (default: response in stage 1, all in stage 2)")
    p.add_argument("--adapter", default=None, help="stage 2: the stage-1 bundle folder")
    p.add_argument("--init", default=None, help="stage 2: projections to start from: 'trained' (default when "
                   "shipped, else 'pca'), 'pca' or a .safetensors file")
    add_options(p, freeze_adapter="stage 2: train the projections only",
                choices="stage 2: distil on every answer choice of each item (the continuations the task's "
                "accuracy compares); KD only, so it needs --lm-weight 0")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lora-targets", default=None, help="comma-separated linear layers (default all)")
    p.add_argument("--adapter-lr", type=float, default=5e-5, help="stage 2: adapter lr")
    p.add_argument("--eval-budgets", default=None, help="after training: accuracy of the merged model at these "
                   "budgets (comma-separated) on --eval-task through lm-eval")
    p.add_argument("--eval-task", default="arc_easy")
    p.add_argument("--eval-limit", type=int, default=None, help="items of the evaluation task (default all)")
    p.add_argument("--eval-out", default=None, help="CSV for the accuracy rows (default OUT/accuracy.csv)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    add_training_args(p, SFT_DEFAULTS)
    p.set_defaults(func=run)


# what the stage configs of mkvlib.lora.stages default to, for --help
SFT_DEFAULTS = dict(steps="150 in stage 1, 100 in stage 2; 6 with MKV_FAST=1", batch="8",
                    lr="2e-4 for the adapter in stage 1, 2e-3 for the projections in stage 2", warmup="10",
                    kd_weight="0 in stage 1, 1 in stage 2; 0 in stage 2: the LM loss alone",
                    lm_weight="1 in stage 1, 3 in stage 2")


def check_stage_args(args) -> None:
    """Refuse options that do not belong to the chosen stage, and --choices with an LM loss."""
    if args.stage == 1 and (args.adapter or args.init or args.freeze_adapter or args.schedule or args.choices):
        raise ValueError("--adapter, --init, --freeze-adapter, --schedule and --choices belong to stage 2")
    if args.choices and (args.lm_weight != 0 or args.kd_weight == 0):
        raise ValueError("--choices trains on the wrong answers as well as the right one, so it distils only: "
                         "pass --lm-weight 0 (and leave --kd-weight above 0)")
    if args.stage == 2 and not args.adapter:
        raise ValueError("stage 2 needs --adapter: the bundle folder written by `mkv sft --stage 1`")


def make_trainer(args, model, ids, mask, ckpt: Path, accelerator):
    """(trainer, model with the adapter, LoRA settings or None, initial projections' label or None, parent
    bundle's manifest or None) for the chosen stage."""
    from ..lora import (LoRASettings, add_adapter, general_projections, load_bundle, stage1_config,
                        stage1_trainer, stage2_config, stage2_trainer)
    from ..core.projections import resolve_projections

    common = training_settings(args, pick(6, 150 if args.stage == 1 else 100))
    if args.stage == 1:
        settings = LoRASettings(rank=args.lora_rank, alpha=args.lora_alpha,
                                **({"target_modules": args.lora_targets} if args.lora_targets else {}))
        peft_model = add_adapter(model, settings)
        trainer = stage1_trainer(peft_model, ids, mask, stage1_config(**common), checkpoint_path=ckpt,
                                 accelerator=accelerator)
        return trainer, peft_model, settings, None, None
    peft_model, _, parent = load_bundle(args.adapter, model, trainable=True)
    if args.init:
        init, init_label = resolve_projections(args.init, model), args.init
    else:
        init, init_label = general_projections(model)
    config = stage2_config(extra_lr=args.adapter_lr, schedule=parse_schedule(args.schedule), **common)
    trainer = stage2_trainer(peft_model, init, ids, mask, config, train_adapter=not args.freeze_adapter,
                             checkpoint_path=ckpt, accelerator=accelerator)
    return trainer, peft_model, None, init_label, parent


def run(args) -> int:
    from ..core.checks import check_budgets
    from ..lora import encode, load_examples
    from ..models import load_model

    out = Path(args.out)
    budgets = list(check_budgets(args.eval_budgets, "--eval-budgets")) if args.eval_budgets else None
    parse_schedule(args.schedule)   # a malformed --schedule fails before the model loads
    check_stage_args(args)
    accelerator = launched_accelerator(cpu=args.device == "cpu" or None)
    model, tokenizer = load_model(args.model, device=accelerator.device if accelerator else args.device)
    examples = load_examples(args.data, args.split, args.limit, choices=args.choices)
    loss_on = args.loss_on or ("response" if args.stage == 1 else "all")
    ids, mask = encode(examples, tokenizer, args.seq_len, pack=not args.no_pack, loss_on=loss_on)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    trainer, peft_model, settings, init_label, parent = make_trainer(args, model, ids, mask, ckpt, accelerator)
    status = drive_trainer(trainer, args.resume, ckpt, "sft", accelerator)
    if status is not None:
        return status
    record = training_record(args, trainer, examples, ids, mask, loss_on, settings, init_label, parent)
    projections = None if args.stage == 1 else trainer.result(model=model.mkv_name, stage=2, data=args.data)
    summary = write_bundle(args, out, peft_model, projections, record)
    if budgets:
        summary["accuracy"] = evaluate_accuracy(args, out, budgets)
    emit(summary, args.json)
    return 0


def training_record(args, trainer, examples, ids, mask, loss_on: str, settings, init_label, parent) -> dict:
    """What the bundle's manifest and training.json say about the run."""
    from ..lora import target_count
    from ..lora.adapter import settings_dict

    hist = trainer.history
    return {
        "stage": args.stage, "command": invocation(),
        "data": args.data, "split": args.split, "choices": args.choices, "examples": len(examples),
        "rows": int(len(ids)),
        "seq_len": args.seq_len, "loss_on": loss_on, "loss_targets": target_count(mask),
        "steps": trainer.step, "tokens_seen": trainer.tokens_seen, "wall_time_s": round(trainer.wall_time, 1),
        "config": trainer.config.to_dict(), "lora": settings_dict(settings) if settings else None,
        "parent_adapter": None if args.stage == 1 else {"path": str(args.adapter),
                                                        "weights_hash": parent["adapter_weights_hash"]},
        "init": init_label, "init_fingerprint": None if args.stage == 1 else trainer.init_fingerprint,
        "adapter_trained": args.stage == 1 or not args.freeze_adapter,
        "first_loss": hist[0]["loss"] if hist else None,
        "last_loss": sum(r["loss"] for r in hist[-10:]) / len(hist[-10:]) if hist else None,
        "history": hist, "hardware": hardware(trainer.device),
        "finished": utc_now(),
    }


def write_bundle(args, out: Path, peft_model, projections, record: dict) -> dict:
    """Save the bundle and its training.json; the summary to print."""
    from ..core.io import write_json
    from ..lora import save_bundle
    from ..lora.adapter import weights_hash

    save_bundle(out, peft_model, projections, **{k: v for k, v in record.items() if k != "history"})
    write_json(out / "training.json", record)
    summary = {k: record[k] for k in ("stage", "steps", "tokens_seen", "wall_time_s", "first_loss", "last_loss")}
    summary.update(out=str(out), adapter=weights_hash(peft_model))
    return summary


def evaluate_accuracy(args, out: Path, budgets: list[float]) -> dict:
    """Accuracy of the merged bundle at ``budgets`` on --eval-task (table on stderr); label@budget -> accuracy."""
    from ..lora import accuracy_table, evaluate_bundle

    kinds = {"two-stage": "bundle"} if args.stage == 2 else {"pca": "pca", "general": "general"}
    rows = evaluate_bundle(out, kinds, budgets, task=args.eval_task, limit=args.eval_limit,
                           out=args.eval_out or out / "accuracy.csv", progress=not args.json)
    print(accuracy_table(rows), file=sys.stderr)
    return {f"{r['projections']}@{r['budget']:.1%}": r["acc"] for r in rows}

"""mkv train: Matryoshka training of the projections by distillation at sampled ranks (notebook 02)."""
from __future__ import annotations

from pathlib import Path

from ..runtime import pick
from .common import (add_training_args, check_suffix, drive_trainer, emit, hardware, invocation,
                     launched_accelerator, parse_schedule, training_settings, utc_now)


def register(sub) -> None:
    p = sub.add_parser("train", help="train the projections (KD + LM at sampled ranks), starting from PCA")
    p.add_argument("--init", default="pca", help="'pca' (shipped), 'trained' or a .safetensors file to start from")
    p.add_argument("--corpus", action="append", default=None,
                   help="training corpus or weighted mixture such as books:2,peps (repeat to mix evenly; default: "
                   "the mixture of training/ with MKV_DATA_DIR, else pydoc); never held-out or evaluation text")
    p.add_argument("--tokens", type=int, default=None, help="training tokens in all, split evenly over corpora "
                   "(default 262144; 8192 with MKV_FAST=1)")
    p.add_argument("--eval-tokens", type=int, default=None, help="tokens of the out-of-domain suite for the "
                   "periodic KL, shared over its domains (default 4096; 1024 fast; 0: none)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between those evaluations (default 50)")
    p.add_argument("--recall-span", type=int, default=0, help="make each training block's last N tokens repeat "
                   "a span from its first quarter (mkvlib.recall): long-range lookup to distil (default 0: none)")
    p.add_argument("--out", required=True, help="output .safetensors file (a JSON record is written beside it)")
    add_training_args(p, TRAIN_DEFAULTS)
    p.set_defaults(func=run)


# what TrainConfig's defaults are, for --help
TRAIN_DEFAULTS = dict(steps="300; 6 with MKV_FAST=1", batch="4", lr="2e-3", warmup="10", kd_weight="1",
                      lm_weight="0: KD only, measured best out of domain; the paper's KD : LM = 1 : 3 is "
                      "--lm-weight 3")


def load_training_blocks(tokenizer, corpora: list, tokens: int, seq_len: int, eval_tokens: int, seed: int = 0):
    """(train blocks, eval blocks). One corpus or weighted mixture: ``tokens`` shared out by weight
    (:func:`mkvlib.corpora.mixture_blocks`); several ``--corpus``: split evenly. Eval: the out-of-domain suite."""
    import torch

    from ..corpora import is_mixture, mixture_blocks, token_blocks

    if len(corpora) == 1 and is_mixture(corpora[0]):
        train = mixture_blocks(tokenizer, corpora[0], seq_len, tokens, seed=seed)
    else:
        share = tokens // len(corpora)
        if share < seq_len:
            raise ValueError(f"--tokens {tokens} over {len(corpora)} corpora leaves {share} each, under --seq-len "
                             f"{seq_len}")
        train = torch.cat([token_blocks(tokenizer, c, seq_len, share) for c in corpora])
    return train, suite_eval_blocks(tokenizer, eval_tokens)


def suite_eval_blocks(tokenizer, eval_tokens: int):
    """The periodic evaluation's blocks: ``eval_tokens`` of the out-of-domain suite, shared over its available
    domains (blocks of at most 512 tokens), or None for 0."""
    import torch

    from ..suite import DEFAULT_SEQ_LEN, available_domains, suite_blocks

    if not eval_tokens:
        return None
    domains = available_domains()
    per_domain = eval_tokens // len(domains)
    seq_len = min(DEFAULT_SEQ_LEN, per_domain)
    if seq_len < 16:
        raise ValueError(f"--eval-tokens {eval_tokens} over {len(domains)} domains is too few (at least "
                         f"{16 * len(domains)})")
    return torch.cat(list(suite_blocks(tokenizer, per_domain, seq_len, domains).values()))


def train_config(args):
    """The TrainConfig of ``mkv train``'s options."""
    from ..training import TrainConfig

    extra = {} if args.eval_every is None else {"eval_every": args.eval_every}
    return TrainConfig(**training_settings(args, pick(6, 300)), schedule=parse_schedule(args.schedule), **extra)


def run(args) -> int:
    from ..corpora import check_not_heldout, default_corpus
    from ..models import load_model
    from ..core.projections import resolve_projections
    from ..recall import check_recall_span, recall_blocks
    from ..training import Trainer

    check_suffix(args.out, ".safetensors")
    out = Path(args.out)
    corpora = [check_not_heldout(c) for c in (args.corpus or [default_corpus("training")])]
    config = train_config(args)
    check_recall_span(args.recall_span, args.seq_len, "--recall-span")
    accelerator = launched_accelerator(cpu=args.device == "cpu" or None)
    model, tokenizer = load_model(args.model, device=accelerator.device if accelerator else args.device)
    init = resolve_projections(args.init, model)
    tokens = args.tokens or pick(8192, 262144)
    eval_tokens = pick(1024, 4096) if args.eval_tokens is None else args.eval_tokens
    train_blocks, eval_blocks = load_training_blocks(tokenizer, corpora, tokens, args.seq_len, eval_tokens,
                                                     seed=args.seed)
    if args.recall_span:
        train_blocks = recall_blocks(train_blocks, args.recall_span, seed=args.seed)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt")
    trainer = Trainer(model, init, train_blocks, config, eval_blocks=eval_blocks, checkpoint_path=ckpt,
                      accelerator=accelerator)
    status = drive_trainer(trainer, args.resume, ckpt, "train", accelerator)
    if status is not None:
        return status
    write_results(args, out, model, trainer, corpora, train_blocks, eval_blocks)
    return 0


def write_results(args, out: Path, model, trainer, corpora: list, train_blocks, eval_blocks) -> None:
    """Save the trained projections to ``out``, their JSON record beside them, and print a summary."""
    from ..core.io import write_json

    record = {
        "out": str(out), "model": model.mkv_name, "init": args.init, "init_fingerprint": trainer.init_fingerprint,
        "command": invocation(), "corpora": corpora, "train_tokens_available": int(train_blocks.numel()),
        "tokens_seen": trainer.tokens_seen, "steps": trainer.step, "seq_len": args.seq_len,
        "recall_span": args.recall_span,
        "eval": {"suite": "ood", "tokens": int(eval_blocks.numel())} if eval_blocks is not None else None,
        "wall_time_s": round(trainer.wall_time, 1),
        "hardware": {**hardware(trainer.device), "processes": trainer.world},
        "config": trainer.config.to_dict(), "schedule": list(trainer.sampler.schedule),
        "final_train_loss": trainer.history[-1] if trainer.history else None,
        "evals": trainer.evals, "history": trainer.history,
        "finished": utc_now(),
    }
    proj = trainer.result(model=model.mkv_name, corpora=corpora)
    proj.save(out)
    record["fingerprint"] = proj.fingerprint()
    write_json(out.with_suffix(".json"), record)
    summary = {k: record[k] for k in ("out", "fingerprint", "steps", "tokens_seen", "wall_time_s")}
    if trainer.evals:
        summary.update({f"kl@{r['budget']:.0%}": r["kl_to_base"] for r in trainer.evals[-1]["rows"]})
    emit(summary, args.json)

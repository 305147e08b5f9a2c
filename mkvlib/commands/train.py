"""mkv train: Matryoshka training of the projections by distillation at sampled ranks (notebook 02)."""
from __future__ import annotations

import platform
import shlex
import sys
import time
from pathlib import Path

from ..runtime import pick
from .common import add_schedule_arg, drive_trainer, launched_accelerator, parse_schedule


def register(sub) -> None:
    p = sub.add_parser("train", help="train the projections (KD + LM at sampled ranks), starting from PCA")
    p.add_argument("--model", default=None, help="Hugging Face id or folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--init", default="pca", help="'pca' (shipped), 'trained' or a .safetensors file to start from")
    p.add_argument("--corpus", action="append", default=None,
                   help="training corpus or weighted mixture such as books:2,stackexchange,peps (repeat to mix "
                        "evenly; default: a diverse mixture of training/ with MKV_DATA_DIR, else pydoc). Never "
                        "held-out or evaluation text (*-heldout, wikitext2-test, shakespeare, pydoc-test) or "
                        "benchmark items")
    p.add_argument("--tokens", type=int, default=None, help="training tokens in all, split evenly over corpora "
                   "(default 262144; 8192 with MKV_FAST=1)")
    p.add_argument("--eval-tokens", type=int, default=None,
                   help="tokens of the out-of-domain suite (mkvlib.suite: held-out parts of every domain, never "
                        "trained on) for the periodic KL, shared over its domains (default 4096; 1024 fast; 0: none)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 300; 6 with MKV_FAST=1)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    p.add_argument("--kd-weight", type=float, default=1.0)
    p.add_argument("--lm-weight", type=float, default=0.0, help="weight of the LM term (default 0: KD only, measured best out of domain; the paper's KD : LM = 1 : 3 is --lm-weight 3)")
    add_schedule_arg(p)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default OUT with .ckpt)")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, help="checkpoint to resume from (same settings and data)")
    p.add_argument("--out", required=True, help="output .safetensors file (a JSON record is written beside it)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def check_training_corpus(name: str) -> str:
    """Refuse held-out and evaluation text and benchmark items as training text, also inside a mixture."""
    from ..corpora import check_not_heldout

    return check_not_heldout(name, role="training")


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


def run(args) -> int:
    import torch

    from ..corpora import default_corpus
    from ..io import write_json
    from ..models import load_model
    from ..projections import resolve_projections
    from ..training import TrainConfig, Trainer

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, not {args.out!r}")
    corpora = [check_training_corpus(c) for c in (args.corpus or [default_corpus("training")])]
    schedule = parse_schedule(args.schedule)
    config = TrainConfig(steps=args.steps or pick(6, 300), batch_size=args.batch, grad_accum=args.grad_accum,
                         lr=args.lr, warmup_steps=args.warmup, kd_weight=args.kd_weight, lm_weight=args.lm_weight,
                         schedule=schedule, seed=args.seed, eval_every=args.eval_every,
                         checkpoint_every=args.checkpoint_every, gradient_checkpointing=args.gradient_checkpointing,
                         mixed_precision=args.mixed_precision, progress=not args.json)
    accelerator = launched_accelerator(cpu=args.device == "cpu" or None)
    device = accelerator.device if accelerator else args.device
    model, tokenizer = load_model(args.model, device=device)
    init = resolve_projections(args.init, model)
    tokens = args.tokens or pick(8192, 262144)
    eval_tokens = pick(1024, 4096) if args.eval_tokens is None else args.eval_tokens
    train_blocks, eval_blocks = load_training_blocks(tokenizer, corpora, tokens, args.seq_len, eval_tokens,
                                                     seed=args.seed)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".ckpt")
    trainer = Trainer(model, init, train_blocks, config, eval_blocks=eval_blocks, checkpoint_path=ckpt,
                      accelerator=accelerator)
    status = drive_trainer(trainer, args.resume, ckpt, "train", accelerator)
    if status is not None:
        return status
    command = "mkv " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if Path(sys.argv[0]).name in (
        "mkv", "__main__.py") else None
    record = {
        "out": str(out), "model": model.mkv_name, "init": args.init, "init_fingerprint": trainer.init_fingerprint,
        "command": command, "corpora": corpora, "train_tokens_available": int(train_blocks.numel()),
        "tokens_seen": trainer.tokens_seen, "steps": trainer.step, "seq_len": args.seq_len,
        "eval": {"suite": "ood", "tokens": int(eval_blocks.numel())} if eval_blocks is not None else None,
        "wall_time_s": round(trainer.wall_time, 1),
        "hardware": {"device": str(trainer.device), "torch_threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine(), "platform": platform.platform(),
                     "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                     "processes": trainer.world},
        "config": config.to_dict(), "schedule": list(trainer.sampler.schedule),
        "final_train_loss": trainer.history[-1] if trainer.history else None,
        "evals": trainer.evals, "history": trainer.history,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    proj = trainer.result(model=model.mkv_name, corpora=corpora)
    proj.save(out)
    record["fingerprint"] = proj.fingerprint()
    write_json(out.with_suffix(".json"), record)
    summary = {k: record[k] for k in ("out", "fingerprint", "steps", "tokens_seen", "wall_time_s")}
    if trainer.evals:
        summary.update({f"kl@{r['budget']:.0%}": r["kl_to_base"] for r in trainer.evals[-1]["rows"]})
    from .common import emit

    emit(summary, args.json)
    return 0

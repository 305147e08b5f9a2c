"""Arguments and set-up shared by several subcommands."""
from __future__ import annotations

import atexit
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from ..cli import add_options
from ..runtime import pick


CORPUS_HELP = {"calibration": "(default: the training mixture with MKV_DATA_DIR, else pydoc-train)",
               "eval": "(default: wikitext2 test with MKV_DATA_DIR, else pydoc-test)"}


def add_model_args(p, tokens_fast: int, tokens_full: int, seq_len: int = 256, role: str = "eval",
                   corpus_help: str | None = None) -> None:
    """--model, --corpus, --tokens, --seq-len, --batch-size (sequences per forward pass), --device and --debug.
    ``role``: the default corpus, 'calibration' or 'eval' (:func:`mkvlib.corpora.default_corpus`)."""
    add_options(p, "model")
    p.add_argument("--corpus", default=None, help=corpus_help or f"corpus name or .txt/.jsonl path {CORPUS_HELP[role]}")
    p.add_argument("--tokens", type=int, default=None, help=f"tokens to use (default {tokens_full}; "
                   f"{tokens_fast} with MKV_FAST=1)")
    p.add_argument("--seq-len", type=int, default=seq_len, help=f"tokens per block (default {seq_len})")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass (default 4)")
    add_options(p, "device", "debug")
    p.set_defaults(_tokens=(tokens_fast, tokens_full), _role=role)


def setup(args):
    """(model, tokenizer, blocks) for the common arguments."""
    from ..core.checks import check_budget
    from ..corpora import default_corpus, load_text, token_blocks
    from ..models import load_model

    if args.tokens is not None and args.tokens < args.seq_len:
        raise ValueError(f"--tokens ({args.tokens}) must be at least --seq-len ({args.seq_len})")
    if getattr(args, "budget", None) is not None:
        check_budget(args.budget)
    corpus = args.corpus or default_corpus(args._role)
    load_text(corpus)  # a missing corpus fails here, before the model loads
    model, tokenizer = load_model(args.model, device=args.device)
    tokens = args.tokens or pick(*args._tokens)
    blocks = token_blocks(tokenizer, corpus, args.seq_len, tokens)
    args.corpus = corpus
    return model, tokenizer, blocks


def load_model_and_adapter(args):
    """(model, tokenizer) for --model and --device, with --adapter merged in when given (``mkv_adapter`` names it);
    '--projections bundle' becomes the bundle's projections file."""
    from ..models import load_model

    adapter, projections = getattr(args, "adapter", None), getattr(args, "projections", None)
    if projections == "bundle" and not adapter:
        raise ValueError("--projections bundle names the projections of an `mkv sft` bundle: give --adapter BUNDLE")
    if adapter:
        from ..lora.bundle import read_manifest

        read_manifest(adapter)   # a missing or unreadable bundle fails before the model loads
    model, tokenizer = load_model(args.model, device=args.device)
    if adapter:
        from ..lora.bundle import load_merged

        model, own, _ = load_merged(adapter, model)
        if projections == "bundle":
            if own is None:
                raise ValueError(f"{adapter} holds no projections (a stage-1 bundle): give --projections pca, "
                                 "trained or a .safetensors file")
            args.projections = str(Path(adapter) / "projections.safetensors")
    return model, tokenizer


def add_positions_arg(p) -> None:
    from ..core.positions import POSITION_MODES

    p.add_argument("--positions", choices=POSITION_MODES, default="spread",
                   help="where blocks sit in the context window: 'spread' (default) at seeded random offsets up to "
                        "the model's limit, so post-RoPE keys are seen at every angle long contexts give them; "
                        "'start' from position 0 (runs before this option)")


def add_training_args(p, defaults: dict[str, str]) -> None:
    """The options of ``mkv train`` and ``mkv sft``. Optimizer and loss options default to None, so that the
    command's own config decides; ``defaults`` says for --help what it decides (keys steps, batch, lr, warmup,
    kd_weight, lm_weight)."""
    add_options(p, "model")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training row (default 256)")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {defaults['steps']})")
    p.add_argument("--batch", type=int, default=None, help=f"rows per micro-batch (default {defaults['batch']})")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {defaults['lr']})")
    p.add_argument("--warmup", type=int, default=None, help=f"warm-up steps (default {defaults['warmup']})")
    p.add_argument("--kd-weight", type=float, default=None, help=f"weight of the KD term (default "
                   f"{defaults['kd_weight']})")
    p.add_argument("--lm-weight", type=float, default=None, help=f"weight of the LM term (default "
                   f"{defaults['lm_weight']})")
    add_options(p, "schedule")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: OUT with .ckpt)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 25)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from (same settings and data)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward "
                   "pass (less memory, more time)")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default=None,
                   help="auto: bf16 autocast on CUDA, float32 on CPU (default auto)")
    add_options(p, "seed")
    add_positions_arg(p)
    add_whole_token_args(p, "train")
    add_options(p, "device", "json", "debug")


def add_whole_token_args(p, verb: str) -> None:
    """--keep-first/--keep-recent of train, sft and search: ``verb`` with those tokens read whole, for a cache that
    keeps them whole (default None: 0)."""
    p.add_argument("--keep-first", type=int, default=None, help=f"{verb} with each block's first N tokens read "
                   "whole, for a cache that keeps them whole (default 0)")
    p.add_argument("--keep-recent", type=int, default=None, help=f"{verb} with each query's latest N tokens read "
                   "whole, for a cache that keeps them whole (default 0)")


def training_settings(args, steps: int) -> dict:
    """TrainConfig fields from the options of :func:`add_training_args`: ``steps`` where --steps is not given;
    options left at None are left out, so the command's config keeps its default."""
    given = dict(batch_size=args.batch, grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup,
                 kd_weight=args.kd_weight, lm_weight=args.lm_weight, checkpoint_every=args.checkpoint_every,
                 mixed_precision=args.mixed_precision, positions=getattr(args, "positions", None),
                 keep_first=args.keep_first, keep_recent=args.keep_recent)
    return dict(steps=args.steps or steps, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing,
                progress=not args.json, **{k: v for k, v in given.items() if v is not None})


def invocation() -> str | None:
    """The ``mkv ...`` command line that started this process, for a record; None when run from Python."""
    if Path(sys.argv[0]).name not in ("mkv", "__main__.py"):
        return None
    return "mkv " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def utc_now() -> str:
    """The time now, as records write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def hardware(device) -> dict:
    """Where a run ran, for its record: device, torch threads, CPU, platform and GPU."""
    return {"device": str(device), "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def split_list(text: str, what: str, hint: str = "") -> list[str]:
    """Comma-separated values (an existing file's name is one value even with a comma); ValueError when none."""
    if Path(text).expanduser().is_file():
        return [text]
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"{what} is empty{hint}")
    return values


def parse_numbers(text: str, what: str, kind=float, expected: str = "must be comma-separated numbers") -> list:
    """Comma-separated numbers of ``kind``; ValueError '{what} {expected}, not {text!r}' for other text."""
    values = split_list(text, what)
    try:
        return [kind(x) for x in values]
    except ValueError:
        raise ValueError(f"{what} {expected}, not {text!r}") from None


def parse_schedule(text) -> list[int] | None:
    """--schedule's ranks as integers (None when not given); range checks happen against head_dim later."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--schedule must be comma-separated integers such as 8,16,32,64, not {text!r}") from None


def check_suffix(path, suffix: str, flag: str = "--out") -> None:
    """A clear error unless ``path`` ends in ``suffix``."""
    if not str(path).endswith(suffix):
        raise ValueError(f"{flag} must end in {suffix}, not {str(path)!r}")


def emit(result: dict, as_json: bool) -> None:
    """Print a result as one JSON object or as aligned ``key: value`` lines."""
    if as_json:
        print(json.dumps(result, default=lambda x: x.tolist() if isinstance(x, torch.Tensor) else str(x)))
        return
    width = max(map(len, result))
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        print(f"{key:<{width}}  {value}")


def drive_trainer(trainer, resume, checkpoint, command: str, accelerator=None) -> int | None:
    """Resume if asked, train, save on Ctrl-C (exit 130) or SIGTERM (exit 143); None when this process should
    write the results."""
    if resume:
        trainer.resume(resume)
        print(f"resumed from {resume} at step {trainer.step}", file=sys.stderr)
    try:
        trainer.train()
    except KeyboardInterrupt as stop:   # Ctrl-C, or SIGTERM: a checkpoint of the last step was written
        from ..training.trainer import TrainingTerminated

        terminated = isinstance(stop, TrainingTerminated)
        print(f"mkv {command}: {'terminated (SIGTERM)' if terminated else 'interrupted'}; resume with --resume "
              f"{checkpoint}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        trainer.close()
    if accelerator is not None and not accelerator.is_main_process:
        return 0
    return None


def launched_accelerator(cpu: bool | None = None):
    """An accelerate ``Accelerator`` when this process is one of several started by ``accelerate launch`` (or
    torchrun), else None.

    ``cpu``: run the processes on the CPU (gloo). accelerate counts a launch's processes only on GPUs unless told
    to use the CPU, so without it CPU processes would each train alone. None (default): the CPU when no CUDA
    device is present or ``accelerate launch --cpu`` asked for it; True: the CPU even beside a GPU (``--device
    cpu``).
    """
    try:
        from accelerate import Accelerator
        from accelerate.state import PartialState
        from accelerate.utils import parse_flag_from_env
    except ImportError:
        return None
    if cpu is None:
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    if PartialState(cpu=cpu).num_processes > 1:
        accelerator = Accelerator(cpu=cpu)
        atexit.register(_end_launch)
        return accelerator
    return None


def _end_launch() -> None:
    """Tear the launch's process group down before the interpreter exits: left to the interpreter's shutdown, a
    gloo group can abort the process (SIGABRT) once another rank has gone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

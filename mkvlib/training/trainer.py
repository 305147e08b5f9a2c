"""The Matryoshka trainer: projections (and optional extra parameters) trained by distillation at sampled ranks.

Each micro-batch: the teacher is the model with compression off (no_grad); the student the model with
compression on at ranks drawn by the :class:`RankSampler`; the loss is kd_weight * KD + lm_weight * LM (default
KD only). Only the projector's rotations (and ``extra_parameters``) train. Introduced in notebook 02.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import random
import signal
import threading
import time
from pathlib import Path

import torch
from ..core.env import progress_bar as tqdm

from ..core.compress import Projector, attach
from ..core.geometry import KVGeometry
from ..metrics import quality_curve
from ..core.positions import block_offsets, shifted
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from ..core.loss import distill_loss
from ..core.sampler import RankSampler


def cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    """lr multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def blocks_fingerprint(blocks: torch.Tensor) -> str:
    """Identity of the training data, checked on resume."""
    return hashlib.sha256(blocks.to(torch.long).contiguous().numpy().tobytes()).hexdigest()[:16]


class TrainingTerminated(KeyboardInterrupt):
    """SIGTERM (a job's time limit, ``kill``) stopped :meth:`Trainer.train`; like Ctrl-C, a checkpoint of the last
    completed step was written first. A KeyboardInterrupt, so every handler of Ctrl-C handles it too."""


def _raise_terminated(signum, frame):
    raise TrainingTerminated(f"stopped by signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block SIGTERM raises :class:`TrainingTerminated`, a KeyboardInterrupt (main thread only), so a
    killed job ends like Ctrl-C; the previous handler is put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _defer_signals():
    """Hold Ctrl-C and SIGTERM back while the block runs (the optimizer committing a step, a checkpoint being
    written), then raise what arrived: an interrupt never leaves half an update or a missing checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if signal.SIGTERM in caught:
            raise TrainingTerminated("stopped by signal SIGTERM")
        if caught:
            raise KeyboardInterrupt


class Trainer:
    """Train a :class:`~mkvlib.core.compress.Projector` (made trainable here if it is not) on token blocks.

    The model's own weights are frozen except ``extra_parameters`` ({name: Parameter}, e.g. a peft LoRA adapter's,
    checkpointed by name; with ``config.kd_weight = 0`` no teacher pass runs). ``train_blocks``: (N, T) token ids
    of training text; ``eval_blocks``: (M, T) for the periodic KL evaluation at ``config.eval_budgets``;
    ``train_masks``: (N, T) 0/1, the loss's attention mask (padding, or only the answers of fine-tuning examples;
    :mod:`mkvlib.lora.data`). ``teacher_context``: a context-manager factory around the teacher pass (e.g.
    ``model.disable_adapter``). ``accelerator``: data sharded across processes (same ranks drawn everywhere),
    gradients averaged, only the main process writes checkpoints.

    ``history`` holds one dict per step (loss, kd, lm, lr, grad_norm, budget), ``evals`` the periodic
    evaluations. Ctrl-C or SIGTERM saves a checkpoint of the last completed step and raises.
    """

    def __init__(self, model, projector, train_blocks: torch.Tensor, config: TrainConfig | None = None,
                 eval_blocks: torch.Tensor | None = None, extra_parameters: dict | None = None,
                 checkpoint_path=None, teacher_context=None, accelerator=None, train_masks=None):
        self.config = config or TrainConfig()
        self.model, self.accelerator = model, accelerator
        self.geometry = KVGeometry.of(model)
        if train_blocks.ndim != 2 or train_blocks.shape[1] < 2:
            raise ValueError(f"train_blocks must be (N, T) token ids with T >= 2, not {tuple(train_blocks.shape)}")
        self.train_blocks, self.eval_blocks = train_blocks.long(), eval_blocks
        if train_masks is not None and tuple(train_masks.shape) != tuple(train_blocks.shape):
            raise ValueError(f"train_masks shape {tuple(train_masks.shape)} differs from train_blocks "
                             f"{tuple(train_blocks.shape)}")
        self.train_masks = None if train_masks is None else train_masks.long()
        self.world, self.rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
        if len(train_blocks) < self.config.batch_size * self.world:
            raise ValueError(f"{len(train_blocks)} training blocks are fewer than one batch of "
                             f"{self.config.batch_size} x {self.world} process(es): give more tokens")
        self.sampler = RankSampler(self.geometry, self.config.schedule, seed=self.config.seed)
        if not isinstance(projector, Projector):
            projector = Projector(projector, trainable=True)
        elif not projector.trainable:
            projector = Projector(projector.to_projections(), trainable=True)
        self.projector = projector
        self.init_fingerprint = projector.to_projections().fingerprint()
        self.extra = dict(extra_parameters or {})
        extra_ids = {id(p) for p in self.extra.values()}
        for p in model.parameters():
            p.requires_grad_(id(p) in extra_ids)
        for name, p in self.extra.items():
            if not isinstance(p, torch.nn.Parameter):
                raise TypeError(f"extra parameter {name!r} is a {type(p).__name__}, not a torch.nn.Parameter")
            p.requires_grad_(True)
        self.device = accelerator.device if accelerator else next(model.parameters()).device
        self.compression = attach(model, projector, ranks=self.geometry.head_dim, keep_first=self.config.keep_first,
                                  keep_recent=self.config.keep_recent)
        groups = [{"params": list(projector.parameters()), "lr": self.config.lr}]
        if self.extra:
            groups.append({"params": list(self.extra.values()), "lr": self.config.extra_lr or self.config.lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(self.config.warmup_steps, self.config.steps, self.config.min_lr_ratio))
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.teacher_context = teacher_context or contextlib.nullcontext
        self.step, self.history, self.evals, self.wall_time = 0, [], [], 0.0
        self.data_fingerprint = blocks_fingerprint(self.train_blocks if self.train_masks is None
                                                   else torch.cat([self.train_blocks, self.train_masks]))
        if self.config.gradient_checkpointing:
            _activation_checkpointing(model, True)

    # --- the data stream: stateless, so resuming needs only the step ---------------------------------
    def micro_batch(self, index: int) -> torch.Tensor:
        """The ``index``-th micro-batch (B, T) of this process: a fresh seeded permutation every epoch."""
        return self.train_blocks[self._batch_rows(index)]

    def micro_mask(self, index: int) -> torch.Tensor | None:
        """The loss mask (B, T) of the ``index``-th micro-batch, or None when every token counts."""
        return None if self.train_masks is None else self.train_masks[self._batch_rows(index)]

    def micro_offsets(self, index: int) -> torch.Tensor | None:
        """The position offsets (B,) of the ``index``-th micro-batch ('spread' positions), or None ('start')."""
        n, T = self.train_blocks.shape
        offsets = block_offsets(self.config.positions, n, T, self.model,
                                seed=self.config.seed * 100003 + self._epoch(index)[0] + 7919)
        return None if offsets is None else offsets[self._batch_rows(index)]

    def _epoch(self, index: int) -> tuple[int, int]:
        per_epoch = len(self.train_blocks) // (self.config.batch_size * self.world)
        return divmod(index, per_epoch)

    def _batch_rows(self, index: int) -> torch.Tensor:
        n, b = len(self.train_blocks), self.config.batch_size
        epoch, pos = self._epoch(index)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 100003 + epoch))
        start = (pos * self.world + self.rank) * b
        return perm[start:start + b]

    @property
    def tokens_seen(self) -> int:
        c = self.config
        return self.step * c.grad_accum * c.batch_size * self.world * self.train_blocks.shape[1]

    def _autocast(self):
        mp = self.config.mixed_precision
        if mp == "bf16" or (mp == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- one optimizer step -----------------------------------------------------------------------------
    def _micro_step(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                    offsets: torch.Tensor | None = None) -> dict:
        c, comp = self.config, self.compression
        ranks = self.sampler.sample()
        teacher = None
        if c.kd_weight:
            comp.enabled = False
            with torch.no_grad(), self.teacher_context(), self._autocast(), shifted(self.model, offsets):
                teacher = self.model(ids, use_cache=False).logits
            comp.enabled = True
        comp.set_ranks(ranks)
        with self._autocast(), shifted(self.model, offsets):
            student = self.model(ids, use_cache=False).logits
        loss, parts = distill_loss(student, teacher, ids, attention_mask=mask, kd_weight=c.kd_weight,
                                   lm_weight=c.lm_weight)
        (loss / c.grad_accum).backward()
        parts.update(loss=float(loss.detach()), budget=float(ranks.double().mean()) / self.geometry.head_dim)
        return parts

    def _params(self):
        return list(self.projector.parameters()) + list(self.extra.values())

    def train_step(self) -> dict:
        """Run ``grad_accum`` micro-batches and one optimizer step; return that step's log row."""
        c = self.config
        self.model.eval()   # frozen weights: no dropout; the projector has none
        self.optimizer.zero_grad(set_to_none=True)
        rows = []
        for i in range(c.grad_accum):
            index = self.step * c.grad_accum + i
            mask = self.micro_mask(index)
            rows.append(self._micro_step(self.micro_batch(index).to(self.device),
                                         None if mask is None else mask.to(self.device), self.micro_offsets(index)))
        params = [p for p in self._params() if p.grad is not None]
        if self.world > 1:
            for p in params:
                p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip if c.grad_clip > 0 else float("inf"))
        row = {k: sum(r[k] for r in rows if k in r) / len(rows) for k in rows[0]}
        row.update(step=self.step + 1, lr=self.scheduler.get_last_lr()[0], grad_norm=float(norm))
        with _defer_signals():
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.history.append(row)
        return row

    # --- evaluation -------------------------------------------------------------------------------------
    def evaluate(self, blocks: torch.Tensor | None = None, budgets=None) -> list[dict]:
        """Perplexity and KL to the uncompressed model at uniform ``budgets`` (default config.eval_budgets)."""
        blocks = self.eval_blocks if blocks is None else blocks
        if blocks is None:
            raise ValueError("no evaluation blocks: pass eval_blocks to the Trainer or blocks here")
        rows = quality_curve(self.model, blocks, self.compression, list(budgets or self.config.eval_budgets),
                             batch_size=self.config.batch_size, progress=False)
        self.compression.set_ranks(self.geometry.head_dim)
        return rows

    # --- the loop ---------------------------------------------------------------------------------------
    def train(self, until: int | None = None, callback=None) -> list[dict]:
        """Train to step ``until`` (default ``config.steps``); ``callback(trainer, row)`` after every step.

        Ctrl-C (KeyboardInterrupt) or SIGTERM (:class:`TrainingTerminated`, e.g. a job's time limit) writes a
        checkpoint of the last completed step (atomically: an earlier checkpoint stays whole until the new one is
        complete; a second signal waits for it), then raises. The SIGTERM handler is put back on return.
        """
        c = self.config
        until = c.steps if until is None else min(until, c.steps)
        main = self.accelerator is None or self.accelerator.is_main_process
        bar = tqdm(total=until, initial=self.step, desc="training", disable=not (c.progress and main))
        try:
            with sigterm_interrupts():
                self._loop(until, bar, callback, main)
        except KeyboardInterrupt as stop:
            if self.checkpoint_path:
                with _defer_signals():
                    self.save()
                how = "terminated (SIGTERM)" if isinstance(stop, TrainingTerminated) else "interrupted"
                bar.write(f"{how} at step {self.step}: checkpoint saved to {self.checkpoint_path}")
            raise
        finally:
            bar.close()
        if self.checkpoint_path and self.step == c.steps:
            self.save()
        return self.history

    def _loop(self, until: int, bar, callback, main: bool) -> None:
        """The steps of :meth:`train`, with its periodic evaluations and checkpoints."""
        c, running = self.config, None
        evaluating = c.eval_every and self.eval_blocks is not None
        if evaluating and self.step == 0 and not self.evals:   # the starting point (e.g. PCA) for the curves
            self.evals.append({"step": 0, "rows": self.evaluate()})
        while self.step < until:
            t0 = time.perf_counter()
            row = self.train_step()
            self.wall_time += time.perf_counter() - t0
            running = row["loss"] if running is None else 0.9 * running + 0.1 * row["loss"]
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}", kd=f"{row.get('kd', 0):.3f}", lr=f"{row['lr']:.1e}")
            if evaluating and (self.step % c.eval_every == 0 or self.step == c.steps):
                self.evals.append({"step": self.step, "rows": self.evaluate()})
                if main:
                    bar.write(f"step {self.step}: " + ", ".join(
                        f"KL@{r['budget']:.0%}={r['kl_to_base']:.3f}" for r in self.evals[-1]["rows"]))
            if callback is not None:
                callback(self, row)
            if self.checkpoint_path and c.checkpoint_every and self.step % c.checkpoint_every == 0:
                with _defer_signals():
                    self.save()

    # --- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything an exact resume needs: step, weights, optimizer, scheduler, sampler and RNG states."""
        return {
            "step": self.step, "config": self.config.to_dict(), "wall_time": self.wall_time,
            "data": self.data_fingerprint, "init": self.init_fingerprint,
            "projector": {k: v.detach().cpu() for k, v in self.projector.state_dict().items()},
            "extra": {k: v.detach().cpu() for k, v in self.extra.items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": _python_rng_state()},
            "history": self.history, "evals": self.evals,
        }

    def save(self, path=None) -> Path | None:
        """Write a checkpoint (main process only); returns its path."""
        path = Path(path) if path else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass checkpoint_path to the Trainer or a path here")
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
            if not self.accelerator.is_main_process:
                return None
        return save_checkpoint(path, self.state_dict())

    def resume(self, path) -> "Trainer":
        """Restore a checkpoint written by :meth:`save` for the same data, initial projections and config."""
        state = load_checkpoint(path)
        mine, theirs = self.config.to_dict(), dict(state["config"])
        differ = [k for k in mine if k not in TrainConfig.RESUME_FREE and mine[k] != theirs.get(k)]
        if differ:
            raise CheckpointError(f"{path} was written with different settings {differ} "
                                  f"({ {k: theirs.get(k) for k in differ} }); resume with the same settings")
        if state["data"] != self.data_fingerprint:
            raise CheckpointError(f"{path} was trained on other data (fingerprint {state['data']}, "
                                  f"here {self.data_fingerprint}): resume with the same corpus, tokens and seq-len")
        if state["init"] != self.init_fingerprint:
            raise CheckpointError(f"{path} started from other projections ({state['init']}, here "
                                  f"{self.init_fingerprint}): resume with the same --init")
        if set(state["extra"]) != set(self.extra):
            raise CheckpointError(f"{path} holds extra parameters {sorted(state['extra'])}, "
                                  f"but this trainer has {sorted(self.extra)}")
        with torch.no_grad():
            self.projector.load_state_dict(state["projector"])
            for name, value in state["extra"].items():
                self.extra[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        version, internal, gauss = state["rng"]["python"]
        random.setstate((version, tuple(internal), gauss))
        self.step, self.wall_time = int(state["step"]), float(state["wall_time"])
        self.history, self.evals = list(state["history"]), list(state["evals"])
        self.compression.set_ranks(self.geometry.head_dim)
        return self

    def result(self, **meta):
        """The trained :class:`~mkvlib.core.projections.Projections`, with the training record in its meta."""
        info = {"kind": "trained", "init_fingerprint": self.init_fingerprint,
                "training": {"steps": self.step, "tokens_seen": self.tokens_seen, "wall_time_s": round(self.wall_time, 1),
                             "config": self.config.to_dict(), "schedule": list(self.sampler.schedule),
                             "data_fingerprint": self.data_fingerprint}}
        return self.projector.to_projections(**{**info, **meta})

    def close(self) -> None:
        """Detach the compression hook (the model computes exactly as before)."""
        self.compression.detach()
        if self.config.gradient_checkpointing:
            _activation_checkpointing(self.model, False)


def _activation_checkpointing(model, on: bool) -> None:
    """Recompute activations in the backward pass (or stop), under the name this transformers gives it."""
    if hasattr(model, "activation_checkpointing_enable"):   # the name since transformers 5.25
        if on:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]

"""The two stages of fine-tuning with a compressed KV cache (the paper's LoRA experiment). Notebook 06.

Stage 1: a peft LoRA adapter learns the downstream task on the uncompressed model (LM loss on the responses).
Stage 2: the projections, starting from the general (trained, else PCA) ones, train jointly with the stage-1
adapter at Matryoshka-sampled ranks (LM loss; KD from the uncompressed fine-tuned model optional), so that
they fit the keys and values the adapted model produces.

Both stages run through :class:`mkvlib.training.Trainer` (progress bar, checkpoints, exact resume, accelerate):
stage 1 with the compression hook switched off, a frozen identity projector and KD weight 0, so only the
adapter trains; stage 2 with the adapter as the Trainer's extra parameters.
"""
from __future__ import annotations

import torch

from ..core.compress import Projector
from ..core.geometry import KVGeometry
from ..core.projections import Projections, resolve_projections
from ..ladder import identity_projections  # noqa: F401  (stage 1's placeholder projector, never used to compress)
from ..training import TrainConfig, Trainer
from .adapter import adapter_parameters


def stage1_config(**kw) -> TrainConfig:
    """Stage 1 defaults: LM loss on the responses only, lr 2e-4 for the adapter."""
    return TrainConfig(**{"steps": 150, "batch_size": 8, "lr": 2e-4, "warmup_steps": 10, "kd_weight": 0.0,
                          "lm_weight": 1.0, "eval_every": 0, **kw})


def stage2_config(**kw) -> TrainConfig:
    """Stage 2 defaults: projections at lr 2e-3, the adapter at 5e-5, KD + LM 1 : 3 (kd_weight=0: LM only)."""
    return TrainConfig(**{"steps": 100, "batch_size": 8, "lr": 2e-3, "extra_lr": 5e-5, "warmup_steps": 10,
                          "kd_weight": 1.0, "lm_weight": 3.0, "eval_every": 0, **kw})


def stage1_trainer(peft_model, ids: torch.Tensor, mask: torch.Tensor | None, config: TrainConfig | None = None,
                   checkpoint_path=None, accelerator=None) -> Trainer:
    """A Trainer that fits only the LoRA parameters of ``peft_model`` on (ids, mask), without compression."""
    config = config or stage1_config()
    if config.kd_weight:
        raise ValueError("stage 1 trains on the LM loss alone: set kd_weight=0 (there is no teacher yet)")
    d = KVGeometry.of(peft_model).head_dim
    if config.schedule not in (None, (d,)):
        raise ValueError("stage 1 does not compress: leave the rank schedule unset")
    config.schedule = (d,)
    placeholder = Projector(identity_projections(peft_model), trainable=True)
    for p in placeholder.parameters():
        p.requires_grad_(False)         # no gradient: AdamW leaves it exactly at the identity
    trainer = Trainer(peft_model, placeholder, ids, config, extra_parameters=adapter_parameters(peft_model),
                      checkpoint_path=checkpoint_path, accelerator=accelerator, train_masks=mask)
    trainer.compression.enabled = False   # KD weight 0: the Trainer never switches it back on
    return trainer


def stage2_trainer(peft_model, init, ids: torch.Tensor, mask: torch.Tensor | None,
                   config: TrainConfig | None = None, train_adapter: bool = True, checkpoint_path=None,
                   eval_blocks=None, accelerator=None) -> Trainer:
    """A Trainer that fits the projections (from ``init``: Projections, path, 'trained' or 'pca') jointly with
    the adapter (``train_adapter=False`` keeps the adapter fixed). The KD teacher is the uncompressed
    fine-tuned model itself."""
    config = config or stage2_config()
    proj = resolve_projections(init, peft_model)
    extra = adapter_parameters(peft_model) if train_adapter else None
    if not train_adapter:
        for p in adapter_parameters(peft_model).values():
            p.requires_grad_(False)
    return Trainer(peft_model, proj, ids, config, eval_blocks=eval_blocks, extra_parameters=extra,
                   checkpoint_path=checkpoint_path, accelerator=accelerator, train_masks=mask)


def general_projections(model) -> tuple[Projections, str]:
    """The general trained projections when shipped, else PCA: (projections, 'trained' | 'pca')."""
    try:
        return resolve_projections("trained", model), "trained"
    except FileNotFoundError:
        return resolve_projections("pca", model), "pca"

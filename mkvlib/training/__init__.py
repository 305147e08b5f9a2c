"""Matryoshka training of the orthogonal projections (docs/design.md, section 5). Introduced in notebook 02.

- :mod:`mkvlib.core.sampler`: per-step ranks per (layer, KV head, K/V) from a schedule ({d/8, ..., d} by default)
- :mod:`mkvlib.core.loss`: KD (KL teacher || student) + LM cross-entropy (default KD only; see TrainConfig)
- :mod:`.config`: :class:`TrainConfig`
- :mod:`.checkpoint`: atomic, hash-checked checkpoints
- :mod:`.trainer`: :class:`Trainer` (AdamW, cosine warm-up, clipping, accumulation, resume, accelerate)
- :mod:`.report`: the issue's targets on quality curves, the reversed-column check, loss curves
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .trainer import Trainer

__all__ = ["CheckpointError", "TrainConfig", "Trainer", "load_checkpoint", "save_checkpoint"]

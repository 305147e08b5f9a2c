"""Training settings as one validated dataclass, with a CI-sized variant. Introduced in notebook 02."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.checks import check_budgets, check_schedule
from ..core.ranks import check_whole_tokens
from ..core.positions import POSITION_MODES

MIXED_PRECISION = ("auto", "no", "bf16")


def require(owner: str, ok: bool, message: str) -> None:
    """ValueError ``'<owner>: <message>'`` unless ``ok``: how a settings class reports a bad field."""
    if not ok:
        raise ValueError(f"{owner}: {message}")


def check_counts(owner: str, settings, names, minimum: int) -> None:
    """Each field of ``settings`` named in ``names`` must be a whole number (int, not bool) >= ``minimum``."""
    kind = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    for name in names:
        value = getattr(settings, name)
        require(owner, isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                f"{name} must be {kind}, not {value!r}")


@dataclass
class TrainConfig:
    """Everything that shapes a training run (the data and the initial projections are given separately).

    steps: optimizer steps; batch_size: sequences per micro-batch; grad_accum: micro-batches per step.
    lr / warmup_steps / min_lr_ratio: AdamW with linear warm-up then cosine decay to ``lr * min_lr_ratio``.
    extra_lr: learning rate of extra parameters (e.g. a LoRA adapter; default ``lr``).
    kd_weight / lm_weight: loss = kd_weight * KL(teacher || student) + lm_weight * CE. Default KD only (1, 0): it
      measured best out of domain (docs/results.md, "Starting points and objectives"); the paper's KD : LM = 1 : 3 is (1, 3).
    schedule: ranks to sample from (default {d/8, ..., d}). eval_budgets: uniform budgets for periodic KL eval.
    checkpoint_every: steps between checkpoints (0: only at the end and on interrupt).
    positions: 'spread' (default) feeds each block at a random offset over the model's context window, seeded per
      epoch and block, so post-RoPE keys are seen at every angle they take in long contexts; 'start' feeds every
      block from position 0 (what runs before this option did; see :mod:`mkvlib.core.positions`).
    mixed_precision: 'auto' (bf16 autocast on CUDA, float32 on CPU), 'no' or 'bf16'.
    keep_first / keep_recent: tokens read whole while training (each block's first tokens and each query's latest
      ones), as the cache that will hold them whole at inference; the projections then learn only the rest.
    """
    steps: int = 300
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-3
    extra_lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    kd_weight: float = 1.0
    lm_weight: float = 0.0
    schedule: tuple | None = None
    seed: int = 0
    eval_every: int = 50
    eval_budgets: tuple = (0.25, 0.5, 0.75)
    checkpoint_every: int = 25
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"
    positions: str = "spread"
    keep_first: int = 0
    keep_recent: int = 0
    progress: bool = True

    def __post_init__(self):
        def need(cond, msg):
            require("TrainConfig", cond, msg)

        check_counts("TrainConfig", self, ("steps", "batch_size", "grad_accum"), minimum=1)
        check_counts("TrainConfig", self, ("warmup_steps", "eval_every", "checkpoint_every", "seed"),
                     minimum=0)
        need(self.lr > 0, f"lr must be positive, not {self.lr}")
        need(self.extra_lr is None or self.extra_lr > 0, f"extra_lr must be positive, not {self.extra_lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, not {self.weight_decay}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], not {self.min_lr_ratio}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables clipping), not {self.grad_clip}")
        need(self.kd_weight >= 0 and self.lm_weight >= 0, "kd_weight and lm_weight must be >= 0")
        need(self.kd_weight + self.lm_weight > 0, "kd_weight and lm_weight cannot both be 0")
        need(self.mixed_precision in MIXED_PRECISION,
             f"mixed_precision must be one of {MIXED_PRECISION}, not {self.mixed_precision!r}")
        need(self.positions in POSITION_MODES,
             f"positions must be one of {POSITION_MODES}, not {self.positions!r}")
        check_whole_tokens(self.keep_first, self.keep_recent)
        self.eval_budgets = check_budgets(self.eval_budgets, "TrainConfig.eval_budgets")
        if self.schedule is not None:
            check_schedule(self.schedule)          # and against head_dim by the RankSampler
            self.schedule = tuple(self.schedule)

    @classmethod
    def fast(cls, **overrides) -> "TrainConfig":
        """A CI-sized run: a few short steps, evaluation and checkpoints switched down."""
        base = dict(steps=8, batch_size=2, warmup_steps=2, eval_every=0, checkpoint_every=0, progress=False)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    # fields that may differ between an interrupted run and its resumption without changing the result
    RESUME_FREE = ("progress", "eval_every", "checkpoint_every")

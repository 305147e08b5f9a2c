"""What `mkv fullrun` runs: its stages in order, how the time budget is shared out, and the sizes of every stage
for each profile ("gpu": full size on a CUDA device; "cpu": the embedded model on a CPU, small; "tiny": a tiny
random model, the test suite's rehearsal)."""
from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("smoke", "train", "search", "suite", "bench", "lmeval", "lora")
TASKS = ("piqa", "arc_easy", "hellaswag")
SUITE_BUDGETS = (0.5, 0.375)
BENCH_BUDGETS = (1.0, 0.5, 0.25)
# Relative shares of the time left when a stage starts: a stage gets left x weight / (sum of the weights of the
# stages still to run), so time a stage does not use flows to the later ones. --train-minutes overrides train's.
WEIGHTS = {"train": 0.8, "search": 0.12, "suite": 0.1, "bench": 0.15, "lmeval": 0.4, "lora": 0.23}
# Stage-level lm-eval methods of the sweep, in the order their cells run within a budget
METHODS = ("trained-adaptive", "trained-uniform", "pca-uniform")


@dataclass(frozen=True)
class Profile:
    """Sizes of every stage. Token counts are totals unless named per domain."""
    name: str
    smoke_tokens: int          # tokens of the block the exactness check runs
    smoke_new_tokens: int      # greedy tokens compared between CompressedCache and DynamicCache
    smoke_items: int           # lm-eval items per task in the smoke test
    pca_tokens: int            # calibration tokens when PCA has to be fitted (no shipped PCA for the model)
    train_seq: int             # training block length
    train_batch: int           # sequences per training step
    train_pool: int            # training tokens tokenised (the run cycles over them in seeded epochs)
    train_eval_tokens: int     # out-of-domain suite tokens of the periodic KL evaluation during training
    train_eval_budgets: tuple  # uniform budgets of that evaluation
    lr: float
    warmup: int
    checkpoint_s: float        # seconds between training checkpoints
    search: dict               # SearchConfig fields
    readout_tokens: int        # tokens per suite domain of the trajectory's precomputed quality grid
    readout_points: int        # budgets in that grid
    suite_tokens: int          # tokens per domain of the out-of-domain suite
    suite_seq: int
    lmeval_batch: int
    lmeval_budgets: tuple
    bench_context: int         # cached tokens per sequence (8k on a GPU: the embedded model's limit)
    bench_new_tokens: int
    bench_batch: int           # batch of the first (probe) measurement
    lora_seq: int
    lora_batch: int
    eval_batch: int            # sequences per forward pass when evaluating
    min_stage_s: float         # a stage with less time than this left is skipped
    extra: dict = field(default_factory=dict)


LMEVAL_BUDGETS = (1.0, 0.75, 0.625, 0.5, 0.375, 0.25)

# Each field's value in the three profiles side by side, (gpu, cpu, tiny), a line or two per stage
PROFILE_NAMES = ("gpu", "cpu", "tiny")
_PROFILE_TABLE = {
    "smoke_tokens": (512, 64, 16), "smoke_new_tokens": (16, 8, 4), "smoke_items": (20, 20, 3),
    "pca_tokens": (262144, 8192, 512),
    "train_seq": (1024, 128, 32), "train_batch": (32, 2, 2), "train_pool": (16_000_000, 65536, 1024),
    "train_eval_tokens": (16384, 512, 128), "train_eval_budgets": ((0.25, 0.375, 0.5, 0.75), (0.5,), (0.25, 0.5)),
    "lr": (2e-3, 2e-3, 2e-2), "warmup": (20, 4, 1), "checkpoint_s": (60.0, 60.0, 0.0),
    "search": (dict(step=8, min_rank=8, proxy_refresh=4, tokens=8192, seq_len=1024, batch_size=8),
               dict(step=32, min_rank=16, proxy_refresh=0, tokens=128, seq_len=128, batch_size=1),
               dict(step=4, min_rank=4, proxy_refresh=0, tokens=64, seq_len=32, batch_size=2)),
    "readout_tokens": (8192, 128, 64), "readout_points": (7, 3, 3),
    "suite_tokens": (16384, 256, 32), "suite_seq": (512, 128, 32),
    "lmeval_batch": (64, 16, 4), "lmeval_budgets": (LMEVAL_BUDGETS, LMEVAL_BUDGETS, (1.0, 0.5)),
    "bench_context": (8192, 256, 32), "bench_new_tokens": (32, 8, 4), "bench_batch": (16, 2, 2),
    "lora_seq": (512, 128, 64), "lora_batch": (16, 2, 2),
    "eval_batch": (16, 4, 4), "min_stage_s": (10.0, 5.0, 0.0),
    "extra": ({}, {}, {"train_steps_max": 3, "lora_steps_max": 2}),
}
SEARCH_SHARED = dict(stop_budget=0.25, strategy="proxy")   # the search settings every profile has


def _profile(i: int) -> Profile:
    fields = {k: values[i] for k, values in _PROFILE_TABLE.items()}
    fields["search"] = {**fields["search"], **SEARCH_SHARED}
    return Profile(PROFILE_NAMES[i], **fields)


PROFILES = {name: _profile(i) for i, name in enumerate(PROFILE_NAMES)}


def parse_stages(spec) -> tuple:
    """'smoke,train' or a list -> the stages in run order; unknown names raise with the list of known ones."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ValueError(f"unknown stage(s) {unknown or spec!r}: choose from {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)


@dataclass
class FullRunConfig:
    """One full run. ``minutes``: the whole run's wall-clock budget (model loading included); ``train_minutes``:
    training's own budget (default: its share of the time left); ``lmeval_limit``: items per task (None: the
    full splits); ``tiny``: a tiny random model and byte tokenizer instead of ``model`` (the CPU rehearsal)."""
    out: str
    minutes: float = 10.0
    model: str | None = None
    stages: tuple = STAGES
    train_minutes: float | None = None
    lmeval_limit: int | None = None
    tasks: tuple = TASKS
    device: str | None = None
    dtype: str | None = None
    tiny: bool = False
    overwrite: bool = False
    seed: int = 0

    def __post_init__(self):
        self.stages = parse_stages(self.stages)
        self.tasks = tuple(t.strip() for t in (self.tasks.split(",") if isinstance(self.tasks, str) else self.tasks)
                           if t and t.strip())
        if not self.minutes > 0:
            raise ValueError(f"--minutes must be positive, not {self.minutes!r}")
        if self.train_minutes is not None and not 0 < self.train_minutes <= self.minutes:
            raise ValueError(f"--train-minutes must lie in (0, --minutes={self.minutes:g}], not {self.train_minutes!r}")
        if self.lmeval_limit is not None and self.lmeval_limit < 1:
            raise ValueError(f"--lmeval-limit must be a positive number of items, not {self.lmeval_limit!r}")
        if not self.tasks:
            raise ValueError("no lm-eval tasks given")

"""What one benchmark point measures: :class:`BenchConfig`, the cache kinds, and the error for a missing quanto."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_allocation, check_budget

KINDS = ("compressed", "dynamic", "quanto", "ladder")
BASELINES = ("dynamic", "quanto")           # the kinds BenchConfig.baselines may name


class QuantoUnavailable(RuntimeError):
    """optimum-quanto is not installed, so transformers' quantized cache cannot be built."""


@dataclass
class BenchConfig:
    """One benchmark point. ``budget`` in (0, 1]; ``allocation`` 'uniform' or 'adaptive' (greedy-search ranks)."""
    projections: str = "pca"
    budget: float = 0.5
    allocation: str = "uniform"
    context: int = 1024
    batch: int = 4
    new_tokens: int = 16
    prefill_chunk: int = 512
    repeats: int = 3
    baselines: tuple[str, ...] = ("dynamic", "quanto")
    memory: bool = True
    synthetic_prefix: bool = False
    model: str | None = None
    corpus: str | None = None

    def __post_init__(self):
        check_budget(self.budget)
        check_allocation(self.allocation)
        for name in ("context", "batch", "new_tokens", "prefill_chunk", "repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        self.baselines = tuple(self.baselines)
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}: choose from {BASELINES}")

    @classmethod
    def fast(cls, **kw) -> "BenchConfig":
        """A CI-sized point: batch 2 x 512 tokens, 8 new tokens, one round."""
        return cls(**{**dict(context=512, batch=2, new_tokens=8, repeats=1), **kw})

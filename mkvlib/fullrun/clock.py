"""The run's wall clock and how its minutes are shared out between the stages.

Every stage reads the time through :func:`now` (one place, so a test can move the clock), and gets a deadline
from :meth:`Budget.deadline`: the time left when it starts, times its weight over the weights of the stages still
to run (:data:`~mkvlib.fullrun.config.WEIGHTS`). The smoke test has no share: it runs whole, first.
"""
from __future__ import annotations

import time

from .config import WEIGHTS


def now() -> float:
    """Seconds on a monotonic clock."""
    return time.monotonic()


class Budget:
    """``minutes`` of wall clock from construction; ``train_minutes`` fixes training's share."""

    def __init__(self, minutes: float, train_minutes: float | None = None):
        self.start, self.total = now(), 60.0 * minutes
        self.train_seconds = None if train_minutes is None else 60.0 * train_minutes

    def elapsed(self) -> float:
        return now() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()

    def share(self, stage: str, remaining: list) -> float:
        """Seconds ``stage`` may use, given the stages still to run (``stage`` first among them)."""
        left = max(0.0, self.left())
        if stage == "smoke":
            return left
        if stage == "train" and self.train_seconds is not None:
            return min(self.train_seconds, left)
        weights = [WEIGHTS[s] for s in remaining if s in WEIGHTS]
        return left * WEIGHTS[stage] / sum(weights)

    def deadline(self, stage: str, remaining: list) -> float:
        return now() + self.share(stage, remaining)

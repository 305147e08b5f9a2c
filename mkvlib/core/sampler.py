"""Matryoshka rank sampling: every forward pass draws r_K and r_V for every (layer, KV head) from a schedule.

Training at random prefixes of each basis is what orders its columns by importance, so that any prefix is a
usable projection (docs/design.md, section 5). Introduced in notebook 02.
"""
from __future__ import annotations

import torch

from .checks import check_schedule
from .geometry import KVGeometry


def default_schedule(head_dim: int) -> tuple[int, ...]:
    """{d/8, 2d/8, ..., d} (rounded, at least 1, duplicates dropped when d is small)."""
    return tuple(sorted({max(1, round(head_dim * i / 8)) for i in range(1, 9)}))


class RankSampler:
    """Draws independent ranks per (layer, KV head, K or V) uniformly from ``schedule``.

    ``sample()`` -> LongTensor (L, G, 2). Its generator's state is part of :meth:`state_dict`, so a resumed
    run draws exactly the ranks the uninterrupted run would have drawn.
    """

    def __init__(self, geometry: KVGeometry, schedule=None, seed: int = 0):
        self.geometry = geometry
        self.schedule = check_schedule(default_schedule(geometry.head_dim) if schedule is None else schedule,
                                       geometry.head_dim)
        self._values = torch.tensor(self.schedule, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(int(seed))

    def sample(self) -> torch.Tensor:
        idx = torch.randint(len(self.schedule), self.geometry.shape, generator=self.generator)
        return self._values[idx]

    def state_dict(self) -> dict:
        return {"schedule": list(self.schedule), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["schedule"]) != self.schedule:
            raise ValueError(f"checkpoint was trained with rank schedule {tuple(state['schedule'])}, "
                             f"not {self.schedule}: resume with the same schedule")
        self.generator.set_state(state["generator"])

"""A recorded greedy search: the ordered steps from every rank at d down to the floor, saved as JSON.

Each step lowers one entry (layer, KV head, K or V) to a new rank and records the calibration KL the search
measured (or, for the proxy, estimated) after it and the budget after it. The ranks for any budget are the
shortest prefix whose budget is at or below it, so a budget slider only replays steps. Optional precomputed
evaluations (KL and perplexity at a grid of budgets on the out-of-domain suite, the mean over its domains; older
files: on one held-out corpus) make a slider's readout instant. The greedy search (:mod:`mkvlib.search`) records
one; trajectories shipped with the project (data/trajectories/<model>.<kind>.trajectory.json) are found by the
projections' fingerprint (:func:`find_trajectory`). Introduced in notebook 03.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checks import check_budget
from .env import shipped_data_dir
from .geometry import K, V
from .io import existing_file, write_json
from .projections import resolve_projections

FORMAT = "mkv-trajectory/1"
STEP_FIELDS = ("layer", "head", "kind", "rank", "kl", "budget")
KIND_NAMES = ("K", "V")
SUITE_CORPUS = "ood suite"   # evaluations["corpus"] of a readout measured on the out-of-domain suite


def readout_label(evaluations: dict | None) -> str:
    """What a trajectory's readout was measured on, in words: 'the out-of-domain suite (mean over N domains)'
    or the corpus name; '' when nothing was measured or the record does not say on what."""
    ev = evaluations or {}
    if not ev.get("rows"):
        return ""
    if ev.get("corpus") == SUITE_CORPUS:
        n = len(ev.get("domains") or [])
        return f"the out-of-domain suite (mean over {n} domain{'s' if n != 1 else ''})"
    return str(ev.get("corpus") or "")


class TrajectoryMismatchError(ValueError):
    """A trajectory was recorded for other projections (or another model) than the ones it is used with."""


@dataclass
class Trajectory:
    """Steps (layer, head, kind 0=K/1=V, new rank, kl, budget) for a model of (L, G, d) = ``geometry``.

    ``kl`` is the search's calibration score after the step: the KL to the base model, plus
    ``meta['config']['nll_weight']`` times the NLL change when the search was run with that weight.
    """
    model: str
    fingerprint: str
    geometry: tuple[int, int, int]
    steps: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    evaluations: dict | None = None

    def __post_init__(self):
        self.geometry = tuple(int(x) for x in self.geometry)
        self.steps = [(int(l), int(g), int(c), int(r), float(kl), float(b)) for l, g, c, r, kl, b, *_ in self.steps]
        self._table = None

    # --- ranks ----------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.geometry[2]

    def __len__(self) -> int:
        return len(self.steps)

    def moves(self) -> list[tuple[int, int, int, int]]:
        """(layer, head, kind, new rank) of each step, in order: the choices without their scores."""
        return [s[:4] for s in self.steps]

    def full_ranks(self) -> torch.Tensor:
        L, G, d = self.geometry
        return torch.full((L, G, 2), d, dtype=torch.long)

    def _ranks_table(self) -> np.ndarray:
        """(n+1, L, G, 2): the ranks after 0, 1, ..., n steps (built once)."""
        if self._table is None:
            table = np.empty((len(self.steps) + 1, *self.full_ranks().shape), dtype=np.int16)
            table[0] = self.head_dim
            for i, (l, g, c, r, *_) in enumerate(self.steps, 1):
                table[i] = table[i - 1]
                table[i, l, g, c] = r
            self._table = table
        return self._table

    def ranks_after(self, n: int) -> torch.Tensor:
        """Ranks (L, G, 2) after the first ``n`` steps."""
        if not 0 <= n <= len(self.steps):
            raise ValueError(f"this trajectory has {len(self.steps)} steps; asked for the ranks after {n}")
        return torch.from_numpy(self._ranks_table()[n].astype(np.int64))

    def budgets(self) -> np.ndarray:
        """(n+1,) budget after 0, 1, ..., n steps (1.0 first)."""
        return np.concatenate([[1.0], [s[5] for s in self.steps]])

    @property
    def final_budget(self) -> float:
        return self.steps[-1][5] if self.steps else 1.0

    def ranks_at(self, budget: float | None = None, key_budget: float | None = None,
                 value_budget: float | None = None) -> torch.Tensor:
        """Ranks (L, G, 2) for a pooled ``budget``, or for separate ``key_budget`` and ``value_budget``.

        Pooled: the shortest prefix of the trajectory whose budget is at or below ``budget``. Separate: the
        shortest prefix of the key steps whose key budget is at or below ``key_budget``, and likewise for values.
        The result never exceeds the budget asked for.
        """
        if budget is not None:
            if key_budget is not None or value_budget is not None:
                raise ValueError("give either one pooled budget or key_budget and value_budget, not both")
            check_budget(budget)
            return self.ranks_after(self._prefix(self.budgets(), budget, "budget"))
        if key_budget is None or value_budget is None:
            raise ValueError("give a pooled budget, or both key_budget and value_budget")
        check_budget(key_budget)
        check_budget(value_budget)
        ranks = self.full_ranks()
        for kind, target in ((K, key_budget), (V, value_budget)):
            mine = [s for s in self.steps if s[2] == kind]
            part = ranks[..., kind].clone()
            levels = [1.0]
            for l, g, _, r, *_ in mine:
                part[l, g] = r
                levels.append(float(part.double().mean()) / self.head_dim)
            n = self._prefix(np.array(levels), target, f"{KIND_NAMES[kind]} budget")
            for l, g, _, r, *_ in mine[:n]:
                ranks[l, g, kind] = r
        return ranks

    @staticmethod
    def _prefix(levels: np.ndarray, target: float, what: str) -> int:
        ok = np.nonzero(levels <= target + 1e-9)[0]
        if len(ok) == 0:
            raise ValueError(f"this trajectory only reaches a {what} of {levels.min():.4f}; {target:.4f} is below "
                             "its floor. Search further (lower --min-rank or stop budget) or ask for more.")
        return int(ok[0])

    # --- identity -------------------------------------------------------------------------------------
    def check_projections(self, projections, model=None) -> None:
        """Raise :class:`TrajectoryMismatchError` unless this trajectory was searched with ``projections``."""
        theirs = projections.fingerprint()
        if theirs != self.fingerprint:
            raise TrajectoryMismatchError(
                f"this trajectory was searched with projections {self.fingerprint} "
                f"({self.meta.get('projections', '?')}) for {self.model!r}, not with projections {theirs} "
                f"({projections.meta.get('kind', projections.meta.get('method', '?'))}). Run `mkv search "
                "--projections ...` for these projections.")
        name = getattr(model, "mkv_name", None) if model is not None else None
        if name is not None and name != self.model:
            raise TrajectoryMismatchError(f"this trajectory is for model {self.model!r}, not {name!r}")

    # --- precomputed quality --------------------------------------------------------------------------
    def quality_at(self, budget: float, allocation: str = "adaptive") -> dict | None:
        """KL and perplexity at ``budget`` from the precomputed grid, linearly interpolated (log-perplexity);
        None when nothing was precomputed for that allocation. ``measured_on`` says on what text
        (:func:`readout_label`: the out-of-domain suite's mean over domains, or one corpus)."""
        rows = sorted((r for r in (self.evaluations or {}).get("rows", []) if r["allocation"] == allocation),
                      key=lambda r: r["budget"])
        if not rows:
            return None
        xs = np.array([r["budget"] for r in rows])
        b = float(np.clip(budget, xs[0], xs[-1]))
        out = {"budget": budget, "allocation": allocation, "interpolated": not np.isclose(xs, b).any()}
        for key in ("kl_to_base", "top1_agreement"):
            out[key] = float(np.interp(b, xs, [r[key] for r in rows]))
        out["perplexity"] = float(math.exp(np.interp(b, xs, [math.log(r["perplexity"]) for r in rows])))
        out["base_perplexity"] = rows[0]["base_perplexity"]
        out["measured_on"] = readout_label(self.evaluations)
        return out

    # --- files ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        L, G, d = self.geometry
        return {"format": FORMAT, "model": self.model, "fingerprint": self.fingerprint,
                "geometry": {"layers": L, "kv_heads": G, "head_dim": d}, "meta": self.meta,
                "step_fields": list(STEP_FIELDS),
                "steps": [[l, g, c, r, round(kl, 6), round(b, 6)] for l, g, c, r, kl, b in self.steps],
                "evaluations": self.evaluations}

    def save(self, path: str | Path) -> Path:
        """Write atomically as JSON."""
        path = Path(path)
        if path.suffix != ".json":
            raise ValueError(f"a trajectory file must end in .json, not {path.name!r}")
        write_json(path, self.to_dict(), indent=None)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        path = existing_file(path, "trajectory file", f"; make one with `mkv search --out {Path(path)}`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); it may be truncated") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a trajectory file (format {FORMAT!r} expected)")
        if list(data.get("step_fields", [])) != list(STEP_FIELDS):
            raise ValueError(f"{path} has step fields {data.get('step_fields')}, expected {list(STEP_FIELDS)}")
        geo = data["geometry"]
        traj = cls(data["model"], data["fingerprint"], (geo["layers"], geo["kv_heads"], geo["head_dim"]),
                   data["steps"], data.get("meta", {}), data.get("evaluations"))
        traj.validate()
        return traj

    def validate(self) -> None:
        """Raise ValueError unless every step lowers an existing entry and budgets fall monotonically."""
        L, G, d = self.geometry
        ranks = self.full_ranks()
        last = 1.0
        for i, (l, g, c, r, kl, b) in enumerate(self.steps):
            if not (0 <= l < L and 0 <= g < G and c in (K, V)):
                raise ValueError(f"step {i} names entry ({l}, {g}, {c}) outside geometry {self.geometry}")
            if not 0 <= r < ranks[l, g, c]:
                raise ValueError(f"step {i} does not lower entry ({l}, {g}, {KIND_NAMES[c]}): {int(ranks[l, g, c])} -> {r}")
            ranks[l, g, c] = r
            actual = float(ranks.double().mean()) / d
            if abs(actual - b) > 1e-5 or b > last + 1e-12:
                raise ValueError(f"step {i} records budget {b}, but the ranks give {actual:.6f}")
            last = b


# --- trajectories shipped with the project --------------------------------------------------------------------
def trajectories_dir() -> Path:
    return shipped_data_dir() / "trajectories"


def shipped_trajectory_path(model_name: str, kind: str) -> Path:
    """data/trajectories/<model>.<kind>.trajectory.json (kind: 'pca', 'trained', ...)."""
    return trajectories_dir() / f"{model_name}.{kind}.trajectory.json"


def find_trajectory(model, projections) -> Trajectory:
    """The shipped trajectory searched with exactly these projections (matched by fingerprint) for ``model``."""
    projections = resolve_projections(projections, model)
    name = getattr(model, "mkv_name", "?")
    fingerprint = projections.fingerprint()
    candidates = sorted(trajectories_dir().glob(f"{name}.*.json")) if trajectories_dir().is_dir() else []
    for path in candidates:
        traj = Trajectory.load(path)
        if traj.fingerprint == fingerprint:
            return traj
    seen = ", ".join(p.name for p in candidates) or "none"
    raise TrajectoryMismatchError(
        f"no shipped trajectory for model {name!r} with projections {fingerprint} (looked in {trajectories_dir()}; "
        f"found: {seen}). Run `mkv search --projections ... --out FILE` and pass its ranks, or use "
        "--allocation uniform.")

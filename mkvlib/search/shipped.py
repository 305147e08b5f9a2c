"""Trajectories shipped with the project (data/trajectories/<model>.<kind>.trajectory.json), found by the
projections' fingerprint; :func:`adaptive_ranks` is what ``mkv eval --allocation adaptive`` uses. Introduced in
notebook 03.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..geometry import KVGeometry, resolve_ranks
from ..projections import resolve_projections
from ..runtime import shipped_data_dir
from .trajectory import Trajectory, TrajectoryMismatchError


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


def adaptive_ranks(model, projections, budget: float, trajectory=None) -> torch.Tensor:
    """Ranks (L, G, 2) at ``budget`` from the shipped greedy-search trajectory for ``projections``, or from
    ``trajectory`` (a :class:`Trajectory` or a path to one), which must have been searched with them."""
    if trajectory is None:
        traj = find_trajectory(model, projections)
    else:
        traj = trajectory if isinstance(trajectory, Trajectory) else Trajectory.load(trajectory)
        traj.check_projections(resolve_projections(projections, model), model)
    return resolve_ranks(traj.ranks_at(budget), KVGeometry.of(model))

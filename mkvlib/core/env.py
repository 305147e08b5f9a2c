"""The two things the method needs from its surroundings: where the shipped artefacts live (projections and
trajectories under ``data/``) and a progress bar that fast mode switches off. Everything else about the run
(device, dtype, seeds, the Hub) is :mod:`mkvlib.runtime`'s.
"""
from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def fast_mode() -> bool:
    """True when ``MKV_FAST`` asks for CI-sized runs (``MKV_FAST=1``)."""
    return os.environ.get("MKV_FAST", "").strip().lower() in _TRUE


def progress_bar(iterable=None, **kwargs):
    """A tqdm progress bar (the notebook widget in a kernel), switched off in fast mode: CI-sized runs take seconds,
    and a widget bar saved in a static notebook copy renders as a frozen '0%'."""
    from tqdm.auto import tqdm

    if fast_mode():
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def project_dir() -> Path:
    """The project checkout: the folder holding ``data/`` and ``figures/`` (``MKV_PROJECT_DIR`` overrides)."""
    if os.environ.get("MKV_PROJECT_DIR"):
        return Path(os.environ["MKV_PROJECT_DIR"])
    here = Path(__file__).resolve().parents[2]
    if (here / "data").is_dir():
        return here
    return Path.cwd()


def shipped_data_dir() -> Path:
    """The project's own artefacts: shipped projections, trajectories, result tables."""
    return project_dir() / "data"

"""Run-time switches shared by every notebook and command: fast mode, device and dtype, seeds, paths.

Introduced in notebook 01; every later notebook starts with the same three calls.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

_TRUE = {"1", "true", "yes", "on"}


def fast_mode() -> bool:
    """True when ``MKV_FAST`` asks for CI-sized runs (``MKV_FAST=1``)."""
    return os.environ.get("MKV_FAST", "").strip().lower() in _TRUE


def pick(fast, full):
    """Return ``fast`` in fast mode, ``full`` otherwise: the one switch every size parameter goes through."""
    return fast if fast_mode() else full


def device_and_dtype(device: str | torch.device | None = None, dtype: torch.dtype | str | None = None):
    """The one place that picks where and how models run.

    CUDA when present (bfloat16), otherwise CPU (float32). ``MKV_DEVICE`` and ``MKV_DTYPE`` override.
    """
    device = device or os.environ.get("MKV_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    dtype = dtype or os.environ.get("MKV_DTYPE")
    if isinstance(dtype, str):
        try:
            dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                     "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16") from None
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where converted models and other rebuildable artefacts live (``MKV_CACHE_DIR``, default ~/.cache/mkvlib)."""
    path = Path(os.environ.get("MKV_CACHE_DIR") or Path.home() / ".cache" / "mkvlib")
    path.mkdir(parents=True, exist_ok=True)
    return path


def project_dir() -> Path:
    """The project checkout: the folder holding ``data/`` and ``figures/`` (``MKV_PROJECT_DIR`` overrides)."""
    if os.environ.get("MKV_PROJECT_DIR"):
        return Path(os.environ["MKV_PROJECT_DIR"])
    here = Path(__file__).resolve().parent.parent
    if (here / "data").is_dir():
        return here
    return Path.cwd()


def shipped_data_dir() -> Path:
    """The project's own artefacts: shipped projections, trajectories, result tables."""
    return project_dir() / "data"


def figures_dir() -> Path:
    """Figures go to ``figures/`` (full runs) or ``figures/fast/`` (fast mode, not committed)."""
    path = project_dir() / "figures"
    if fast_mode():
        path = path / "fast"
    path.mkdir(parents=True, exist_ok=True)
    return path

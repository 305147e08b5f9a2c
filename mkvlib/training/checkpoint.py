"""Training checkpoints: one file, written atomically, whose payload is checked by length and SHA-256.

Layout: a magic line, one JSON line {"format", "length", "sha256"}, then the ``torch.save`` payload.
A truncated, corrupted or foreign file raises :class:`CheckpointError` (a ValueError) and is never used.
Introduced in notebook 02.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from ..core.io import atomic_path

MAGIC = b"MKV-CHECKPOINT\n"
FORMAT = "mkv-train-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, truncated, corrupted, or written for another run."""


def save_checkpoint(path, state: dict) -> Path:
    """Serialise ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = {"format": FORMAT, "length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + json.dumps(header).encode() + b"\n" + payload)
    return path


def load_checkpoint(path) -> dict:
    """The state saved by :func:`save_checkpoint`, after checking magic, format, length and hash."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an mkv training checkpoint (bad magic bytes)")
    rest = raw[len(MAGIC):]
    line, sep, payload = rest.partition(b"\n")
    try:
        header = json.loads(line) if sep else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} has an unreadable or unknown header; expected format {FORMAT!r}")
    if len(payload) != header["length"]:
        raise CheckpointError(f"{path} is truncated or padded: payload has {len(payload)} bytes, the header says "
                              f"{header['length']}. Use an earlier checkpoint or start again.")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CheckpointError(f"{path} is corrupted: its SHA-256 does not match the header. "
                              "Use an earlier checkpoint or start again.")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)

"""Orthogonal projections per (layer, KV head) for keys and values, saved as safetensors with a JSON header.

Columns of each d x d basis are ordered by importance, so the first r columns are the rank-r subspace.
Introduced in notebook 01 (PCA) and notebook 02 (trained).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from .env import shipped_data_dir
from .geometry import KVGeometry
from .io import atomic_path, existing_file, read_safetensors

FORMAT = "mkv-projections/1"
SHIPPED = {"pca": "{model}.pca.safetensors", "trained": "{model}.trained.safetensors"}


class ProjectionMismatchError(ValueError):
    """Projections were made for another model (or geometry) than the one they are used with."""


@dataclass
class Projections:
    """Bases U_K, U_V of shape (L, G, d, d), value means mu_V (L, G, d), optional spectra (L, G, d)."""
    keys: torch.Tensor
    values: torch.Tensor
    value_mean: torch.Tensor
    key_spectrum: torch.Tensor | None = None
    value_spectrum: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        L, G, d, d2 = self.keys.shape
        if d != d2 or self.values.shape != self.keys.shape or self.value_mean.shape != (L, G, d):
            raise ValueError(f"inconsistent projection shapes: keys {tuple(self.keys.shape)}, values "
                             f"{tuple(self.values.shape)}, value_mean {tuple(self.value_mean.shape)}")

    @property
    def geometry(self) -> tuple[int, int, int]:
        """(L, G, d)."""
        return tuple(self.keys.shape[:3])

    @property
    def model_name(self) -> str:
        return self.meta.get("model", "?")

    def fingerprint(self) -> str:
        """A short hash of the bases and means: the identity that trajectories and results refer to."""
        h = hashlib.sha256()
        for t in (self.keys, self.values, self.value_mean):
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def orthogonality_error(self) -> float:
        """max over bases of ||U^T U - I||_max."""
        eye = torch.eye(self.keys.shape[-1], dtype=torch.float64)
        err = 0.0
        for U in (self.keys, self.values):
            U = U.double()
            err = max(err, float((U.transpose(-1, -2) @ U - eye).abs().max()))
        return err

    def check_model(self, model, allow_other_model: bool = False) -> None:
        """Raise :class:`ProjectionMismatchError` unless these projections fit ``model``."""
        geom = KVGeometry.of(model)
        mine = self.geometry
        theirs = (geom.layers, geom.kv_heads, geom.head_dim)
        name = getattr(model, "mkv_name", None) or getattr(model.config, "name_or_path", "?")
        if mine != theirs:
            raise ProjectionMismatchError(
                f"projections made for {self.model_name!r} with (layers, kv_heads, head_dim) = {mine} cannot be "
                f"used with {name!r}, which has {theirs}. Fit projections for this model: mkv fit-pca --model ...")
        if not allow_other_model and self.meta.get("model") not in (None, name):
            raise ProjectionMismatchError(
                f"projections were made for model {self.model_name!r}, not {name!r}. Fit new ones for this model, "
                "or pass allow_other_model=True if it is the same network under another name.")

    def save(self, path: str | Path) -> Path:
        """Write atomically: tensors as safetensors, ``meta`` as JSON in the header."""
        tensors = {"keys": self.keys, "values": self.values, "value_mean": self.value_mean}
        if self.key_spectrum is not None:
            tensors["key_spectrum"] = self.key_spectrum
        if self.value_spectrum is not None:
            tensors["value_spectrum"] = self.value_spectrum
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        meta = dict(self.meta, format=FORMAT, fingerprint=self.fingerprint())
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"mkv": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Projections":
        path = existing_file(path, "projections file")
        header, tensors = read_safetensors(path)
        if "mkv" not in header:
            raise ValueError(f"{path} has no MatryoshkaKV header: it was not written by mkvlib")
        meta = json.loads(header["mkv"])
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} has format {meta.get('format')!r}; this mkvlib reads {FORMAT!r}")
        proj = cls(tensors["keys"], tensors["values"], tensors["value_mean"], tensors.get("key_spectrum"),
                   tensors.get("value_spectrum"), meta)
        if meta.get("fingerprint") and proj.fingerprint() != meta["fingerprint"]:
            raise ValueError(f"{path}: tensors do not match the fingerprint in the header (corrupted file?)")
        return proj


def shipped_path(kind: str, model_name: str) -> Path:
    """Where the project keeps its shipped projections of ``kind`` ('pca' or 'trained') for a model."""
    return shipped_data_dir() / "projections" / SHIPPED[kind].format(model=model_name)


def resolve_projections(spec, model=None) -> Projections:
    """Projections from an object, a path, or a shipped name ('pca', 'trained') for ``model``; checked against it."""
    if isinstance(spec, Projections):
        proj = spec
    elif isinstance(spec, str) and spec in SHIPPED:
        if model is None:
            raise ValueError(f"the shipped name {spec!r} needs a model to know whose projections to load")
        name = getattr(model, "mkv_name", "?")
        path = shipped_path(spec, name)
        if not path.exists():
            raise FileNotFoundError(f"no shipped {spec} projections for model {name!r} (looked for {path}). "
                                    f"Make them with `mkv fit-pca --out FILE` or `mkv train --out FILE`.")
        proj = Projections.load(path)
    else:
        proj = Projections.load(spec)
    if model is not None:
        proj.check_model(model)
    return proj

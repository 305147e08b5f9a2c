"""What the committed artefacts under ``data/`` say about themselves: :class:`Data`, read from the files (JSON, CSV,
safetensors headers; the trajectories' rank digests need torch)."""
from __future__ import annotations

import json
import struct
from functools import cached_property
from pathlib import Path


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def safetensors_meta(path) -> dict:
    """The MatryoshkaKV header of a projections file ({} for any other safetensors file, e.g. a LoRA adapter)."""
    with open(path, "rb") as fh:
        meta = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0])).get("__metadata__") or {}
    return json.loads(meta["mkv"]) if "mkv" in meta else {}


def register(registry: dict, name: str, entry) -> None:
    if name in registry:
        raise ValueError(f"{name!r} is already registered")
    registry[name] = entry


def first_with(found: dict, field: str, value) -> str | None:
    """The first key of ``found`` ({path: dict}) whose dict has ``field`` == ``value``."""
    return next((p for p, m in found.items() if m.get(field) == value), None)


class Data:
    """One data folder (``root``/data); paths are relative to ``root``, with forward slashes."""

    def __init__(self, root):
        self.root = Path(root)
        self.dir = self.root / "data"
        self.results = self.dir / "results"

    def rel(self, path) -> str:
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def result(self, name: str) -> tuple[Path | None, dict | None]:
        """(path, record) of ``data/results/<name>`` (JSON), or (None, None) when it is not there."""
        path = self.results / name
        return (path, read_json(path)) if path.is_file() else (None, None)

    @cached_property
    def files(self) -> list[Path]:
        """Every artefact file, sorted (hidden and temporary files and data/README.md left out)."""
        return sorted(p for p in self.dir.rglob("*") if p.is_file() and not p.name.endswith(".tmp")
                      and not any(x.startswith(".") for x in p.relative_to(self.dir).parts)
                      and p.relative_to(self.dir).as_posix() != "README.md")

    def bundle_of(self, path) -> Path | None:
        """The LoRA bundle folder (a folder with a manifest.json) that ``path`` lies in, if any."""
        return next((p for p in Path(path).parents if self.dir in p.parents and (p / "manifest.json").is_file()), None)

    @cached_property
    def projections(self) -> dict[str, dict]:
        """{path: header} of every MatryoshkaKV projections file."""
        metas = {self.rel(p): safetensors_meta(p) for p in self.files if p.suffix == ".safetensors"}
        return {p: m for p, m in metas.items() if m}

    def projections_file(self, fingerprint: str) -> str | None:
        return first_with(self.projections, "fingerprint", fingerprint)

    @cached_property
    def projection_records(self) -> dict[str, dict]:
        """{projections file: the record beside it, holding the command that made it}."""
        found = {p: self.record_of(p) or {} for p in self.projections}
        return {p: r for p, r in found.items() if r.get("fingerprint") == self.projections[p].get("fingerprint")
                and "command" in r}

    @cached_property
    def training_records(self) -> dict[str, dict]:
        return {p: r for p, r in self.projection_records.items() if "steps" in r}

    @cached_property
    def trajectories(self) -> dict[str, dict]:
        found = {self.rel(p): read_json(p) for p in self.files if p.suffix == ".json"}
        return {p: t for p, t in found.items() if isinstance(t, dict) and t.get("format") == "mkv-trajectory/1"}

    @cached_property
    def trajectory_of(self) -> dict[str, str]:
        """{adaptive ranks digest (how a results row names its ranks): the committed trajectory that gives them}."""
        import torch

        from ..core.trajectory import Trajectory
        from ..lmeval.sweep import ranks_digest

        out = {}
        for path in self.trajectories:
            traj = Trajectory.load(self.root / path)
            for budget in (0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125):
                try:
                    out.setdefault(ranks_digest(torch.as_tensor(traj.ranks_at(budget)).long()), path)
                except ValueError:          # below this trajectory's floor
                    continue
        return out

    def default_trajectory(self, fingerprint: str) -> str | None:
        """The trajectory ``--allocation adaptive`` picks: the first in data/trajectories/ with this fingerprint."""
        top = (self.dir / "trajectories").resolve()
        return first_with({p: t for p, t in self.trajectories.items() if (self.root / p).resolve().parent == top},
                          "fingerprint", fingerprint)

    @cached_property
    def manifests(self) -> dict[str, dict]:
        """{bundle folder: manifest} of every LoRA bundle."""
        return {self.rel(p.parent): read_json(p) for p in self.files if p.name == "manifest.json"}

    def bundle_with_adapter(self, weights_hash: str) -> str | None:
        return first_with(self.manifests, "adapter_weights_hash", weights_hash)

    def record_of(self, path) -> dict | None:
        """The JSON record beside an artefact (``X.json`` for ``X.safetensors`` or ``X.csv``), if there is one."""
        beside = (self.root / path).with_suffix(".json")
        obj = read_json(beside) if beside.is_file() and beside != self.root / path else None
        return obj if isinstance(obj, dict) else None

    def short(self, path: str | None) -> str:
        """A short label for an artefact: its name without the model prefix and extension, or its bundle's name."""
        if path is None:
            return "not committed"
        if (bundle := self.bundle_of(self.root / path)) is not None:
            return bundle.name
        name = Path(path).name.removesuffix(".safetensors").removesuffix(".json").removesuffix(".csv")
        head, _, rest = name.partition(".")
        return rest if rest and "-" in head else name


def by_int(named: dict) -> list[tuple]:
    """The items of a dict keyed by numbers written as strings, in numeric order."""
    return sorted(named.items(), key=lambda kv: int(kv[0]))

"""The target machine: what it has (a ``pip freeze`` or names), its Python and platform tags, and the
project's requirements."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .base import DEFAULT_PLATFORMS, BundleError, canonical, never_download, repo_root

_REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(?:(===?)\s*([^\s;#]+))?")


def parse_freeze(text: str) -> dict[str, str | None]:
    """``pip freeze`` (or requirements) text -> {canonical name: version or None}. Options, editable lines and
    comments are skipped; ``name @ url`` has no version."""
    out: dict[str, str | None] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = _REQ_LINE.match(line)
        if m:
            out[canonical(m.group(1))] = m.group(4) if m.group(3) else None
    return out


def parse_names(text: str) -> dict[str, None]:
    return {canonical(n): None for n in re.split(r"[,\s]+", text or "") if n.strip()}


def expand_platforms(platforms) -> list[str]:
    """Platform tags for pip: each ``manylinux_2_N_arch`` also brings every older glibc (down to 2.17, which
    manylinux2014 names; pip itself adds manylinux2010 and manylinux1 to that)."""
    out: list[str] = []
    for p in platforms:
        m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", p)
        tags = [f"manylinux_2_{g}_{m.group(2)}" for g in range(int(m.group(1)), 16, -1)] if m else [p]
        if m:
            tags.append(f"manylinux2014_{m.group(2)}")
        out.extend(t for t in tags if t not in out)
    return out


@dataclass
class Target:
    """The Python the wheels are for, and the distributions it has (canonical name -> version or None)."""
    python_version: str = "3.12"
    platforms: tuple = DEFAULT_PLATFORMS
    has: dict = field(default_factory=dict)
    complete: bool = False          # a full `pip freeze`: everything it lacks is missing

    @property
    def abi(self) -> str:
        return "cp" + "".join(self.python_version.split(".")[:2])

    def pip_args(self) -> list[str]:
        args = ["--only-binary=:all:", "--python-version", self.python_version, "--implementation", "cp",
                "--abi", self.abi]
        for p in expand_platforms(self.platforms):
            args += ["--platform", p]
        return args

    def constraints(self) -> list[str]:
        """``name==version`` for the versions the target has (local labels such as +cu128 dropped)."""
        return [f"{n}=={v.split('+')[0]}" for n, v in sorted(self.has.items()) if v and not never_download(n)]

    def marker_environment(self) -> dict:
        major_minor = ".".join(self.python_version.split(".")[:2])
        full = self.python_version if self.python_version.count(".") >= 2 else major_minor + ".0"
        machine = "aarch64" if any("aarch64" in p for p in self.platforms) else "x86_64"
        return {"implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
                "platform_machine": machine, "platform_python_implementation": "CPython", "platform_release": "",
                "platform_system": "Linux", "platform_version": "", "python_full_version": full,
                "python_version": major_minor, "sys_platform": "linux"}


def _packaging():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def project_requirements(pyproject: str | os.PathLike | None = None) -> list[str]:
    """The ``[project] dependencies`` of the checkout's pyproject.toml."""
    path = Path(pyproject) if pyproject else repo_root() / "pyproject.toml"
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    try:
        return list(tomllib.loads(path.read_text())["project"]["dependencies"])
    except (OSError, KeyError) as err:
        raise BundleError(f"cannot read the project's dependencies from {path}: {err}") from err

"""What the parts of an offline bundle share: its format constants, errors, names of distributions, sizes,
the checkout's root, and replacing a folder atomically."""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

FORMAT = "mkv-offline-bundle"
VERSION = 1
MIB = 1 << 20
DEFAULT_CHUNK_MB = 39.0
DEFAULT_GROUP_MB = 40.0
MANIFEST = "manifest.json"
# what the lent GPU machine has installed (names; their dependencies count as present too)
DEFAULT_TARGET_HAS = "torch,transformers,peft,accelerate,pandas,matplotlib,seaborn"
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")
NEVER_DOWNLOAD = ("torch", "triton", "nvidia-*")      # on every GPU target with torch; far too large to carry
DEFAULT_TEXTS = "run"                                 # the data files the project's corpora and local tasks read
_RESERVE = 256 * 1024                                 # room kept in each group for its copy of the manifest


class BundleError(RuntimeError):
    """A bundle cannot be made or unpacked; the message says which piece or package and what to do."""


class Unresolvable(BundleError):
    """pip found no wheel for some requirements (for the target's Python and platform)."""

    def __init__(self, requirements: list[str], message: str):
        super().__init__(message)
        self.requirements = list(requirements)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def canonical(name: str) -> str:
    """A distribution's normalised name (PEP 503): case, '-', '_' and '.' do not matter."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def never_download(name: str) -> bool:
    name = canonical(name)
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in NEVER_DOWNLOAD)


def mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def repo_root() -> Path:
    """The checkout this package lives in (mkvlib/offline/ -> the repository root)."""
    return Path(__file__).resolve().parents[2]


def replace_dir(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest``, replacing an earlier bundle there (renames, so never a mix of two)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

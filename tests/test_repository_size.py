"""The tracked files stay small enough to travel with the model to a machine without network (at most 16 MiB in
all): large artefacts (LoRA weights, superseded projections) live in git history, not in the tree."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

LIMIT = 16 * 2**20
ROOT = Path(__file__).resolve().parents[1]


def tracked_sizes() -> dict[str, int]:
    """{path: bytes} of every file git tracks in this checkout (a tracked file deleted from the tree counts 0)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: no tracked files to measure")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    if out.returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout: no tracked files to measure")
    paths = [p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
    return {p: os.lstat(ROOT / p).st_size if os.path.lexists(ROOT / p) else 0 for p in paths}


def test_tracked_files_fit_in_16_mib():
    sizes = tracked_sizes()
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:10]
    table = "\n".join(f"{size / 2**20:9.2f} MiB  {path}" for path, size in largest)
    assert total <= LIMIT, (f"tracked files total {total / 2**20:.2f} MiB, over the {LIMIT / 2**20:.0f} MiB limit; "
                            f"the ten largest:\n{table}\nKeep large artefacts out of the tree (git history keeps "
                            "them), or store them compactly")

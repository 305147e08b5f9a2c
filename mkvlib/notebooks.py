"""Execute every notebook headless (``python -m mkvlib.notebooks``): used by ``make notebooks`` and the tests.

Executed copies go to ``--out`` (build products, never committed); figures to figures/ (figures/fast/ in fast mode).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .runtime import project_dir


def notebook_paths() -> list[Path]:
    return sorted((project_dir() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path, out_dir: Path | None = None, timeout: int = 1800) -> float:
    """Run one notebook top to bottom in its own folder; return seconds taken. Raises on a failing cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.time() - start
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="build/notebooks", help="folder for the executed copies")
    parser.add_argument("names", nargs="*", help="only notebooks whose file name contains one of these")
    args = parser.parse_args(argv)
    paths = [p for p in notebook_paths() if not args.names or any(n in p.name for n in args.names)]
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        print(f"  done in {execute(path, Path(args.out)):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Execute every notebook headless (``python -m mkvlib.notebooks``): used by ``make notebooks`` and the tests.

Executed copies go to ``--out`` (build products, never committed), a failed notebook's too (with its outputs up to
the failing cell); figures to figures/ (figures/fast/ in fast mode). The run goes on past a failing notebook,
prints a summary of every notebook at the end, and exits with status 1 if any failed.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .core.env import fast_mode, project_dir


def notebook_paths() -> list[Path]:
    return sorted((project_dir() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


FAST_CELL_TIMEOUT, FULL_CELL_TIMEOUT = 600, 1800      # seconds per cell; a fast-mode cell takes about a minute


def execute(path: Path, out_dir: Path | None = None, timeout: int | None = None) -> float:
    """Run one notebook top to bottom in its own folder; return seconds taken. Raises on a failing cell, after
    writing the partly executed copy to ``out_dir`` (when given). ``timeout``: seconds per cell (default 600 in
    fast mode, 1800 in full). In fast mode a cell that times out, or a kernel that dies, runs the notebook once
    more: a kernel message lost under load leaves kernel and client both idle until the timeout, and a second
    run passes; a cell that is really too slow fails twice."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    timeout = timeout or (FAST_CELL_TIMEOUT if fast_mode() else FULL_CELL_TIMEOUT)
    tries = 2 if fast_mode() else 1
    for attempt in range(1, tries + 1):
        nb = nbformat.read(path, as_version=4)
        start = time.time()
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            return time.time() - start
        except (CellTimeoutError, DeadKernelError) as err:
            if attempt == tries:
                raise
            print(f"  {path.name}: {type(err).__name__} after {time.time() - start:.0f} s; running it once more",
                  flush=True)
        finally:
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, out_dir / path.name)


@dataclass
class Outcome:
    """One notebook's run: ``error`` is None when it succeeded, else a one-line description."""
    name: str
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _one_line(err: BaseException) -> str:
    """The failing cell's exception as one line (nbclient's CellExecutionError carries ename and evalue)."""
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(err).__name__}: {err}"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:200]


def run_all(paths, out_dir: Path | None, timeout: int | None = None) -> list[Outcome]:
    """Execute each notebook in turn, going on past failures; return one :class:`Outcome` per notebook."""
    outcomes = []
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        start = time.time()
        try:
            seconds = execute(path, out_dir, timeout)
            outcomes.append(Outcome(path.name, seconds))
            print(f"  done in {seconds:.0f} s", flush=True)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - any failure is reported, and the next notebook runs
            outcomes.append(Outcome(path.name, time.time() - start, _one_line(err)))
            print(f"  FAILED after {time.time() - start:.0f} s: {outcomes[-1].error}", flush=True)
    return outcomes


def summary(outcomes: list[Outcome], out_dir: Path | None = None) -> str:
    """A plain-text table: every notebook, ok or failed, and its seconds; then the totals."""
    width = max([8] + [len(o.name) for o in outcomes])
    lines = [f"{'notebook':<{width}}  {'result':<6}  {'seconds':>7}"]
    for o in outcomes:
        lines.append(f"{o.name:<{width}}  {'ok' if o.ok else 'FAILED':<6}  {o.seconds:>7.0f}"
                     + ("" if o.ok else f"  {o.error}"))
    failed = [o for o in outcomes if not o.ok]
    total = sum(o.seconds for o in outcomes)
    lines.append(f"{len(outcomes) - len(failed)} of {len(outcomes)} notebooks ok in {total:.0f} s"
                 + (f" ({'fast' if fast_mode() else 'full'} mode)"))
    if failed and out_dir is not None:
        lines.append(f"executed copies, failed ones included (outputs up to the failing cell): {out_dir}/")
    return "\n".join(lines)


def select(names) -> list[Path]:
    """Notebooks whose file name contains one of ``names`` (all when empty); a name that is an .ipynb file is
    taken as it is."""
    explicit = [Path(n) for n in names if n.endswith(".ipynb") and Path(n).is_file()]
    patterns = [n for n in names if Path(n) not in explicit]
    chosen = [p for p in notebook_paths() if not names or any(n in p.name for n in patterns)]
    return explicit + chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="build/notebooks", help="folder for the executed copies")
    parser.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default 600 in fast "
                        "mode, 1800 in full)")
    parser.add_argument("names", nargs="*", help="only notebooks whose file name contains one of these "
                        "(or .ipynb files)")
    args = parser.parse_args(argv)
    paths = select(args.names)
    if not paths:
        print(f"no notebook matches {args.names}: names are e.g. 01 or 04_accuracy", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    outcomes = run_all(paths, out_dir, args.timeout)
    print("\n" + summary(outcomes, out_dir), flush=True)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

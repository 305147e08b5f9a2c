"""One resumable table of result rows: each finished cell is stored at once, and a rerun skips stored keys.

Every long measurement here (the lm-eval sweep of notebook 04, the LoRA accuracy curves of notebook 06, method
comparisons) is a grid of cells, each slow to compute. A :class:`ResultStore` keeps their rows in one CSV:

- a row's identity is its values in ``key_fields``; :meth:`ResultStore.done` says whether a cell is stored,
  so an interrupted run resumes where it stopped;
- :meth:`ResultStore.add` writes a row the moment its cell finishes: the file is rewritten atomically (the old
  file or the complete new one, never half), under a lock, re-reading what other processes added meanwhile;
- :meth:`ResultStore.rows` is the one reader; columns follow one schema (``fields``), checked on read and on
  write, with a clear error for a file or row that does not fit.

Example::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scores.csv"
    >>> store = ResultStore(path, key_fields=("method", "budget"), fields=("method", "budget", "acc"))
    >>> for method, budget in [("pca", 0.5), ("pca", 0.25)]:
    ...     if not store.done({"method": method, "budget": budget}):
    ...         store.add({"method": method, "budget": budget, "acc": 0.6 if budget == 0.5 else 0.4})
    True
    True
    >>> store.done(("pca", 0.5)), store.add({"method": "pca", "budget": 0.5, "acc": 0.1})   # stored: kept
    (True, False)
    >>> [(r["budget"], r["acc"]) for r in store.rows()]    # values come back as the CSV's text
    [('0.5', '0.6'), ('0.25', '0.4')]

Values are compared as the text the CSV holds (None is an empty cell), so ``0.5`` and ``"0.5"`` are one key
but ``"0.5000"`` is another: write a key field the same way every time.

The grid's loop is shared too: :func:`unstored` skips the cells already stored and :func:`measure_all` measures
the rest, storing each row the moment it is measured, behind one progress bar. Each table plans its own cells
(and estimates their cost); :data:`BASELINE` names the uncompressed model's rows in every table. The committed
results under data/results/ are read with :func:`results_path` and :func:`load_result`.
"""
from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
import json
import sys
from typing import Callable, Iterable

from .core.io import atomic_path
from .core.env import progress_bar, shipped_data_dir

BASELINE = "uncompressed"   # the method (or projections) of the uncompressed model's rows in every results table


def cell_text(value) -> str:
    """How ``value`` is written to (and read back from) the CSV: None is an empty cell, the rest ``str``."""
    return "" if value is None else str(value)


class ResultStore:
    """Keyed result rows in the CSV at ``path`` (see the module docstring for an example).

    ``key_fields``: the columns whose values identify a cell. ``fields``: every column, in file order (key
    fields included; default: the file's header if it exists, else the key fields then the first added row's
    other columns). A file written before a column existed reads that column as ''.
    """

    def __init__(self, path, key_fields: Iterable[str], fields: Iterable[str] | None = None):
        self.path = Path(path)
        if self.path.suffix != ".csv":
            raise ValueError(f"a result store is a .csv file, not {str(path)!r}: give a path ending in .csv")
        self.key_fields = tuple(key_fields)
        if not self.key_fields:
            raise ValueError("a result store needs at least one key field (the columns that identify a cell)")
        self.fields = list(fields) if fields is not None else None
        if self.fields is not None:
            missing = [k for k in self.key_fields if k not in self.fields]
            if missing:
                raise ValueError(f"key fields {missing} are not among the fields {self.fields}")
            if len(set(self.fields)) != len(self.fields):
                raise ValueError(f"fields {self.fields} name a column twice")

    # --- reading ------------------------------------------------------------------------------------
    def _read(self) -> tuple[list[str] | None, list[dict]]:
        """(header, raw rows as written) of the file; (None, []) when there is no file yet."""
        if not self.path.is_file():
            return None, []
        with open(self.path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        if self.fields is not None:
            extra = [c for c in header if c not in self.fields]
            if extra:
                raise ValueError(f"{self.path} has columns {extra} that are not in this table's schema {self.fields}: "
                                 f"it holds other results (or a newer version's); use another file for these rows")
        if any(None in r for r in rows):
            raise ValueError(f"{self.path} has rows with more cells than its header has columns: the file is "
                             f"damaged; restore it from version control or move it away and run again")
        return header, rows

    def _schema(self, header) -> list[str]:
        return self.fields if self.fields is not None else list(header or self.key_fields)

    def rows(self) -> list[dict]:
        """Every stored row, in file order, as {column: text} over the schema's columns (a column the file lacks
        reads as '')."""
        header, raw = self._read()
        schema = self._schema(header)
        rows = [{c: r.get(c, "") for c in schema} for r in raw]
        for k in self.key_fields:
            if header is not None and k not in header and any(r.get(k) in ("", None) for r in rows):
                raise ValueError(f"{self.path} has no {k!r} column, part of this table's key {list(self.key_fields)}: "
                                 f"it was written for another table; use another file")
        return rows

    def key(self, row) -> tuple:
        """The identity of ``row`` (a dict with the key fields, or a tuple of their values in order)."""
        if isinstance(row, dict):
            missing = [k for k in self.key_fields if k not in row]
            if missing:
                raise ValueError(f"row lacks the key field(s) {missing} of {self.path.name} "
                                 f"(key: {list(self.key_fields)}); got {sorted(row)}")
            return tuple(cell_text(row[k]) for k in self.key_fields)
        values = tuple(row)
        if len(values) != len(self.key_fields):
            raise ValueError(f"a key of {self.path.name} has {len(self.key_fields)} values {list(self.key_fields)}, "
                             f"not {len(values)}: {values}")
        return tuple(cell_text(v) for v in values)

    def keys(self) -> set:
        """The keys of every stored row (read once: cheaper than :meth:`done` per cell over a whole grid)."""
        return {self.key(r) for r in self.rows()}

    def done(self, key) -> bool:
        """Whether a row with this key (a row dict or a tuple of key values) is stored."""
        return self.key(key) in self.keys()

    def get(self, key) -> dict | None:
        """The newest stored row with this key (the last in the file), or None."""
        want = self.key(key)
        found = [r for r in self.rows() if self.key(r) == want]
        return found[-1] if found else None

    # --- writing ------------------------------------------------------------------------------------
    def _check(self, row: dict, schema: list[str]) -> None:
        unknown = [c for c in row if c not in schema]
        if unknown:
            raise ValueError(f"row has columns {unknown} that are not in the schema {schema} of {self.path}: "
                             f"drop them, or store these rows in another file")
        self.key(row)

    def add(self, row: dict) -> bool:
        """Store ``row`` unless a row with its key is stored; True when it was added. The file is rewritten
        atomically under a lock, keeping rows other processes added since this one last read it."""
        with _locked(self.path):
            header, raw = self._read()
            schema = self._schema(header)
            if header is None and self.fields is None:
                schema = list(self.key_fields) + [c for c in row if c not in self.key_fields]
            self._check(row, schema)
            if self.key(row) in {self.key({c: r.get(c, "") for c in schema}) for r in raw}:
                return False
            self._write(schema, raw + [row])
            return True

    def write(self, rows: Iterable[dict]) -> None:
        """Replace the file with exactly ``rows`` (schema-checked; rows sharing a key are all kept): for
        migrating a table or writing a fixture, not for adding results (use :meth:`add`)."""
        rows = list(rows)
        schema = self.fields or list(self.key_fields) + [c for r in rows for c in r if c not in self.key_fields]
        schema = list(dict.fromkeys(schema))
        for r in rows:
            self._check(r, schema)
        with _locked(self.path):
            self._write(schema, rows)

    def _write(self, schema: list[str], rows: list[dict]) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=schema)
            writer.writeheader()
            writer.writerows([{c: cell_text(r.get(c)) for c in schema} for r in rows])


@contextlib.contextmanager
def _locked(path):
    """Hold an exclusive lock on the folder of ``path`` (POSIX; elsewhere no lock): no lock file is left."""
    try:
        import fcntl
    except ImportError:             # Windows: one process per file
        yield
        return
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                # closing releases the lock


# --- filling a grid ---------------------------------------------------------------------------------------------
def unstored(store: ResultStore | None, cells: list, key: Callable) -> list:
    """The ``cells`` whose key (``key(cell)``: a row dict with the key fields) is not stored; all of them without
    a store."""
    if store is None:
        return list(cells)
    done = store.keys()
    return [c for c in cells if store.key(key(c)) not in done]


def measure_all(store: ResultStore | None, groups: list, measure: Callable, desc: str, *, size: Callable = None,
                label: Callable = None, on_error: Callable = None, progress: bool = True, log=None) -> list[dict]:
    """Measure every group of cells and store each row the moment it is measured; the rows, in order.

    ``measure(group)`` yields (or returns) the group's rows; the bar counts rows, ``size(group)`` of them per
    group (default 1) and shows ``label(group)``. A group that raises is passed to ``on_error(group, error)``
    and the run goes on (without ``on_error`` the error propagates); rows it stored before the error stay.
    """
    size = size or (lambda group: 1)
    rows = []
    bar = progress_bar(total=sum(size(g) for g in groups), desc=desc, disable=not progress, file=log or sys.stderr)
    for group in groups:
        if label is not None:
            bar.set_postfix_str(label(group))
        made = 0
        try:
            for row in measure(group):
                if store is not None:
                    store.add(row)
                rows.append(row)
                made += 1
                bar.update(1)
        except Exception as err:  # noqa: BLE001 - one failing group is the caller's row; the run goes on
            if on_error is None:
                raise
            on_error(group, err)
            bar.update(max(size(group) - made, 0))
    bar.close()
    return rows


# --- committed results -------------------------------------------------------------------------------------------
def results_path(name: str) -> Path:
    """data/results/<name> of the project."""
    return shipped_data_dir() / "results" / name


def load_result(name: str) -> dict | None:
    """The JSON file data/results/<name>, or None (with one line on stdout saying so) when it is not there yet."""
    path = results_path(name)
    if not path.is_file():
        print(f"{path.relative_to(shipped_data_dir().parent)} is not there yet: the cells that read it are skipped")
        return None
    return json.loads(path.read_text())

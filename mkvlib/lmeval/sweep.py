"""The accuracy-versus-compression sweep: methods x budgets x tasks, one stored row per finished cell.

A cell is (method, budget, task). Each finished cell is stored at once in a CSV (a
:class:`~mkvlib.results_store.ResultStore`: rewritten atomically, resumable), keyed by model, method,
projections fingerprint, budget, the ranks used (a digest of the adaptive ranks, so a cell run with an older
search trajectory is run again), task and item limit, so an interrupted sweep resumes where it stopped.
Compression at full rank is exact, so every method shares one 100% cell: the uncompressed baseline, computed
once (method ``uncompressed``). Introduced in notebook 04.
"""
from __future__ import annotations

import datetime
import hashlib
import subprocess
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..core.checks import check_budgets
from ..corpora import data_dir
from ..core.ranks import Method, budget_of
from ..results_store import BASELINE, ResultStore, measure_all, unstored
from ..core.env import project_dir
from .evaluate import LMEvalConfig, lm_eval_version, run_lm_eval, wrap
from .tasks import LOCAL_TASKS, choose_source

BUDGETS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
FIELDS = ["model", "method", "projections", "allocation", "fingerprint", "budget", "kv_budget", "ranks", "task",
          "acc", "acc_norm", "items", "limit", "batch_size", "seconds", "source", "git_commit", "lm_eval_version",
          "finished_at"]
KEY = ("model", "method", "fingerprint", "budget", "ranks", "task", "limit")
# mean answer choices per item (loglikelihood requests per item), for the cost estimate
CHOICES = {"piqa": 2, "arc_easy": 4, "arc_challenge": 4, "hellaswag": 4, "winogrande": 2, "openbookqa": 4}


METHODS = {m.name: m for m in [Method("pca-uniform", "pca"), Method("trained-uniform", "trained"),
                               Method("trained-adaptive", "trained", "adaptive"),
                               Method("pca-adaptive", "pca", "adaptive")]}


def parse_methods(spec) -> list[Method]:
    """Method names ('pca-uniform,trained-adaptive' or a list; see :data:`METHODS`) or :class:`Method` objects."""
    items = [s.strip() if isinstance(s, str) else s for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s]
    unknown = [n for n in items if isinstance(n, str) and n not in METHODS]
    if unknown or not items:
        raise ValueError(f"unknown method(s) {unknown or spec!r}: choose from {sorted(METHODS)}")
    return [METHODS[n] if isinstance(n, str) else n for n in items]


def with_own_files(methods, projections: str | None = None, trajectory: str | None = None) -> list[Method]:
    """``methods`` with the shipped trained projections replaced by ``projections`` (a .safetensors file) and
    the adaptive ranks of the trained methods taken from ``trajectory`` (a ``mkv search`` file for those
    projections): how a sweep scores projections and trajectories of your own. PCA methods are unchanged."""
    methods = parse_methods(methods)
    for what, path in (("projections", projections), ("trajectory", trajectory)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{what} file {path!r} not found: give the path of a file written by "
                                    f"{'mkv train / mkv fit-pca' if what == 'projections' else 'mkv search'}")
    trained = [m for m in methods if m.projections != "pca"]
    if projections is not None and not trained:
        raise ValueError(f"projections {projections!r} replace the trained methods' ones, but none of "
                         f"{[m.name for m in methods]} is a trained method: add trained-uniform or trained-adaptive")
    if trajectory is not None and not any(m.allocation == "adaptive" for m in trained):
        raise ValueError(f"trajectory {trajectory!r} gives the trained-adaptive method's ranks, but it is not among "
                         f"{[m.name for m in methods]}: add trained-adaptive")
    out = []
    for m in methods:
        if m.projections != "pca" and projections is not None:
            m = replace(m, projections=projections)
        if m.projections != "pca" and m.allocation == "adaptive" and trajectory is not None:
            m = replace(m, trajectory=trajectory)
        out.append(m)
    return out


@dataclass(kw_only=True)
class SweepConfig(LMEvalConfig):
    """methods x budgets x the lm-eval settings (tasks, limit, batch_size, ... of :class:`LMEvalConfig`) shared by
    every cell; ``out``: the results CSV."""
    out: str
    methods: list = field(default_factory=lambda: ["pca-uniform", "trained-uniform", "trained-adaptive"])
    budgets: list = field(default_factory=lambda: list(BUDGETS))
    skip_unavailable: bool = True
    seconds_per_request: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not str(self.out).endswith(".csv"):
            raise ValueError(f"the sweep's results file must end in .csv, not {self.out!r}")
        self.methods = parse_methods(self.methods)
        self.budgets = sorted(set(check_budgets(self.budgets)), reverse=True)

    @property
    def limit_label(self) -> int | str:
        """The ``limit`` column: the items per task, or 'full' for whole splits."""
        return self.limit if self.limit is not None else "full"

    @property
    def eval_config(self) -> LMEvalConfig:
        """The lm-eval settings alone."""
        return LMEvalConfig(**{f.name: getattr(self, f.name) for f in fields(LMEvalConfig)})

    @classmethod
    def fast(cls, out: str, **kw) -> "SweepConfig":
        """CI-sized: PCA only, three budgets, a few items per task."""
        return cls(out=out, **{"methods": ["pca-uniform"], "budgets": [1.0, 0.5, 0.25], "limit": 4, **kw})


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=project_dir(), capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def results_store(path) -> ResultStore:
    """The sweep's results CSV at ``path``: one row per finished cell, keyed by :data:`KEY`."""
    return ResultStore(path, KEY, FIELDS)


def read_rows(path) -> list[dict]:
    """The rows of the sweep CSV at ``path`` (text values; [] when there is none yet)."""
    return results_store(path).rows()


def ranks_digest(ranks) -> str:
    """The ``ranks`` column: 'full' (uncompressed), 'uniform', or a digest of an adaptive rank tensor."""
    if ranks is None:
        return "full"
    if isinstance(ranks, float):
        return "uniform"
    return "adaptive-" + hashlib.sha256(str(ranks.tolist()).encode()).hexdigest()[:12]


GUESSED_ITEMS = 1000   # items assumed for a task whose split size is unknown and that has no stored cell yet


def _requests(task: str, items: int) -> int:
    """Loglikelihood requests that ``items`` items of ``task`` make (one per answer choice)."""
    return items * CHOICES.get(task, 4)


def _fmt_budget(b: float) -> str:
    return f"{float(b):.4f}"


def _split_size(task: str) -> int | None:
    """Items in the scored split of a local task (its line count), or None when unknown."""
    spec, root = LOCAL_TASKS.get(task), data_dir()
    if spec is None or root is None:
        return None
    split = "test" if "test" in spec.files else "validation"
    path = root / spec.files[split]
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


@dataclass
class Cell:
    method: Method | None     # None: the uncompressed baseline
    budget: float
    task: str

    @property
    def name(self) -> str:
        """The method's name, or the baseline's."""
        return self.method.name if self.method else BASELINE

    @property
    def label(self) -> str:
        return f"{self.name} @ {100 * self.budget:g}% / {self.task}"


class Sweep:
    """Runs a :class:`SweepConfig` on one loaded model, storing each finished cell in ``config.out``."""

    def __init__(self, model, tokenizer, config: SweepConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.store = results_store(config.out)
        self._projections: dict = {}
        self.skipped: dict = {}

    # --- planning ---------------------------------------------------------------------------------
    def projections_for(self, method: Method):
        from ..core.projections import resolve_projections

        if method.projections not in self._projections:
            self._projections[method.projections] = resolve_projections(method.projections, self.model)
        return self._projections[method.projections]

    def ranks_for(self, method: Method, budget: float):
        return method.ranks(self.model, self.projections_for(method), budget)

    def cells(self) -> list[Cell]:
        """Every cell of the grid that can run: one shared baseline per task, then method x budget x task.
        Methods whose projections or rank trajectories are not available are skipped (see ``skipped``)."""
        cells = [Cell(None, 1.0, t) for t in self.config.tasks] if 1.0 in self.config.budgets else []
        for method in self.config.methods:
            try:
                self.projections_for(method)
                if method.allocation == "adaptive":
                    self.ranks_for(method, min(self.config.budgets))
            except (FileNotFoundError, ImportError, AttributeError, ValueError) as err:
                if not self.config.skip_unavailable:
                    raise
                self.skipped[method.name] = f"{type(err).__name__}: {err}"
                continue
            cells += [Cell(method, b, t) for b in self.config.budgets if b < 1.0 for t in self.config.tasks]
        return cells

    def _identity(self, cell: Cell) -> dict:
        fingerprint = self.projections_for(cell.method).fingerprint() if cell.method else "none"
        ranks = ranks_digest(self.ranks_for(cell.method, cell.budget) if cell.method else None)
        model = getattr(self.model, "mkv_name", "?")
        if getattr(self.model, "mkv_adapter", None):      # a fine-tuned model (an `mkv sft` bundle merged in)
            model += f"+adapter:{self.model.mkv_adapter}"
        return {"model": model, "method": cell.name, "fingerprint": fingerprint, "budget": _fmt_budget(cell.budget),
                "ranks": ranks, "task": cell.task, "limit": self.config.limit_label}

    def pending(self) -> list[Cell]:
        """The cells of the grid not stored yet."""
        return unstored(self.store, self.cells(), self._identity)

    def measured_rate(self) -> tuple[float, int]:
        """Seconds per loglikelihood request measured on the cells already stored (same batch size), and how
        many cells that was measured on; ``(config.seconds_per_request, 0)`` when none are stored."""
        seconds = requests = cells = 0
        for row in self.store.rows():
            try:
                if int(row["batch_size"]) != self.config.batch_size:
                    continue
                seconds += float(row["seconds"])
                requests += _requests(row["task"], int(row["items"]))
                cells += 1
            except (KeyError, TypeError, ValueError):
                continue
        return (seconds / requests, cells) if requests and seconds > 0 else (self.config.seconds_per_request, 0)

    def stored_items(self) -> dict:
        """Items per task as scored by the cells already stored at this limit (what lm-eval actually ran)."""
        limit = self.config.limit_label
        items = {}
        for row in self.store.rows():
            try:
                if row["task"] in self.config.tasks and str(row["limit"]) == str(limit):
                    items[row["task"]] = int(row["items"])
            except (KeyError, TypeError, ValueError):
                continue
        return items

    def estimate(self, cells=None) -> dict:
        """Loglikelihood requests and seconds the pending cells will take: at the rate measured on the stored
        cells when there are any, else at ``config.seconds_per_request``."""
        cells = self.pending() if cells is None else cells
        stored = self.stored_items()
        requests = 0
        for c in cells:
            if c.task in stored:  # a stored cell of this task, at this limit, says how many items it has
                items = stored[c.task]
            else:
                size = _split_size(c.task)
                known = [x for x in (self.config.limit, size) if x is not None]
                items = min(known) if known else GUESSED_ITEMS
            requests += _requests(c.task, items)
        rate, measured_on = self.measured_rate()
        return {"cells": len(cells), "requests": requests, "seconds": requests * rate,
                "seconds_per_request": rate, "measured_on_cells": measured_on}

    # --- running ----------------------------------------------------------------------------------
    def measure(self, cell: Cell, lm) -> dict:
        """The row of one cell, measured through ``lm`` (:func:`~mkvlib.lmeval.wrap`), not stored."""
        from ..core.compress import attach

        eval_config = replace(self.config.eval_config, tasks=[cell.task])
        row = self._identity(cell)
        if cell.method is None:
            summary = run_lm_eval(self.model, self.tokenizer, eval_config, lm=lm)
            row.update(projections="none", allocation="none", kv_budget=_fmt_budget(1.0))
        else:
            proj = self.projections_for(cell.method)
            with attach(self.model, proj, self.ranks_for(cell.method, cell.budget)) as comp:
                summary = run_lm_eval(self.model, self.tokenizer, eval_config, lm=lm)
                kv = budget_of(comp.ranks, comp.geometry.head_dim)
            row.update(projections=cell.method.projections, allocation=cell.method.allocation,
                       kv_budget=_fmt_budget(kv))
        result = summary["tasks"][cell.task]
        row.update(acc=result["acc"], acc_norm=result["acc_norm"], items=result["items"],
                   batch_size=self.config.batch_size, seconds=round(summary["seconds"], 1),
                   source=choose_source(self.config.source), git_commit=git_commit(),
                   lm_eval_version=lm_eval_version(),
                   finished_at=datetime.datetime.now().isoformat(timespec="seconds"))
        return row

    def run(self, progress: bool = True, dry_run: bool = False, max_cells: int | None = None) -> list[dict]:
        """Run every pending cell (at most ``max_cells``), storing each row at once; print the cost estimate
        first. Returns the rows written by this call."""
        all_pending = self.pending()
        pending = all_pending[:max_cells]
        est = self.estimate(pending)
        for name, why in self.skipped.items():
            print(f"skipping {name}: {why}", file=sys.stderr)
        print(f"{est['cells']} cells to run ({len(self.cells()) - len(all_pending)} already stored in "
              f"{self.config.out}): about {est['requests']} loglikelihood requests, ~{est['seconds'] / 60:.0f} min "
              f"at {est['seconds_per_request']:.3g} s/request ("
              + (f"measured on {est['measured_on_cells']} stored cells)" if est["measured_on_cells"] else
                 "a guess: nothing stored yet to measure)"), file=sys.stderr)
        if dry_run or not pending:
            return []
        lm = wrap(self.model, self.tokenizer, self.config.batch_size, progress=progress)
        return measure_all(self.store, pending, lambda cell: [self.measure(cell, lm)], "lm-eval sweep",
                           label=lambda cell: cell.label, progress=progress)

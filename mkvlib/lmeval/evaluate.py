"""Zero-shot accuracy of a (compressed) in-memory model through lm-evaluation-harness.

lm-eval's ``HFLM`` wraps the very model object that :func:`mkvlib.core.compress.attach` hooked, so every forward
pass lm-eval makes runs through the simulated compression; nothing is copied or converted. Tasks come from
:mod:`mkvlib.lmeval.tasks` (built-in definitions, online or pointed at local files). Introduced in notebook 04.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .tasks import SOURCES, choose_source, parse_tasks, resolve_task_paths


@dataclass
class LMEvalConfig:
    """What to evaluate and how.

    tasks: lm-eval task names (``"piqa,arc_easy"`` or a list). limit: items per task (None: the whole split).
    batch_size: sequences per forward pass. source: "auto", "local" (files in ``MKV_DATA_DIR``) or "hub".
    include_path: a folder of the user's own task YAMLs. log_samples: keep per-item log-likelihoods.
    """
    tasks: list = field(default_factory=lambda: ["piqa", "arc_easy", "hellaswag"])
    limit: int | None = None
    batch_size: int = 8
    source: str = "auto"
    include_path: str | None = None
    log_samples: bool = False

    def __post_init__(self):
        self.tasks = parse_tasks(self.tasks)
        if self.limit is not None and (isinstance(self.limit, bool) or int(self.limit) != self.limit
                                       or self.limit < 1):
            raise ValueError(f"limit must be a positive whole number of items per task, not {self.limit!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {self.batch_size!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {self.source!r}")

    @classmethod
    def fast(cls, **kw) -> "LMEvalConfig":
        """A CI-sized variant: a handful of items per task."""
        return cls(**{"limit": 8, "batch_size": 8, **kw})


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def wrap(model, tokenizer, batch_size: int = 8, progress: bool = True):
    """lm-eval's HFLM around the in-memory model (compressed or not: the attention hook travels with it).

    ``progress=False``, and always in fast mode: no progress bars for its requests (lm-eval's evaluator asks for
    them explicitly, so no environment setting turns them off); each request method then runs with
    ``disable_tqdm=True``."""
    import functools

    from lm_eval.models.huggingface import HFLM

    from ..core.env import fast_mode

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    if not progress or fast_mode():
        for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
            setattr(lm, name, functools.partial(getattr(lm, name), disable_tqdm=True))
    return lm


_MANAGERS: dict = {}


def task_manager(paths, include_defaults: bool = True):
    """lm-eval's TaskManager for these include paths, built once per process. Offline runs leave out the
    index of lm-eval's ~10k built-in YAMLs (about 30 s on CPU): the generated YAMLs include theirs by path."""
    from lm_eval.tasks import TaskManager

    key = (tuple(paths), include_defaults)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)
    return _MANAGERS[key]


def run_lm_eval(model, tokenizer, config: LMEvalConfig, lm=None) -> dict:
    """Evaluate ``model`` (with whatever compression is attached) on ``config.tasks``.

    Returns a summary: per task ``acc``, ``acc_norm`` (None when the task has none) and ``items``; ``average``
    (mean acc over tasks that have one), ``average_acc_norm``, ``seconds``, ``lm_eval_version``, and with
    ``log_samples`` the per-item log-likelihoods under ``loglikelihoods`` ({task: [[ll per choice], ...]}).
    Pass ``lm`` to reuse one HFLM wrapper across calls.
    """
    import lm_eval

    paths = resolve_task_paths(config.tasks, config.source, config.include_path)
    manager = task_manager(paths, include_defaults=choose_source(config.source) == "hub")
    lm = lm or wrap(model, tokenizer, config.batch_size)
    start = time.perf_counter()
    raw = lm_eval.simple_evaluate(model=lm, tasks=list(config.tasks), task_manager=manager, limit=config.limit,
                                  bootstrap_iters=0, log_samples=config.log_samples, verbosity="ERROR")
    seconds = time.perf_counter() - start
    summary = summarise(raw, config.tasks)
    summary.update(seconds=seconds, lm_eval_version=lm_eval_version(), limit=config.limit,
                   batch_size=config.batch_size)
    if config.log_samples:
        summary["loglikelihoods"] = item_loglikelihoods(raw)
    return summary


def _metric(row: dict, name: str):
    for key in (f"{name},none", name):
        if key in row and isinstance(row[key], (int, float)):
            return float(row[key])
    return None


def summarise(raw: dict, tasks) -> dict:
    """The compact summary of an lm-eval result dict (see :func:`run_lm_eval`)."""
    per_task = {}
    for name in tasks:
        if name not in raw["results"]:
            raise KeyError(f"lm-eval returned no result for task {name!r} (got {sorted(raw['results'])}); "
                           "a group name? list its member tasks instead")
        row = raw["results"][name]
        items = raw.get("n-samples", {}).get(name, {}).get("effective")
        metrics = {k.split(",")[0]: float(v) for k, v in row.items()
                   if "," in k and "stderr" not in k and isinstance(v, (int, float))}
        per_task[name] = {"acc": _metric(row, "acc"), "acc_norm": _metric(row, "acc_norm"), "items": items,
                          **{k: v for k, v in metrics.items() if k not in ("acc", "acc_norm")}}
    accs = [r["acc"] for r in per_task.values() if r["acc"] is not None]
    norms = [r["acc_norm"] for r in per_task.values() if r["acc_norm"] is not None]
    return {"tasks": per_task, "average": sum(accs) / len(accs) if accs else None,
            "average_acc_norm": sum(norms) / len(norms) if norms else None}


def item_loglikelihoods(raw: dict) -> dict:
    """{task: [[log-likelihood of each choice] for each item, in doc order]} from a result with samples."""
    out = {}
    for task, samples in (raw.get("samples") or {}).items():
        rows = sorted(samples, key=lambda s: s["doc_id"])
        out[task] = [[float(resp[0][0]) for resp in s["resps"]] for s in rows]   # resps: [[(ll, is_greedy)]]
    return out


def flat_result(summary: dict, **extra) -> dict:
    """One JSON-friendly object: each task's acc and acc_norm, the averages, items per task, plus ``extra``."""
    out = dict(extra)
    for name, row in summary["tasks"].items():
        out[f"{name}_acc"] = row["acc"]
        out[f"{name}_acc_norm"] = row["acc_norm"]
    out.update(average=summary["average"], average_acc_norm=summary["average_acc_norm"],
               items={name: row["items"] for name, row in summary["tasks"].items()},
               seconds=round(summary["seconds"], 2), lm_eval_version=summary["lm_eval_version"],
               limit=summary["limit"], batch_size=summary["batch_size"])
    return out

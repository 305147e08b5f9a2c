"""lm-eval task definitions, online and offline.

Online, a task name is lm-eval's built-in task as it is (it downloads its Hugging Face dataset). Offline, the
*same* built-in YAML is reused through ``include:`` and only the data source changes: a small generated YAML
points ``dataset_path: json`` at the local files in the data directory (``MKV_DATA_DIR``, laid out like the
project's shared data folder). Prompts, choices, metrics and ``process_docs`` stay lm-eval's own.

Introduced in notebook 04.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..corpora import data_dir as default_data_dir
from ..runtime import hub_offline, hub_reachable

SOURCES = ("auto", "local", "hub")
# What works from make, a notebook and the command line alike (none of them needs a flag)
HOW_TO_GET_TASKS = ("set MKV_DATA_DIR=/path/to/data, a folder laid out like the project's shared data folder "
                    "(make, notebooks and mkv all read it), or run with network access so that lm-eval downloads "
                    "the task from the Hugging Face Hub")


class TaskFilesMissingError(FileNotFoundError):
    """An offline task's local files are not in the data directory; the message names every file expected."""


@dataclass(frozen=True)
class LocalTask:
    """How to run one built-in lm-eval task from local files.

    ``builtin``: the built-in YAML, relative to lm-eval's ``tasks/`` folder. ``files``: split name -> file
    under the data directory (JSON lines in the Hugging Face schema the YAML expects). ``overrides``: extra
    YAML keys, e.g. a ``process_docs`` adapter when the local schema differs, or ``training_split: null``
    when the local copy has no training split.
    """
    name: str
    builtin: str
    files: dict
    overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.files:
            raise ValueError(f"local task {self.name!r} needs at least one split file")
        bad = [s for s in self.files if s not in ("train", "validation", "test")]
        if bad:
            raise ValueError(f"local task {self.name!r}: unknown split(s) {bad}; use train, validation or test")

    def paths(self, root: Path) -> dict[str, Path]:
        return {split: Path(root) / rel for split, rel in self.files.items()}

    def missing(self, root: Path | None) -> list[Path]:
        if root is None:
            return [Path("$MKV_DATA_DIR") / rel for rel in self.files.values()]
        return [p for p in self.paths(root).values() if not p.is_file()]


# Tasks whose local files the shared data folder holds (see its README). Splits not present locally are
# switched off so that lm-eval never asks the Hub for them; the scored split is the one lm-eval scores online.
LOCAL_TASKS: dict[str, LocalTask] = {t.name: t for t in [
    LocalTask("piqa", "piqa/piqa.yaml", {"validation": "piqa/validation.jsonl"}, {"training_split": None}),
    LocalTask("arc_easy", "arc/arc_easy.yaml",
              {"validation": "arc_easy/validation.jsonl", "test": "arc_easy/test.jsonl"}, {"training_split": None}),
    LocalTask("hellaswag", "hellaswag/hellaswag.yaml", {"validation": "hellaswag/validation.jsonl"},
              {"training_split": None, "process_docs": "!function mkvlib.lmeval.hellaswag.process_docs"}),
    LocalTask("wikitext", "wikitext/wikitext.yaml", {"test": "wikitext2/test_document_level.jsonl",
                                                     "validation": "wikitext2/validation_document_level.jsonl"},
              {"training_split": None}),
]}


def builtin_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def available_local_tasks(root: Path | None = None) -> list[str]:
    """Names of the local tasks whose files are all present in ``root`` (default: ``MKV_DATA_DIR``)."""
    root = root or default_data_dir()
    return [name for name, t in LOCAL_TASKS.items() if root is not None and not t.missing(root)]


def parse_tasks(spec) -> list[str]:
    """'piqa,arc_easy' or a list -> list of names, checked to be non-empty."""
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t and t.strip()]
    if not names:
        raise ValueError("no tasks given: pass e.g. --tasks piqa,arc_easy,hellaswag")
    return names


def choose_source(source: str = "auto") -> str:
    """'local' or 'hub'. ``auto``: local when a data directory is set or Hugging Face is offline, else hub.

    ``import mkvlib`` has already switched Hugging Face offline when the Hub is unreachable
    (:func:`mkvlib.runtime.ensure_hub_reachable_or_offline`), so ``auto`` never picks an unreachable Hub."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    if source != "auto":
        return source
    return "local" if (default_data_dir() is not None or hub_offline()) else "hub"


def tasks_available(names, source: str = "auto", root: Path | None = None) -> bool:
    """True when lm-eval can run every task in ``names`` here: from the Hub when that is the source (online),
    else from local files in ``root`` (default ``MKV_DATA_DIR``). Notebooks use it to choose live runs or the
    committed results."""
    names = parse_tasks(names)
    if choose_source(source) == "hub":
        return hub_reachable()
    return set(names) <= set(available_local_tasks(root))


def check_hub(names) -> None:
    """Fail at once, in one line, when ``names`` would be downloaded from a Hub that is offline or unreachable
    (lm-eval would otherwise retry for about a minute and end in a long traceback)."""
    if not names:
        return
    if hub_offline():
        why = "Hugging Face is offline here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set)"
    elif not hub_reachable():
        why = "the Hugging Face Hub is unreachable"
    else:
        return
    hint = HOW_TO_GET_TASKS if default_data_dir() is None else \
        f"use the local files in {default_data_dir()} (--source auto, the default) or run with network access"
    raise TaskFilesMissingError(f"lm-eval task(s) {', '.join(names)} need the Hub, but {why}: {hint}")


def _yaml_text(task: LocalTask, root: Path) -> str:
    cfg = {"include": str(builtin_tasks_dir() / task.builtin), "task": task.name,
           "dataset_path": "json", "dataset_name": None,
           "dataset_kwargs": {"data_files": {s: str(p) for s, p in task.paths(root).items()}}}
    for split in ("validation", "test"):
        if split not in task.files:
            cfg[f"{split}_split"] = None
    functions = {k: v for k, v in task.overrides.items() if isinstance(v, str) and v.startswith("!function ")}
    cfg.update({k: v for k, v in task.overrides.items() if k not in functions})
    text = yaml.safe_dump(cfg, sort_keys=False)
    for key, value in functions.items():
        text += f"{key}: {value}\n"
    return text


def write_local_tasks(names, root: Path | None = None, out_dir: Path | None = None) -> Path:
    """Write offline YAMLs for ``names`` (those in :data:`LOCAL_TASKS`) into ``out_dir`` (default: a new temp
    folder) and return it, for lm-eval's ``include_path``. Raises :class:`TaskFilesMissingError` naming every
    expected file that is missing."""
    root = Path(root) if root is not None else default_data_dir()
    wanted = [LOCAL_TASKS[n] for n in names if n in LOCAL_TASKS]
    problems = {t.name: t.missing(root) for t in wanted}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        where = f"missing from the data folder {root}" if root else "no data folder (MKV_DATA_DIR is not set)"
        files = "; ".join(f"{name}: {', '.join(map(str, paths))}" for name, paths in problems.items())
        raise TaskFilesMissingError(f"lm-eval task(s) {', '.join(problems)} need local files, {where} "
                                    f"({files}): {HOW_TO_GET_TASKS}")
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="mkv-lmeval-tasks-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in wanted:
        (out_dir / f"{task.name}_local.yaml").write_text(_yaml_text(task, root))
    return out_dir


def resolve_task_paths(names, source: str = "auto", include_path=None, root: Path | None = None) -> list[str]:
    """The include paths lm-eval needs for ``names``: generated offline YAMLs for the known local tasks when
    the source is local, then the user's own ``include_path`` (last, so that its definitions win).

    Offline, a name that is neither a known local task nor defined in ``include_path`` raises, because
    lm-eval would try to download it.
    """
    names = parse_tasks(names)
    user = [str(Path(p)) for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path or [])]
    for p in user:
        if not Path(p).is_dir():
            raise FileNotFoundError(f"--include-path {p} is not a folder of lm-eval task YAMLs")
    user_defined = _names_in(user)
    if choose_source(source) == "hub":
        check_hub([n for n in names if n not in user_defined])
        return user
    local = [n for n in names if n not in user_defined]
    unknown = [n for n in local if n not in LOCAL_TASKS]
    if unknown:
        raise ValueError(f"task(s) {unknown} have no offline definition: known local tasks are "
                         f"{sorted(LOCAL_TASKS)}; give your own with --include-path DIR (mkv), or run with "
                         f"network access and no data folder (MKV_DATA_DIR unset) so that lm-eval downloads it")
    if local:
        root = Path(root) if root is not None else default_data_dir()
        missing = [n for n in local if LOCAL_TASKS[n].missing(root)]
        if missing:
            write_local_tasks(missing, root)            # raises, naming every expected file
        key = str(root)
        folder = _GENERATED.get(key)
        if folder is None or not folder.is_dir():    # one folder with every task present locally, per process
            folder = _GENERATED[key] = write_local_tasks(available_local_tasks(root), root)
        return [str(folder)] + user
    return user


_GENERATED: dict = {}   # data dir -> folder of generated YAMLs, reused within a process


def _names_in(paths) -> set[str]:
    """Task names declared by the YAMLs under ``paths`` (the ``task:`` key, read without resolving)."""
    names = set()
    for p in paths:
        for f in Path(p).rglob("*.yaml"):
            try:
                text = f.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("task:"):
                    names.add(line.split(":", 1)[1].strip().strip("'\""))
    return names

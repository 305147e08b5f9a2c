"""mkv reproduce FILE [--fast] [--keep DIR] [--dry-run] | mkv reproduce --list: remake a results file from the
command it records and compare it with the committed one.

Where the command is read: the file's own ``command`` (JSON); for a CSV, the ``command`` of the summary that
names it as its ``items_file`` (``mkv compare`` writes both), or the ``commands`` of the record beside it
(``X.json`` for ``X.csv``: sweeps run into separate files and concatenated). Its output (``--out``, ``--sweep``)
is moved to a scratch folder (never into data/), it runs as a subprocess with this Python, and then:

- the full form compares every value on matching rows (rows matched by what they are: method, budget, task,
  domain, prompt ...) within the tolerance of the command's kind (:data:`TOLERANCES`, printed); timings and
  other machine-dependent figures are checked for presence only;
- ``--fast`` sets MKV_FAST=1, shrinks the sizes the command takes (:data:`FAST_SIZES`) and checks shape only:
  every field of the committed file, and every field of its rows, must be in the new one.

``--list`` says for every file in data/results/ (item stores in data/results/items/ included) whether it can be
remade, in which forms, and why not.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import add_options

OUTPUT_FLAGS = ("--out", "--sweep", "--eval-out")
SHELL_WORDS = ("&&", "||", "|", ">", ">>", ";")
# --fast: the sizes a command takes, made CI-sized; the options in FIRST_ONLY keep their first value
FAST_SIZES = {"--tokens": "128", "--in-domain": "128", "--lengths": "256", "--n": "1", "--limit": "2",
              "--retrieval-n": "1", "--retrieval-lengths": "256", "--new-tokens": "2", "--context": "32",
              "--batch": "1", "--repeats": "1", "--layerwise-steps": "2", "--kd-steps": "1", "--steps": "2",
              "--eval-limit": "2", "--passkey-lengths": "256", "--passkey-n": "1"}
FIRST_ONLY = ("--budgets", "--bytes", "--eval-budgets")
SHRUNK = ("--keep-first", "--keep-recent")    # token counts inside a block: divided by 8 with the block's length,
# rounded up, so that a count above 0 stays above 0 (and the record keeps its whole-token fields)
# where the defaults are the large sizes
FAST_ADDED = {"answers": ["--budgets", "0.5", "--new-tokens", "2", "--limit", "2"]}
# full form: (relative, absolute) tolerance and what it rests on, per command; None: values not compared
EVALUATION = (1e-3, 1e-6, "deterministic CPU float32 evaluation")
TOLERANCES = {"eval": EVALUATION, "answers": EVALUATION, "compare": EVALUATION,
              "lm-eval": (0.0, 0.002, "accuracies over 1,000 items: two items"),
              "bench": None, "record": None}
BENCH_NOTE = ("speed, time and memory figures depend on the machine: compared for presence only; strings and "
              "integers (settings, cache and projection bytes) compared exactly")
# fields a record may carry by hand (how it was run before its command line was recorded): never required
BY_HAND = ("command", "run_as")
# never compared in value (presence only): when and where a run ran, and how long it took
VOLATILE = {"command", "created", "finished_at", "git_commit", "hardware", "machine", "lm_eval_version",
            "wall_time_s", "seconds", "prefill_s"}
# what a row is (how rows of the new file are matched with the committed rows)
KEY_FIELDS = ("model", "method", "label", "setting", "identity", "projections", "fingerprint", "allocation", "ranks",
              "adapter", "task", "version", "domain", "length", "seed", "item", "budget", "target_budget",
              "requested", "prompt", "kind", "cache", "offset", "route")


@dataclass
class Recipe:
    """How a results file is remade: the recorded commands, or why it cannot be."""
    file: Path
    commands: list[str] = field(default_factory=list)
    why_not: str = ""          # '' when mkv reproduce can remake it
    no_fast: str = ""          # why there is no fast form ('' when there is)
    stale: str = ""            # why the full form cannot match every committed row ('' when it can)
    summary: Path | None = None   # for an items CSV: the summary JSON whose command writes it
    cost_s: float | None = None


def read_json(path) -> dict:
    with open(path) as fh:
        obj = json.load(fh)
    return obj if isinstance(obj, dict) else {}


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def command_name(words: list[str]) -> str:
    """'eval' for ``mkv eval ...``, 'answers' for ``python -m mkvlib.answers ...``."""
    if words[:1] == ["mkv"]:
        return words[1] if len(words) > 1 else ""
    return words[2].split(".")[-1] if words[1:2] == ["-m"] and len(words) > 2 else ""


def split_command(command: str) -> tuple[dict, list[str]]:
    """(environment assignments, words) of a recorded command line; ValueError saying why it is not one."""
    try:
        words = shlex.split(command)
    except ValueError:
        raise ValueError("its command is not a command line (unbalanced quotes): a Python call or prose") from None
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        value = os.path.expandvars(value)
        if "$" not in value:
            env[key] = value
    if not words or words[0] not in ("mkv", "python", "python3"):
        raise ValueError("its command is a Python call or prose, not a command line")
    shell = any(w in SHELL_WORDS for w in words)
    if not shell and words[0] != "mkv" and not (words[1:2] == ["-m"] and words[2:3]
                                                 and words[2].split(".")[0] == "mkvlib"):
        raise ValueError("its command runs a Python file, not `mkv` or `python -m mkvlib...`")
    if not shell and any(w.startswith("(") for w in words):
        raise ValueError("its command line carries a note in parentheses (prose, not a command to run)")
    return env, words


def recipe(path: Path, root: Path) -> Recipe:
    """How ``path`` (a file in root/data/results) is remade, or why it cannot be."""
    results = root / "data" / "results"
    r = Recipe(path)
    if path.suffix == ".csv":
        summaries = [p for p in sorted(results.glob("*.json"))
                     if (p.parent / str(read_json(p).get("items_file"))).resolve() == path.resolve()]
        beside = read_json(path.with_suffix(".json")) if path.with_suffix(".json").is_file() else {}
        if summaries:
            r.summary = summaries[0]
            r.commands = [read_json(r.summary).get("command") or ""]
        else:
            r.commands = list(beside.get("commands") or ([beside["command"]] if beside.get("command") else []))
        r.cost_s = sum(float(x.get("seconds") or 0) for x in read_csv(path)) or None
        if not r.commands:
            r.why_not = "no command recorded (no summary names it as its items_file, no record beside it)"
    else:
        record = read_json(path)
        if record.get("command"):
            r.commands = [record["command"]]
        elif record.get("commands"):
            csv_beside = path.with_suffix(".csv")
            r.why_not = (f"the record of {csv_beside.name}; its {len(record['commands'])} commands write that file: "
                         f"`mkv reproduce data/results/{csv_beside.name}`" if csv_beside.is_file() else
                         f"made by {len(record['commands'])} commands whose results were merged by hand; no one "
                         "command writes it")
        elif row_commands(record):
            r.why_not = "each row is the printed result of its own command, merged by hand; no one command writes it"
        else:
            r.why_not = ("its `script` describes the run (a Python call or prose), not a command line"
                         if record.get("script") else "no command recorded in the file")
        items = record.get("items_file")
        seconds = sum(float(x.get("seconds") or 0) for x in read_csv(results / items)) \
            if items and (results / items).is_file() else 0
        r.cost_s = record.get("wall_time_s") or seconds or None
    if r.why_not:
        return r
    try:
        for command in r.commands:
            _check(command, root, r)
    except ValueError as err:
        r.why_not = str(err)
    r.stale = _stale(path, root)
    return r


def row_commands(record: dict) -> list[str]:
    """Commands recorded row by row: in any list of objects of the record (``rows``, ``routes`` ...)."""
    return [x["command"] for v in record.values() if isinstance(v, list)
            for x in v if isinstance(x, dict) and x.get("command")]


def _check(command: str, root: Path, r: Recipe) -> None:
    words, outputs = split_command(command)[1], outputs_of(command)
    if any(w in SHELL_WORDS for w in words):
        r.no_fast = "a shell pipeline: its sizes are fixed inside it"
        outputs = [w for w in words if w == r.file.relative_to(root).as_posix()]
        if not outputs:
            raise ValueError("its shell command does not write the file under its own name")
    elif not outputs and not ("--json" in words and "result" in read_json(r.file)):
        raise ValueError("its command names no output file (--out, --sweep) and prints no record")
    for p in re.findall(r"(?<![\w./-])(?:data|build)/[\w./-]+", command):
        if p in outputs:
            continue
        if p.startswith("build/"):                      # never committed, whatever this checkout holds
            raise ValueError(f"its command reads {p}, which is rebuilt, not committed: make it first (its recipe is "
                             "in docs/results.md), then run the recorded command")
        if not (root / p).exists():
            raise ValueError(f"its command reads {p}, which is not committed")
    adapter = words[words.index("--adapter") + 1] if "--adapter" in words[:-1] else None
    if adapter and (root / adapter).is_dir() and not any((root / adapter).rglob("adapter_model.*")):
        raise ValueError(f"its command reads the LoRA adapter in {adapter}, whose weights are not committed")


def _fingerprints(obj) -> set[str]:
    """Projections fingerprints a record names: ``fingerprint`` fields, and ``proj=...`` in ``identity`` fields."""
    if isinstance(obj, dict):
        own = {obj["fingerprint"]} if isinstance(obj.get("fingerprint"), str) else set()
        own.update(re.findall(r"proj=([0-9a-f]{16})", str(obj.get("identity") or "")))
        return own.union(*(_fingerprints(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_fingerprints(v) for v in obj))
    return set()


def header_fingerprint(path) -> str | None:
    """The projections fingerprint in a safetensors file's header (None for other files, e.g. LoRA adapters)."""
    with open(path, "rb") as fh:
        meta = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0])).get("__metadata__") or {}
    return json.loads(meta["mkv"]).get("fingerprint") if "mkv" in meta else None


def _stale(path: Path, root: Path) -> str:
    """Why the full form cannot match every committed row: rows made with projections no longer committed."""
    rows = read_csv(path) if path.suffix == ".csv" else [read_json(path)]
    items = path.parent / str(rows[0].get("items_file")) if path.suffix == ".json" else None
    rows += read_csv(items) if items and items.is_file() else []        # a summary: its items file too
    used = {f for f in _fingerprints(rows) if re.fullmatch(r"[0-9a-f]{16}", f)}
    committed = {header_fingerprint(p) for p in (root / "data").rglob("*.safetensors")}
    gone = sorted(used - committed)
    return f"rows made with projections {', '.join(gone)}, no longer committed" if gone else ""


def rewrite(words: list[str], scratch: Path, fast: bool, earlier=()) -> list[str]:
    """The command's words with its outputs in ``scratch`` and, for ``fast``, CI-sized; a word naming an output of
    an ``earlier`` command (a bundle folder the next command reads) points into ``scratch`` too."""
    words = [str(scratch / Path(w).name) if w in earlier else w for w in words]
    for i, w in enumerate(words[:-1]):
        if w in OUTPUT_FLAGS:
            words[i + 1] = str(scratch / Path(words[i + 1]).name)
    if not fast:
        return words
    for i, w in enumerate(words[:-1]):
        if w in FAST_SIZES:
            words[i + 1] = FAST_SIZES[w]
        elif w in FIRST_ONLY:
            words[i + 1] = words[i + 1].split(",")[0]
        elif w in SHRUNK:
            words[i + 1] = ",".join(str(-(-int(v) // 8)) for v in words[i + 1].split(","))
    if "--tokens" in words or "--seq-len" in words:        # blocks no longer than the tokens fast mode reads
        words += ["--seq-len", FAST_SIZES["--tokens"]] if "--seq-len" not in words else []
        words[words.index("--seq-len") + 1] = FAST_SIZES["--tokens"]
    added = FAST_ADDED.get(command_name(words), [])
    for flag, value in zip(added[::2], added[1::2]):
        if flag not in words:
            words += [flag, value]
    return words


def outputs_of(command: str) -> list[str]:
    words = split_command(command)[1]
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in OUTPUT_FLAGS]


def run_command(command: str, scratch: Path, root: Path, target_rel: str, fast: bool, dry_run: bool, earlier=()):
    """Run one recorded command with its outputs in ``scratch``; its stdout (the printed record)."""
    env, words = split_command(command)
    env = dict(os.environ, **env, **({"MKV_FAST": "1"} if fast else {}))
    if any(w in SHELL_WORDS for w in words):       # runs where the record's relative path lies in scratch
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        argv, cwd = ["bash", "-c", command], scratch
        shown = f"(in {scratch}) {command}"
    else:
        words = rewrite(words, scratch, fast, earlier)
        head = [sys.executable, "-m", "mkvlib"] if words[0] == "mkv" else [sys.executable]
        argv, cwd = head + words[1:], root
        shown = " ".join(shlex.quote(w) for w in ["python"] + argv[1:])
    print(f"  running{' (MKV_FAST=1)' if fast else ''}: {shown}")
    if dry_run:
        return ""
    if cwd == scratch:
        (scratch / target_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / target_rel, scratch / target_rel)
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    for name, text in (("stdout.log", done.stdout), ("stderr.log", done.stderr)):
        with open(scratch / name, "a") as log:
            log.write(text)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the command failed (exit {done.returncode}): {last} -- keep its output with --keep DIR")
    return done.stdout


def as_value(text):
    """A CSV cell as a number where it is one, None where it is empty."""
    if text in ("", None):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _keyed(rows: list[dict], fields: list[str]) -> dict:
    """{(what the row is..., occurrence): row}, what it is read from ``fields``."""
    def norm(v):
        return round(v, 6) if isinstance(v, float) else tuple(v) if isinstance(v, list) else str(v)

    out, seen = {}, {}
    for row in rows:
        key = tuple((k, norm(row.get(k))) for k in fields)
        seen[key] = seen.get(key, -1) + 1
        out[key + (seen[key],)] = row
    return out


class Comparison:
    """The full form: committed values against new ones, within a tolerance (None: machine-dependent figures)."""

    def __init__(self, tolerance):
        self.tolerance = tolerance
        self.numbers = self.values = self.rows = 0
        self.worst = (0.0, "")
        self.problems: list[str] = []

    def skipped(self, key: str, value) -> bool:
        if key in VOLATILE or key.endswith("_s") or "per_s" in key or "per_cpu_s" in key:
            return True
        return self.tolerance is None and (isinstance(value, (float, list)) or "memory" in key)

    def walk(self, old, new, where: str) -> None:
        if isinstance(old, dict):
            if not isinstance(new, dict):
                return self.problems.append(f"{where}: a {type(new).__name__} instead of an object")
            for k, v in old.items():
                if k not in new and k not in BY_HAND:    # a command added to a record by hand is no loss
                    self.problems.append(f"{where}.{k}: missing")
                elif k not in new:
                    continue
                elif not self.skipped(k, v):
                    self.walk(v, new[k], f"{where}.{k}")
        elif isinstance(old, list) and old and all(isinstance(x, dict) for x in old):
            self.match_rows(old, new if isinstance(new, list) else [], where)
        elif isinstance(old, list):
            if not isinstance(new, list) or len(new) != len(old):
                return self.problems.append(f"{where}: {len(old)} values, now {new!r:.60}")
            for i, (a, b) in enumerate(zip(old, new)):
                self.walk(a, b, f"{where}[{i}]")
        elif isinstance(old, (int, float)) and not isinstance(old, bool) and isinstance(new, (int, float)):
            rel, absolute, _ = self.tolerance or (0.0, 0.0, "")
            self.numbers += 1
            deviation = abs(new - old) / max(abs(old), 1e-12)
            if deviation > self.worst[0]:
                self.worst = (deviation, where)
            if abs(new - old) > absolute + rel * abs(old):
                self.problems.append(f"{where}: {old!r} -> {new!r}")
        else:
            self.values += 1
            if old != new:
                self.problems.append(f"{where}: {old!r:.60} -> {new!r:.60}")

    def match_rows(self, old: list[dict], new: list[dict], where: str) -> None:
        fields = [k for k in KEY_FIELDS if any(k in row and not isinstance(row[k], dict) for row in old)]
        new_rows = _keyed(new, fields)
        missing = []
        for key, row in _keyed(old, fields).items():
            if key in new_rows:
                self.rows += 1
                self.walk(row, new_rows[key], f"{where}[{', '.join(str(v) for _, v in key[:-1][:4])}]")
            else:
                missing.append(key)
        if missing:
            example = ", ".join(f"{k}={v}" for k, v in missing[0][:-1])
            self.problems.append(f"{where}: {len(missing)} of {len(old)} committed rows not remade, e.g. {example}")


def shape_problems(old, new) -> list[str]:
    """The fast form: fields of the committed record (and of its rows) missing from the new one."""
    if isinstance(old, list):                       # CSV rows
        missing = set().union(*map(set, old)) - set().union(*map(set, new)) if old and new else set()
        return [f"columns missing: {sorted(missing)}"] * bool(missing) + ["no rows"] * (not new)
    problems = [f"{k}: missing" for k in old if k not in new and k not in BY_HAND]
    for k, v in old.items():
        w = new.get(k)
        if v is not None and w is not None and type(v) is not type(w) and not (
                isinstance(v, (int, float)) and isinstance(w, (int, float))):
            problems.append(f"{k}: a {type(w).__name__} instead of a {type(v).__name__}")
        elif isinstance(v, list) and v and w and all(isinstance(x, dict) for x in v + w):
            missing = set().union(*map(set, v)) - set().union(*map(set, w))
            problems += [f"{k}: rows lack {sorted(missing)}"] * bool(missing)
    return problems


def load(path: Path):
    """A results file as Python values: a JSON object, or a CSV's rows with numbers as numbers."""
    if path.suffix == ".json":
        return read_json(path)
    return [{k: as_value(v) for k, v in row.items()} for row in read_csv(path)]


def check_file(label: str, old, new, fast: bool, tolerance) -> bool:
    """Compare one committed file with its remade copy and print the verdict; True when it holds."""
    if fast:
        problems = shape_problems(old, new)
        extra = sorted(set(new[0] if isinstance(new, list) and new else new) -
                       set(old[0] if isinstance(old, list) and old else old))
        what = "rows" if isinstance(old, list) else "fields"
        verdict = (f"{'same shape' if not problems else 'shape differs'}: {len(old)} {what} committed, {len(new)} "
                   f"remade" + (f"; new fields {extra}" if extra else ""))
    else:
        cmp = Comparison(tolerance)
        cmp.walk(old, new, "")
        problems = cmp.problems
        verdict = (f"{cmp.numbers} numbers and {cmp.values} other values on {cmp.rows} matched rows; largest "
                   f"relative deviation {cmp.worst[0]:.2g}{' at ' + cmp.worst[1] if cmp.worst[1] else ''}")
    skipped = new.get("skipped") if isinstance(new, dict) else None
    print(f"  {label}: {verdict}" + (f"; the run skipped {skipped}" if skipped else ""))
    for p in problems[:10]:
        print(f"    differs: {p}")
    if len(problems) > 10:
        print(f"    ... and {len(problems) - 10} more")
    return not problems


def resolve_file(text: str, root: Path) -> Path:
    path = Path(text).expanduser()
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file at {text}: give a file under data/results/ (mkv reproduce --list shows "
                                "them)")
    if (root / "data" / "results").resolve() not in path.parents:
        raise ValueError(f"{text} is not in data/results/: mkv reproduce remakes results files only (mkv reproduce "
                         "--list shows them)")
    return path


def reproduce(args, root: Path) -> int:
    path = resolve_file(args.file, root)
    r = recipe(path, root)
    rel = path.relative_to(root.resolve()).as_posix()
    if r.why_not:
        raise ValueError(f"{rel} cannot be remade: {r.why_not} (mkv reproduce --list says why for every file)")
    if args.fast and r.no_fast:
        raise ValueError(f"{rel} has no fast form ({r.no_fast}): run it without --fast ({cost_text(r.cost_s)})")
    keep = Path(args.keep).expanduser().resolve() if args.keep else None
    if keep and (keep == (root / "data").resolve() or (root / "data").resolve() in keep.parents):
        raise ValueError(f"--keep {args.keep} lies in data/: give a folder outside it")
    if keep and keep.exists() and any(keep.iterdir()):
        raise ValueError(f"--keep {args.keep} is not empty: a resumable command would reuse what is there")
    kind = command_name(split_command(r.commands[0])[1]) or "script"
    tolerance = TOLERANCES.get(kind, EVALUATION)
    print(f"mkv reproduce {rel} ({'fast: shape only' if args.fast else 'full'}; recorded cost {cost_text(r.cost_s)})")
    if not args.fast:
        print(f"  tolerance ({kind}): " + (f"relative {tolerance[0]:g}, absolute {tolerance[1]:g} ({tolerance[2]}); "
                                         "timings, dates and machine details compared for presence only"
                                         if tolerance else BENCH_NOTE))
        if r.stale:
            print(f"  note: {r.stale}: those rows cannot match")
    commands = r.commands[:1] if args.fast else r.commands
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    scratch = keep or Path(tempfile.mkdtemp(prefix="mkv-reproduce-"))
    try:
        start = time.time()
        outputs = [run_command(c, scratch, root, rel, args.fast, args.dry_run,
                               [o for earlier in commands[:i] for o in outputs_of(earlier)])
                   for i, c in enumerate(commands)]
        if args.dry_run:
            return 0
        print(f"  took {time.time() - start:.0f} s")
        pairs = remade_files(r, path, scratch, commands, outputs, rel)
        held = [check_file(label, old, new, args.fast, tolerance) for label, old, new in pairs]   # print each
        ok = all(held)
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print("  reproduced" if ok else "  NOT reproduced: differences above")
    return 0 if ok else 1


def remade_files(r: Recipe, path: Path, scratch: Path, commands, outputs, rel) -> list[tuple]:
    """(label, committed, remade) for the file and, for a summary, the items file its command writes too."""
    def written(command: str) -> Path:
        outs = outputs_of(command)
        out = next((o for o in outs if Path(o).name == path.name), outs[0] if outs else None)
        return scratch / Path(out).name if out else scratch / rel
    first = written(commands[0])
    if path.suffix == ".csv" and r.summary:
        return [(rel, load(path), load(scratch / read_json(first)["items_file"]))]
    if path.suffix == ".csv":
        return [(rel, load(path), [row for f in dict.fromkeys(map(written, commands)) for row in load(f)])]
    record, words = read_json(path), split_command(commands[0])[1]
    if "result" in record and not any(w in OUTPUT_FLAGS or w in SHELL_WORDS for w in words):   # it prints its record
        printed = [line for line in outputs[0].splitlines() if line.startswith("{")]
        if not printed:
            raise RuntimeError("the command printed no JSON record")
        return [(f"{rel} (its `result`)", record["result"], json.loads(printed[-1]))]
    new = read_json(first)
    pairs = [(rel, record, new)]
    if record.get("items_file") and new.get("items_file"):
        pairs.append((f"data/results/{record['items_file']}", load(path.parent / record["items_file"]),
                      load(scratch / new["items_file"])))
    return pairs


def cost_text(seconds) -> str:
    if not seconds:
        return "not recorded"
    return f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{seconds:.0f} s"


def list_files(root: Path) -> int:
    rows = []
    results = root / "data" / "results"
    for path in sorted(p for p in results.rglob("*") if p.suffix in (".json", ".csv") and p.is_file()):
        r = recipe(path, root)
        full = "no" if r.why_not else "partly" if r.stale else "yes"
        fast = "no" if r.why_not or r.no_fast else "yes"
        why = r.why_not or "; ".join(x for x in (r.no_fast and f"no fast form: {r.no_fast}",
                                                 r.stale and f"{r.stale}: the full form cannot match them") if x)
        rows.append((path.relative_to(results).as_posix(), full, fast, cost_text(r.cost_s), why))
    head = ("file", "full", "fast", "recorded cost", "why not / note")
    width = [max(len(row[i]) for row in rows + [head]) for i in range(4)]
    for row in [head] + rows:
        print("  ".join(f"{x:<{w}}" for x, w in zip(row, width)) + "  " + row[4])
    print(f"\n{sum(r[1] != 'no' for r in rows)} of {len(rows)} files can be remade by `mkv reproduce FILE` "
          f"({sum(r[1] == 'partly' for r in rows)} of them only in part), {sum(r[2] == 'yes' for r in rows)} also "
          "in fast form (--fast: a small slice, shape only)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="rerun the command a results file records into a scratch folder and "
                       "compare the new file with the committed one",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", metavar="FILE", help="a file under data/results/")
    p.add_argument("--keep", metavar="DIR", help="write the new files into DIR (empty or absent, outside data/) "
                   "and keep them (default: a temporary folder, removed afterwards)")
    add_options(p, "debug", fast="a small slice (MKV_FAST=1, sizes shrunk): shape only",
                dry_run="print what would run, run nothing", list="every results file: can it be remade, cost, why not")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.env import project_dir

    root = project_dir()
    if args.list:
        return list_files(root)
    if not args.file:
        raise ValueError("give a FILE under data/results/, or --list to see which files can be remade")
    return reproduce(args, root)

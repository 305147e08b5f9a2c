"""The comparison run: every method at matched bytes on every task, resumable item by item (``mkv compare``).

For each method and requested byte fraction, :func:`mkvlib.compare.base.at_bytes` picks the nearest setting at
each length (the fraction it really stores is recorded); an unreachable fraction or an unsupported method becomes
a status row and the run goes on. The uncompressed model always runs: its accuracy is the ceiling, and a task it
answers below :data:`~mkvlib.compare.tasks.CANNOT_DO` is flagged "model cannot do it".

Every item is stored when done, in a :class:`mkvlib.results_store.ResultStore` CSV beside the JSON output
(``compare.json`` -> ``items/compare_items.csv``) keyed by :data:`KEY` (model name and attention hash, method,
setting and its identity, task and generator version, length, seed, item): a rerun computes only what is
missing. The JSON summary (:func:`summarize`) is rebuilt from the stored items.

    spec = CompareSpec(["pca", "matryoshka"], [0.25, 0.125], ["ppl", "passkey"], [1024], n=4)
    result = run_compare(model, tokenizer, spec, "runs/compare.json")
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import model_identity
from ..results_store import BASELINE, ResultStore, measure_all, unstored
from .base import REGISTRY, BytesUnreachableError, at_bytes, get_method
from .tasks import CANNOT_DO, MAX_NEW_TOKENS, RETRIEVAL_TASKS, TARGET_TOKENS, TASK_VERSION, TASKS, make_items, \
    score_item

FIELDS = ("model", "method", "setting", "identity", "task", "version", "length", "seed", "item",
          "label", "axis", "fraction", "bytes_per_token", "fixed_bytes",
          "correct", "answer", "expected", "depth", "nll", "base_nll", "kl", "top1", "tokens", "domain", "seconds")
KEY = ("model", "method", "setting", "identity", "task", "version", "length", "seed", "item")


@dataclass
class CompareSpec:
    """What to run: method specs (``name`` or ``name:option=value:...``, e.g. ``matryoshka:allocation=uniform``),
    byte fractions, tasks, lengths (tokens), items per (task, length) and the task seed."""
    methods: list
    fractions: list
    tasks: list = field(default_factory=lambda: list(TASKS))
    lengths: list = field(default_factory=lambda: [1024])
    n: int = 4
    seed: int = 0

    def __post_init__(self):
        for t in self.tasks:
            if t not in TASKS:
                raise ValueError(f"unknown task {t!r}: choose from {', '.join(TASKS)}")
        for f in self.fractions:
            if not 0 < f <= 1:
                raise ValueError(f"a byte fraction is in (0, 1] (0.25 = a quarter of the uncompressed cache), not {f}")
        for n_tokens in self.lengths:
            if n_tokens < 192:
                raise ValueError(f"lengths are at least 192 tokens (a prompt, or {TARGET_TOKENS} scored tokens "
                                 f"after a prefix), not {n_tokens}")
        if self.n < 1:
            raise ValueError(f"n (items per task and length) must be at least 1, not {self.n}")
        for m in self.methods:
            parse_method(m)


def parse_method(spec: str) -> tuple[str, dict]:
    """'matryoshka:allocation=uniform:budgets=0.5/0.25' -> ('matryoshka', {'allocation': 'uniform', 'budgets':
    (0.5, 0.25)}): options after colons, numbers become numbers, numbers joined by '/' a tuple; any other value
    (a file path such as trajectory=data/x.json) stays text."""
    name, *opts = spec.split(":")
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r} in {spec!r}: choose from {', '.join(sorted(REGISTRY))}")
    options = {}
    for o in opts:
        if "=" not in o:
            raise ValueError(f"method options are name=value after a colon (matryoshka:allocation=uniform), "
                             f"not {o!r} in {spec!r}")
        k, v = o.split("=", 1)
        parts = [_value(x) for x in v.split("/")]
        numbers = len(parts) > 1 and all(isinstance(x, (int, float)) for x in parts)
        options[k] = tuple(parts) if numbers else _value(v)
    return name, options


def _value(text: str):
    """A number when ``text`` is one, else the text."""
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return text


def make_method(spec: str):
    name, options = parse_method(spec)
    try:
        return get_method(name, **options)
    except TypeError as err:
        raise ValueError(f"method {spec!r}: {err}") from None


def setting_identity(method, model, setting) -> str:
    """What a setting computes beyond its parameters: the projections' fingerprint and a hash of the ranks of a
    projection method (a retrained 'trained' file or a new trajectory is another identity); '' otherwise."""
    parts = []
    if hasattr(method, "resolved"):
        parts.append(f"proj={method.resolved(model).fingerprint()}")
    if hasattr(method, "ranks") and callable(method.ranks):
        try:
            ranks = method.ranks(model, setting)
        except Exception:  # noqa: BLE001 - a setting without ranks
            ranks = None
        if isinstance(ranks, torch.Tensor):
            parts.append("ranks=" + hashlib.sha256(ranks.to(torch.int64).numpy().tobytes()).hexdigest()[:12])
    return ";".join(parts)


# --- planning -----------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One (method spec, setting) to run at one length on some tasks; ``requested`` the fractions it answers."""
    spec: str
    method: object
    setting: object
    report: object
    length: int
    identity: str
    requested: list = field(default_factory=list)


def plan(model, spec: CompareSpec) -> tuple[list[Cell], list[dict]]:
    """(cells to run, status rows): one cell per distinct (method spec, setting, length), the uncompressed one
    first; a status row per unsupported method or unreachable (method, fraction, length)."""
    cells: dict = {}
    status = []
    specs = [BASELINE] + [m for m in dict.fromkeys(spec.methods) if m != BASELINE]
    for m in specs:
        method = make_method(m)
        why = method.unsupported(model)
        if why:
            status.append({"method": m, "axis": method.axis, "status": "unsupported", "note": why})
            continue
        for length in spec.lengths:
            wants = [1.0] if m == BASELINE else spec.fractions
            for want in wants:
                try:
                    setting, report = at_bytes(method, model, want, length)
                except BytesUnreachableError as err:
                    status.append({"method": m, "axis": method.axis, "status": "unreachable", "requested": want,
                                   "length": length, "note": str(err)})
                    continue
                key = (m, setting.key(), length)
                if key not in cells:
                    cells[key] = Cell(m, method, setting, report, length, setting_identity(method, model, setting))
                cells[key].requested.append(want)
    return list(cells.values()), status


def _key(model_id: str, cell: Cell, task: str, seed: int, item: int) -> dict:
    return {"model": model_id, "method": cell.spec, "setting": cell.setting.key(), "identity": cell.identity,
            "task": task, "version": TASK_VERSION[task], "length": cell.length, "seed": seed, "item": item}


# --- measuring one item -------------------------------------------------------------------------------------

def retrieval_result(run, item, tokenizer) -> dict:
    """Greedy answer of ``item`` under a runner: {correct, answer, expected, depth}."""
    device = next(run.model.parameters()).device
    new = run.generate(item.ids.to(device), MAX_NEW_TOKENS)
    text = tokenizer.decode(new[0].tolist(), skip_special_tokens=True)
    return {"correct": int(score_item(text, item)), "answer": text.strip()[:40], "expected": item.answer,
            "depth": item.meta.get("depth")}


def ppl_result(run, item, base_logp: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """{nll, base_nll, kl, top1, tokens} of the last TARGET_TOKENS of ``item`` after its prefix under a runner,
    and the log-probabilities (T - 1, V). ``base_logp`` the uncompressed ones (None: this is the uncompressed run)."""
    device = next(run.model.parameters()).device
    ids = item.ids.to(device)
    prefix, target = ids[:, :-TARGET_TOKENS], ids[:, -TARGET_TOKENS:]
    logits = run.score(prefix, target)[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    gold = target[0, 1:]
    nll = -logp.gather(-1, gold[:, None]).mean().item()
    base = logp if base_logp is None else base_logp.to(logp.device)
    kl = (base.exp() * (base - logp)).sum(-1).mean().item()
    top1 = (base.argmax(-1) == logp.argmax(-1)).float().mean().item()
    base_nll = -base.gather(-1, gold[:, None]).mean().item()
    return ({"nll": nll, "base_nll": base_nll, "kl": max(kl, 0.0), "top1": top1, "tokens": int(gold.numel()),
             "domain": item.meta.get("domain")}, logp.cpu())


# --- the run ------------------------------------------------------------------------------------------------

def store_path(out) -> Path:
    """The per-item store of a JSON output, in ``items/`` beside it: results/X.json -> results/items/X_items.csv."""
    out = Path(out)
    return out.parent / "items" / (out.stem + "_items.csv")


def open_store(out):
    store_path(out).parent.mkdir(parents=True, exist_ok=True)
    return ResultStore(store_path(out), KEY, FIELDS)


def time_one_item(model, tokenizer, length: int) -> float:
    """Seconds for one uncompressed passkey item at ``length`` tokens (the unit of the cost estimate)."""
    from .base import Runner
    from .tasks import passkey_item

    item = passkey_item(tokenizer, length, 0, seed=10_000)
    start = time.perf_counter()
    retrieval_result(Runner(model), item, tokenizer)
    return time.perf_counter() - start


def estimate(pending: list[tuple], seconds: float, unit_length: int) -> float:
    """Seconds for the pending items: ``seconds`` per item at ``unit_length`` tokens, linear in length, a ppl
    item counted twice when its uncompressed scores must be computed too."""
    return sum(seconds * length / unit_length * (2 if task == "ppl" else 1) for task, length in pending)


def run_compare(model, tokenizer, spec: CompareSpec, out, progress: bool = True, command: str | None = None,
                log=sys.stderr) -> dict:
    """Run (or resume) ``spec``; write the JSON summary to ``out`` (atomically) and return it."""
    from ..core.io import write_json

    store = open_store(out)
    identity = model_identity(model)
    model_id = f"{identity['model']}@{identity['attention_hash']}"   # name@hash of the attention weights
    cells, status = plan(model, spec)
    items = {(t, n_tokens): make_items(t, tokenizer, n_tokens, spec.n, spec.seed)
             for t in spec.tasks for n_tokens in spec.lengths}
    todo = unstored(store, [(cell, t, it) for cell in cells for t in spec.tasks for it in items[(t, cell.length)]],
                    lambda w: _key(model_id, w[0], w[1], spec.seed, w[2].index))
    if todo:
        _print_estimate(model, tokenizer, spec, todo, len(store.keys()), store.path, log)
    by_cell: dict = {}
    for cell, t, it in todo:
        by_cell.setdefault(id(cell), (cell, []))[1].append((t, it))
    base_logp: dict = {}

    def failed(group, err):                 # one failing method is a status row; the run goes on
        cell = group[0]
        status.append({"method": cell.spec, "axis": cell.method.axis, "status": "failed", "length": cell.length,
                       "setting": cell.setting.label, "note": f"{type(err).__name__}: {err}"})
        print(f"compare: {cell.spec} {cell.setting.label} at {cell.length} tokens failed: "
              f"{type(err).__name__}: {err}", file=log, flush=True)

    measure_all(store, list(by_cell.values()),
                lambda group: _run_cell(model, tokenizer, *group, spec, model_id, base_logp), "compare",
                size=lambda group: len(group[1]), label=lambda g: f"{g[0].spec} {g[0].setting.label} @ {g[0].length}",
                on_error=failed, progress=progress, log=log)
    result = summarize(store.rows(), cells, status, spec, model_id)
    result.update(command=command, items_file=store.path.relative_to(Path(out).parent).as_posix(),
                  created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    write_json(out, result)
    return result


def _print_estimate(model, tokenizer, spec: CompareSpec, todo: list, stored: int, where, log) -> None:
    """Time one uncompressed item at the shortest length and print what the remaining ``todo`` will cost."""
    unit = min(spec.lengths)
    seconds = time_one_item(model, tokenizer, unit)
    total = estimate([(t, cell.length) for cell, t, _ in todo], seconds, unit)
    print(f"cost estimate: {len(todo)} items to run in {len({(c.spec, c.setting, c.length) for c, _, _ in todo})} "
          f"cells, about {total / 60:.0f} min (one uncompressed item at {unit} tokens took {seconds:.1f} s); "
          f"{stored} items already stored in {where}", file=log, flush=True)


def _run_cell(model, tokenizer, cell, work: list, spec: CompareSpec, model_id: str, base_logp: dict):
    """Score every (task, item) of ``work`` under one cell's method and setting, yielding a row per item.
    The uncompressed ppl log-probabilities are computed first (outside the method's runner) and kept in
    ``base_logp``; the baseline cell stores its own there."""
    if cell.spec != BASELINE:
        for t, it in work:
            if t == "ppl":
                _base_logp(model, it, base_logp)
    with cell.method.runner(model, cell.setting) as run:
        for t, it in work:
            start = time.perf_counter()
            if t == "ppl" and cell.spec == BASELINE:
                result, base_logp[(it.length, it.index)] = ppl_result(run, it, None)
            elif t == "ppl":
                result, _ = ppl_result(run, it, base_logp[(it.length, it.index)])
            else:
                result = retrieval_result(run, it, tokenizer)
            yield dict(_key(model_id, cell, t, spec.seed, it.index), label=cell.setting.label,
                       axis=cell.method.axis, fraction=round(cell.report.fraction, 6),
                       bytes_per_token=round(cell.report.per_token, 3), fixed_bytes=cell.report.fixed,
                       seconds=round(time.perf_counter() - start, 2), **result)


def _base_logp(model, item, memo: dict) -> torch.Tensor:
    """The uncompressed log-probabilities of a ppl item (computed once per run)."""
    key = (item.length, item.index)
    if key not in memo:
        from .base import Runner

        _, memo[key] = ppl_result(Runner(model), item, None)
    return memo[key]


# --- the summary --------------------------------------------------------------------------------------------

def _num(x):
    return None if x in ("", None) else float(x)


def summarize(rows: list[dict], cells: list[Cell], status: list[dict], spec: CompareSpec, model_id: str) -> dict:
    """The JSON summary: one row per (method, requested fraction, task, length) over items 0..n-1 of the stored
    ones (this model and these settings only), the uncompressed ceiling per (task, length), and flags."""
    want: dict = {}
    for r in rows:
        if r["model"] == model_id and r["seed"] == str(spec.seed) and int(r["item"]) < spec.n:
            want.setdefault(tuple(r[k] for k in ("method", "setting", "identity", "task", "version", "length")),
                            []).append(r)
    out, ceiling = [], {}
    for cell in cells:
        for t in spec.tasks:
            key = (cell.spec, cell.setting.key(), cell.identity, t, str(TASK_VERSION[t]), str(cell.length))
            mine = want.get(key, [])
            row = {"method": cell.spec, "axis": cell.method.axis, "composed": cell.method.axis == "composed",
                   "setting": cell.setting.label, "params": dict(cell.setting.params), "requested": cell.requested,
                   "fraction": round(cell.report.fraction, 6), "bytes_per_token": cell.report.per_token,
                   "fixed_bytes": cell.report.fixed, "identity": cell.identity, "task": t, "length": cell.length,
                   "n": len(mine), "status": "ok" if len(mine) == spec.n else "incomplete"}
            if mine and t == "ppl":
                nll = sum(_num(r["nll"]) for r in mine) / len(mine)
                base = sum(_num(r["base_nll"]) for r in mine) / len(mine)
                row.update(nll=nll, perplexity=math.exp(nll), perplexity_ratio=math.exp(nll - base),
                           kl=sum(_num(r["kl"]) for r in mine) / len(mine),
                           top1=sum(_num(r["top1"]) for r in mine) / len(mine),
                           domains=sorted({r["domain"] for r in mine}))
            elif mine:
                correct = sum(int(r["correct"]) for r in mine)
                row.update(correct=correct, accuracy=correct / len(mine),
                           failed_depths=sorted(_num(r["depth"]) for r in mine if int(r["correct"]) == 0),
                           kept_depths=sorted(_num(r["depth"]) for r in mine if int(r["correct"]) == 1))
            out.append(row)
            if cell.spec == BASELINE and t in RETRIEVAL_TASKS and mine:
                ceiling.setdefault(t, {})[str(cell.length)] = row["accuracy"]
    flagged = [{"task": t, "length": int(n_tokens), "accuracy": acc} for t, by in ceiling.items()
               for n_tokens, acc in by.items() if acc < CANNOT_DO]
    for row in out:
        row["flagged"] = any(f["task"] == row["task"] and f["length"] == row["length"] for f in flagged)
        if "accuracy" in row:
            ceil = ceiling.get(row["task"], {}).get(str(row["length"]))
            row["relative"] = None if not ceil else row["accuracy"] / ceil
    return {"model": model_id, "tasks": list(spec.tasks), "lengths": list(spec.lengths), "n": spec.n,
            "seed": spec.seed, "fractions": list(spec.fractions), "methods": [BASELINE] + [
                m for m in dict.fromkeys(spec.methods) if m != BASELINE],
            "cannot_do_below": CANNOT_DO, "target_tokens": TARGET_TOKENS, "ceiling": ceiling, "flagged": flagged,
            "rows": out, "status": status}


def format_table(result: dict) -> str:
    """Plain-text table: one line per method setting and length, ppl ratio / KL and accuracy per task."""
    tasks = result["tasks"]
    head = f"{'method':<28} {'setting':<18} {'bytes':>6} {'len':>5}" + "".join(
        f" {('ppl x / KL' if t == 'ppl' else t):>13}" for t in tasks)
    lines = [head]
    groups: dict = {}
    for r in result["rows"]:
        groups.setdefault((r["method"], r["setting"], r["length"]), {})[r["task"]] = r
    for (m, s, n_tokens), by in groups.items():
        first = next(iter(by.values()))
        cells = []
        for t in tasks:
            r = by.get(t)
            if r is None or r["n"] == 0:
                cells.append("-")
            elif t == "ppl":
                cells.append(f"{r['perplexity_ratio']:.2f} / {r['kl']:.3f}")
            else:
                cells.append(f"{r['correct']}/{r['n']}" + ("*" if r["flagged"] else ""))
        lines.append(f"{m:<28} {s:<18} {first['fraction']:>6.3f} {n_tokens:>5}" + "".join(f" {c:>13}" for c in cells))
    for s in result["status"]:
        where = f" at {s['requested']} of the bytes, {s['length']} tokens" if s.get("requested") else ""
        lines.append(f"{s['method']}: {s['status']}{where}: {s['note']}")
    if result["flagged"]:
        lines.append("* model cannot do it (uncompressed accuracy below "
                     f"{result['cannot_do_below']:.0%}): " + ", ".join(f"{f['task']} at {f['length']}"
                                                                     for f in result["flagged"]))
    return "\n".join(lines)


def load_result(path) -> dict:
    """A summary written by :func:`run_compare` (a clear error when the file is not one)."""
    with open(path) as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or "rows" not in data or "ceiling" not in data:
        raise ValueError(f"{path} is not a comparison summary (written by `mkv compare`): no rows/ceiling")
    return data

"""data/README.md: an index of every committed artefact, generated from the files themselves.

For each file what it is, the command that made it (or "not recorded"), what it measured where its record says,
and for results files whether ``mkv reproduce`` remakes them; then housekeeping lists. One function per kind of
file (:func:`describe`)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..commands.reproduce import cost_text, recipe, row_commands
from .markdown import bullets, code, num, paragraphs, slug, table
from . import results
from .records import Data, read_json
from .results import prose, readout_text

SETTINGS = ("strategy", "step", "min_rank", "stop_budget", "max_spread", "nll_weight", "batched", "proxy_refresh")
QUALITY = "../docs/results.md#adaptive-against-uniform-ranks-perplexity--kl-along-each-search-trajectory"
BUNDLE_ROLES = {"manifest.json": "the bundle's manifest: base model, geometry, adapter and projections identities, "
                                 "settings (checked on load)",
                "training.json": "the training record of the bundle (settings, loss history)",
                "adapter/adapter_config.json": "peft adapter configuration",
                "adapter/adapter_model.safetensors": "peft LoRA adapter weights",
                "projections.safetensors": "projections trained with the adapter",
                "trajectory.json": "greedy-search trajectory on the fine-tuned model"}


@dataclass
class Entry:
    """What the index says about one file: what it is, the commands that made it (none: not recorded), notes;
    ``made`` instead of repeating a command given with another file."""
    what: str
    commands: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    made: str = ""

    def lines(self, rel: str) -> list[str]:
        commands = [c for c in self.commands if c]
        made = self.made or (f"made by {len(commands)} commands, listed with the tables that show it"
                             if len(commands) > 1 else f"made by {code(commands[0])}" if commands
                             else "command not recorded")
        return [f"- {code(rel)}: {self.what}"] + [f"  - {n}" for n in [made, *self.notes] if n]


def _projections(data: Data, rel: str) -> Entry:
    meta, record = data.projections[rel], data.projection_records.get(rel) or {}
    g, calib, init = meta.get("geometry") or {}, meta.get("calibration") or {}, meta.get("init_fingerprint")
    what = (f"{meta.get('kind')} projections for {meta.get('model')} ({g.get('layers')} layers x {g.get('kv_heads')} "
            f"KV heads x head dim {g.get('head_dim')}), fingerprint {meta.get('fingerprint')}")
    if meta.get("kind") == "pca":
        what += f"; PCA fitted on {calib.get('tokens', 0):,} tokens of {calib.get('corpus')}"
    elif init:
        what += f"; trained from {code(found) if (found := data.projections_file(init)) else init + ' (not committed)'}"
    if "steps" not in record:
        return Entry(what, [record.get("command")], [record.get("note") or "no JSON record beside it; the settings "
                                                     "above are from its safetensors header"])
    evals = record.get("evals") or []
    kl = [next((r["kl_to_base"] for r in e["rows"] if r["budget"] == 0.5), None) for e in (evals[:1] + evals[-1:])]
    return Entry(what, [record.get("command")], [
        f"record: {code(rel[:-len('.safetensors')] + '.json')}",
        f"{record.get('steps')} steps, {record.get('tokens_seen', 0):,} tokens of "
        f"{' + '.join(record.get('corpora') or [])}, {num(record.get('wall_time_s', 0) / 60, 0)} minutes on "
        f"{(record.get('hardware') or {}).get('device')}",
        f"measured (its record): held-out KL at a uniform 50% budget {num(kl[0], 3)} at step {evals[0]['step']}, "
        f"{num(kl[-1], 3)} at step {evals[-1]['step']}; see [training runs](../docs/results.md#training-runs-of-the-"
        "projections)" if evals else ""])


def _record(data: Data, rel: str) -> Entry:
    target, record = rel[:-len(".json")] + ".safetensors", read_json(data.root / rel)
    name, trained = code(Path(target).name), "steps" in record
    return Entry(f"the training record of {code(target)} (command, settings, loss history, evaluations)" if trained
                 else f"the record of {code(target)}: the command that made it", [record.get("command")],
                 [record.get("note", "")] if trained else [],
                 made=f"written {'by the run that made' if trained else 'with'} {name} (its command is listed there)")


def _trajectory(data: Data, rel: str) -> Entry:
    t = data.trajectories[rel]
    meta, fp, ev = t.get("meta") or {}, t["fingerprint"], t.get("evaluations") or {}
    cfg, proj, adapter = meta.get("config") or {}, data.projections_file(fp), (meta.get("adapter") or {}).get(
        "weights_hash")
    what = (f"greedy-search trajectory ({len(t.get('steps') or [])} steps) for projections "
            f"{code(proj) if proj else fp + ' (not committed)'} (fingerprint {fp})"
            + (f", searched on the model with the adapter {adapter} merged in" if adapter else "")
            + ("; the default trajectory for them (`--allocation adaptive`)" * (rel == data.default_trajectory(fp))))
    settings = ", ".join(f"{k} {'none' if cfg[k] is None else cfg[k]}" for k in SETTINGS if k in cfg)
    at = {(r["allocation"], r["budget"]): r for r in ev.get("rows") or []}
    a, u, readout = at.get(("adaptive", 0.5)), at.get(("uniform", 0.5)), meta.get("readout") or {}
    return Entry(what, [meta.get("command")], [
        meta.get("command_note", ""),
        f"calibration: {meta.get('calibration_tokens')} tokens of "
        f"{meta.get('calibration_corpus') or cfg.get('corpus')}; "
        f"settings: {settings}; {num(meta.get('seconds', 0) / 60, 0)} minutes",
        f"measured (its `evaluations`, {readout_text(ev)}): perplexity / KL at 50%, adaptive {num(a['perplexity'])} / "
        f"{num(a['kl_to_base'], 3)}, uniform {num(u['perplexity'])} / {num(u['kl_to_base'], 3)}; other budgets in "
        f"[docs/results.md]({QUALITY})" if a and u else "",
        f"its readout measured again (steps unchanged) by {code(readout['command'])}, {readout.get('created')}"
        if readout.get("command") else ""])


def _results(data: Data, rel: str) -> Entry:
    path, remade = data.root / rel, recipe(data.root / rel, data.root)
    tables = [f"[{s.title}](../docs/results.md#{slug(s.title)})" for s in results.SECTIONS.values() if s.reads(rel[5:])]
    obj = read_json(path) if path.suffix == ".json" else (data.record_of(path) or {})
    commands = [c for c in dict.fromkeys([obj.get("command"), *(obj.get("commands") or []), *row_commands(obj)])
                if c] or remade.commands
    cost = f" (recorded cost {cost_text(remade.cost_s)})" if remade.cost_s else ""
    fast = f"; no fast form: {remade.no_fast}" if remade.no_fast else "; also in fast form (`--fast`, shape only)"
    note = (f"`mkv reproduce` cannot remake it: {remade.why_not}" if remade.why_not else
            f"`mkv reproduce` remakes it in part{cost}: {remade.stale}, which the full form cannot match{fast}"
            if remade.stale else f"`mkv reproduce` remakes it{cost}{fast}")
    what = f"results table, {sum(1 for _ in open(path)) - 1} rows" if path.suffix == ".csv" else "results record"
    return Entry(what, commands, ["shown in " + ", ".join(tables) if tables else
                                  "no table in docs/results.md reads it yet", note],
                 made=f"made by {code(commands[0])}, which writes it with {code(data.rel(remade.summary))}"
                 if remade.summary and commands else "")


def _bundle_file(data: Data, rel: str, bundle: Path) -> Entry:
    m, name = read_json(bundle / "manifest.json"), Path(rel).relative_to(data.rel(bundle)).as_posix()
    if name == "trajectory.json" and rel in data.trajectories:
        return _trajectory(data, rel)
    what = f"stage-{m.get('stage')} LoRA bundle {code(data.rel(bundle))}: {BUNDLE_ROLES.get(name, 'a bundle file')}"
    if name != "manifest.json":
        return Entry(what, [m.get("command")], made="written by the command in the bundle's `manifest.json`")
    parent, init = (m.get("parent_adapter") or {}).get("weights_hash"), m.get("init_fingerprint")
    starts = [("adapter", parent, data.bundle_with_adapter(parent)), ("projections", init, data.projections_file(init))]
    return Entry(what, [m.get("command")], [
        f"{m.get('steps')} steps, {m.get('tokens_seen', 0):,} tokens of {m.get('data')} {m.get('split')}, loss "
        f"{num(m.get('first_loss'), 3)} -> {num(m.get('last_loss'), 3)}"] + [
        f"started from the {kind} {h} ({code(path) if path else 'not committed'})" for kind, h, path in starts if h])


def describe(data: Data, path: Path) -> Entry:
    """The index entry of one file, by its kind."""
    rel, bundle = data.rel(path), data.bundle_of(path)
    if bundle is not None:
        return _bundle_file(data, rel, bundle)
    if rel in data.projections:
        return _projections(data, rel)
    if rel in data.trajectories:
        return _trajectory(data, rel)
    if data.results in path.parents:
        return _results(data, rel)
    if path.suffix == ".json" and rel[:-len(".json")] + ".safetensors" in data.projection_records:
        return _record(data, rel)
    return Entry("not recognised by the index (add a describing function to `mkvlib/docs/data_index.py`)")


def render_data_index(data: Data) -> str:
    folders, unrecorded, names = defaultdict(list), [], defaultdict(list)
    for path in data.files:
        rel, entry, bundle = data.rel(path), describe(data, path), data.bundle_of(path)
        folders[data.rel(bundle) if bundle else Path(rel).parent.as_posix()] += entry.lines(rel)
        unrecorded += [] if any(entry.commands) else [rel]
        names[path.name] += [] if bundle else [rel]         # files inside bundles are named by their role
    shared = {n: ps for n, ps in sorted(names.items()) if len(ps) > 1}
    why = [(data.rel(p), recipe(p, data.root).why_not) for p in data.files if data.results in p.parents]
    return paragraphs(
        prose("data-index-header") + "\n", *[f"## `{f}/`\n\n" + "\n".join(ls) for f, ls in sorted(folders.items())],
        "## Housekeeping\n\nFiles whose command is recorded nowhere (neither in the file, nor in a record beside it, "
        "nor in a results file):\n\n" + (bullets(map(code, unrecorded)) or "none"),
        "Results files that `mkv reproduce` cannot remake (`mkv reproduce --list` shows every file):\n\n"
        + table(["file", "why not"], [[code(rel), w] for rel, w in why if w], "ll"),
        "File names used by more than one file:\n\n" + "\n".join(
            f"- {code(n)}: " + ", ".join(map(code, ps)) for n, ps in shared.items()) if shared else "") + "\n"

"""data/README.md: an index of every committed artefact, generated from the files themselves.

For each file: what it is, how it was made (the command from its record, or a plain "not recorded"), and what it
measured where its record holds evaluations; for results files also whether ``mkv reproduce`` can remake them
(:mod:`mkvlib.commands.reproduce`); for trajectories the projections they were searched with, the calibration text
and the search settings from their ``meta``. The closing lists flag what needs housekeeping: files whose command is
nowhere recorded, results files ``mkv reproduce`` cannot remake, and file names used by more than one file. One
describing function per kind of file; :func:`describe` picks it.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .markdown import code, num, slug
from .records import Data, read_json

HEADER = """# What is in `data/`

This index is generated from the files it lists by `mkvlib/docs/data_index.py` (`make docs`, or
`python -m mkvlib.docs --write`); `tests/test_docs.py` fails when it no longer matches them. For each artefact:
what it is, how it was made (the command its record holds, or "not recorded"), and what it measured where its
record says. Every measured table is in [docs/results.md](../docs/results.md).
"""


class Entry:
    """What the index says about one file: what it is, the commands that made it (none: not recorded), notes."""

    def __init__(self, what: str, commands=(), *notes: str, made: str = ""):
        commands = [commands] if isinstance(commands, str) else list(commands or ())
        self.what, self.commands, self.notes = what, [c for c in commands if c], [n for n in notes if n]
        self.made = made          # instead of repeating a command given with another file

    def lines(self, rel: str) -> list[str]:
        if self.made:
            made = self.made
        elif len(self.commands) > 1:
            made = f"made by {len(self.commands)} commands, listed with the tables that show it"
        else:
            made = f"made by {code(self.commands[0])}" if self.commands else "command not recorded"
        return [f"- {code(rel)}: {self.what}", f"  - {made}"] + [f"  - {n}" for n in self.notes]


def _geometry(meta: dict) -> str:
    g = meta.get("geometry") or {}
    return f"{g.get('layers')} layers x {g.get('kv_heads')} KV heads x head dim {g.get('head_dim')}"


def _projections(data: Data, rel: str) -> Entry:
    meta = data.projections[rel]
    record = data.projection_records.get(rel)
    calib = meta.get("calibration") or {}
    init = data.projections_file(meta.get("init_fingerprint")) if meta.get("init_fingerprint") else None
    what = (f"{meta.get('kind')} projections for {meta.get('model')} ({_geometry(meta)}), fingerprint "
            f"{meta.get('fingerprint')}")
    if meta.get("kind") == "pca":
        what += f"; PCA fitted on {calib.get('tokens', 0):,} tokens of {calib.get('corpus')}"
    elif meta.get("init_fingerprint"):
        what += f"; trained from {code(init) if init else meta['init_fingerprint'] + ' (not committed)'}"
    if record is None or "steps" not in (record or {}):
        return Entry(what, (record or {}).get("command"), (record or {}).get("note") or
                     "no JSON record beside it; the settings above are from its safetensors header")
    evals = record.get("evals") or []
    kl = [next((r["kl_to_base"] for r in e["rows"] if r["budget"] == 0.5), None) for e in (evals[:1] + evals[-1:])]
    measured = (f"measured (its record): held-out KL at a uniform 50% budget {num(kl[0], 3)} at step "
                f"{evals[0]['step']}, {num(kl[-1], 3)} at step {evals[-1]['step']}; see "
                "[training runs](../docs/results.md#training-runs-of-the-projections)") if evals else ""
    return Entry(what, record.get("command"), f"record: {code(rel[:-len('.safetensors')] + '.json')}",
                 f"{record.get('steps')} steps, {record.get('tokens_seen', 0):,} tokens of "
                 f"{' + '.join(record.get('corpora') or [])}, {num(record.get('wall_time_s', 0) / 60, 0)} minutes on "
                 f"{(record.get('hardware') or {}).get('device')}", measured)


def _record(data: Data, rel: str) -> Entry:
    target = rel[:-len(".json")] + ".safetensors"
    record = read_json(data.root / rel)
    if "steps" not in record:
        return Entry(f"the record of {code(target)}: the command that made it",
                     record.get("command"), made=f"written with {code(Path(target).name)} (its command is listed there)")
    note = ("its `final_eval` holds perplexity and KL against budget: see [the table](../docs/results.md"
            "#perplexity-and-kl-against-budget-pca-and-trained-projections)") if record.get("final_eval") else ""
    return Entry(f"the training record of {code(target)} (command, settings, loss history, evaluations)",
                 record.get("command"), record.get("note", ""), note,
                 made=f"written by the run that made {code(Path(target).name)} (its command is listed there)")


def _trajectory(data: Data, rel: str) -> Entry:
    from .results import readout_text

    t = data.trajectories[rel]
    meta, cfg = t.get("meta") or {}, (t.get("meta") or {}).get("config") or {}
    proj = data.projections_file(t["fingerprint"])
    settings = ", ".join(f"{k} {'none' if cfg[k] is None else cfg[k]}" for k in ("strategy", "step", "min_rank", "stop_budget", "max_spread",
                                                    "nll_weight", "batched", "proxy_refresh") if k in cfg)
    what = (f"greedy-search trajectory ({len(t.get('steps') or [])} steps) for projections "
            f"{code(proj) if proj else t['fingerprint'] + ' (not committed)'} (fingerprint {t['fingerprint']})")
    adapter = (meta.get("adapter") or {}).get("weights_hash")
    if adapter:
        what += f", searched on the model with the adapter {adapter} merged in"
    if rel == data.default_trajectory(t["fingerprint"]):
        what += "; the default trajectory for them (`--allocation adaptive`)"
    ev = t.get("evaluations") or {}
    at = {(r["allocation"], r["budget"]): r for r in ev.get("rows") or []}
    measured = ""
    if ("adaptive", 0.5) in at and ("uniform", 0.5) in at:
        a, u = at[("adaptive", 0.5)], at[("uniform", 0.5)]
        measured = (f"measured (its `evaluations`, {readout_text(ev)}): perplexity / KL "
                    f"at 50%, adaptive {num(a['perplexity'])} / {num(a['kl_to_base'], 3)}, uniform "
                    f"{num(u['perplexity'])} / {num(u['kl_to_base'], 3)}; other budgets in [docs/results.md]"
                    "(../docs/results.md#adaptive-against-uniform-ranks-perplexity--kl-along-each-search-trajectory)")
    calib = (f"calibration: {meta.get('calibration_tokens')} tokens of "
             f"{meta.get('calibration_corpus') or cfg.get('corpus')}; settings: {settings}; "
             f"{num(meta.get('seconds', 0) / 60, 0)} minutes")
    readout = meta.get("readout") or {}
    again = (f"its readout measured again (steps unchanged) by {code(readout['command'])}, {readout.get('created')}"
             if readout.get("command") else "")
    return Entry(what, meta.get("command") or data.search_commands.get(rel), meta.get("command_note", ""), calib,
                 measured, again)


def _results(data: Data, rel: str) -> Entry:
    from ..commands.reproduce import recipe
    from .results import SECTIONS

    path = data.root / rel
    tables = [f"[{s.title}](../docs/results.md#{slug(s.title)})" for s in SECTIONS
              if s.reads(Path(rel).relative_to("data").as_posix())]
    shown = "shown in " + ", ".join(tables) if tables else "no table in docs/results.md reads it yet"
    remade = recipe(path, data.root)
    commands = _recorded_commands(data, path) or remade.commands
    made = (f"made by {code(commands[0])}, which writes it beside {code(data.rel(remade.summary))}"
            if remade.summary and commands else "")
    if path.suffix == ".csv":
        with open(path) as fh:
            what = f"results table, {sum(1 for _ in fh) - 1} rows"
    else:
        what = "results record"
    return Entry(what, commands, shown, _reproduce_note(remade), made=made)


def _reproduce_note(r) -> str:
    """Whether `mkv reproduce` can remake a results file, in which forms, and why not."""
    from ..commands.reproduce import cost_text

    if r.why_not:
        return f"`mkv reproduce` cannot remake it: {r.why_not}"
    cost = f" (recorded cost {cost_text(r.cost_s)})" if r.cost_s else ""
    fast = f"; no fast form: {r.no_fast}" if r.no_fast else "; also in fast form (`--fast`, shape only)"
    if r.stale:
        return f"`mkv reproduce` remakes it in part{cost}: {r.stale}, which the full form cannot match{fast}"
    return f"`mkv reproduce` remakes it{cost}{fast}"


def _recorded_commands(data: Data, path: Path) -> list[str]:
    """Commands a results file records: its own (JSON) or its record's beside it (CSV), including per-row ones."""
    from ..commands.reproduce import row_commands

    obj = read_json(path) if path.suffix == ".json" else (data.record_of(path) or {})
    found = [obj.get("command")] + list(obj.get("commands") or [])
    found += row_commands(obj)
    return [c for c in dict.fromkeys(found) if c]


def _bundle_file(data: Data, rel: str, bundle: Path) -> Entry:
    manifest = read_json(bundle / "manifest.json")
    name, stage = Path(rel).relative_to(data.rel(bundle)).as_posix(), manifest.get("stage")
    role = {"manifest.json": "the bundle's manifest: base model, geometry, adapter and projections identities, "
                             "settings (checked on load)",
            "training.json": "the training record of the bundle (settings, loss history)",
            "adapter/adapter_config.json": "peft adapter configuration",
            "adapter/adapter_model.safetensors": f"peft LoRA adapter weights (hash {manifest.get('adapter_weights_hash')})",
            "projections.safetensors": f"projections trained with the adapter (fingerprint "
                                       f"{manifest.get('projections_fingerprint')})",
            "trajectory.json": "greedy-search trajectory on the fine-tuned model"}.get(name, "a file of the bundle")
    if name == "trajectory.json" and rel in data.trajectories:
        return _trajectory(data, rel)
    what = f"stage-{stage} LoRA bundle {code(data.rel(bundle))}: {role}"
    if name != "manifest.json":
        return Entry(what, manifest.get("command"), made="written by the command in the bundle's `manifest.json`")
    parent, init = manifest.get("parent_adapter") or {}, manifest.get("init_fingerprint")
    return Entry(what, manifest.get("command"),
                 f"{manifest.get('steps')} steps, {manifest.get('tokens_seen', 0):,} tokens of {manifest.get('data')} "
                 f"{manifest.get('split')}, loss {num(manifest.get('first_loss'), 3)} -> "
                 f"{num(manifest.get('last_loss'), 3)}",
                 f"started from the adapter {parent['weights_hash']} "
                 f"({code(data.bundle_with_adapter(parent['weights_hash'])) if data.bundle_with_adapter(parent['weights_hash']) else 'not committed'})"
                 if parent.get("weights_hash") else "",
                 f"started from the projections {init} ({_committed(data, data.projections_file(init))})" if init else "")


def _committed(data: Data, path: str | None) -> str:
    return code(path) if path else "not committed"


def describe(data: Data, path: Path) -> Entry:
    rel = data.rel(path)
    bundle = data.bundle_of(path)
    if bundle is not None:
        return _bundle_file(data, rel, bundle)
    if rel in data.projections:
        return _projections(data, rel)
    if rel in data.trajectories:
        return _trajectory(data, rel)
    if data.results in path.parents:
        return _results(data, rel)
    if path.suffix == ".json" and (rel[:-len(".json")] + ".safetensors") in data.projection_records:
        return _record(data, rel)
    return Entry("not recognised by the index (add a describing function to `mkvlib/docs/data_index.py`)")


def _shared_names(data: Data) -> dict[str, list[str]]:
    """{file name: paths} for names used by more than one file (files inside bundles are named by their role)."""
    names = defaultdict(list)
    for p in data.files:
        if data.bundle_of(p) is None:
            names[p.name].append(data.rel(p))
    return {n: ps for n, ps in sorted(names.items()) if len(ps) > 1}


def _not_remade(data: Data) -> str:
    """A table of the results files `mkv reproduce` cannot remake, with the reason."""
    from ..commands.reproduce import recipe

    rows = [(data.rel(p), recipe(p, data.root).why_not) for p in data.files if p.parent == data.results]
    return ("Results files that `mkv reproduce` cannot remake (`mkv reproduce --list` shows every file):\n\n"
            "| file | why not |\n| --- | --- |\n" + "\n".join(f"| {code(rel)} | {why} |" for rel, why in rows if why))


def render_data_index(data: Data) -> str:
    folders = defaultdict(list)
    unrecorded = []
    for path in data.files:
        rel = data.rel(path)
        folder = data.rel(data.bundle_of(path)) if data.bundle_of(path) else Path(rel).parent.as_posix()
        entry = describe(data, path)
        folders[folder].append(entry.lines(rel))
        if not entry.commands:
            unrecorded.append(rel)
    parts = [HEADER]
    for folder in sorted(folders):
        parts.append(f"## `{folder}/`\n\n" + "\n".join(line for lines in folders[folder] for line in lines))
    parts.append("## Housekeeping\n\nFiles whose command is recorded nowhere (neither in the file, nor in a record "
                 "beside it, nor in a results file):\n\n" + ("\n".join(f"- {code(r)}" for r in unrecorded) or "none"))
    parts.append(_not_remade(data))
    shared = _shared_names(data)
    if shared:
        parts.append("File names used by more than one file:\n\n" + "\n".join(
            f"- {code(name)}: " + ", ".join(code(p) for p in paths) for name, paths in shared.items()))
    return "\n\n".join(parts) + "\n"

"""docs/results.md: every measured table, generated from the files under ``data/`` (never typed by hand).

Each table is one small function registered with :func:`section`; the document shows the sections in the order
they are registered, each inside ``<!-- generated: NAME -->`` markers, so README.md and other documents can
embed the same table by its NAME and a test keeps every copy equal to the data (:mod:`mkvlib.docs`).

Adding a results source (for example ``data/results/ood_suite.csv`` or ``data/results/retrieval.json``) is one
function, registered with :func:`section` below the others in this file (or in a module that
:mod:`mkvlib.docs.build` imports)::

    @section("ood-suite", "Out-of-domain perplexity and KL", "results/ood_suite.*")
    def ood_suite(data: Data) -> str | None:
        path = data.results / "ood_suite.csv"
        if not path.is_file():
            return None                       # the section is left out until the file exists
        rows = ...                            # read it with the library's own reader
        return "\\n\\n".join([source_line(data, path), table(headers, rows), commands_line(commands)])

- NAME is the marker name (letters, digits, '-', '.'), the title becomes the heading, and the glob patterns
  (relative to ``data/``; '!pattern' excludes) say which files the section reads: a results file that no section reads is listed
  under "Other result files", so a new file is never silently left out.
- Say where each table comes from (:func:`source_line`) and which command made it (:func:`commands_line`); when
  the file does not record a command, say so (``commands_line([])``) instead of writing one from memory.
- Format numbers with :mod:`.markdown` (fixed decimals) and sort rows explicitly: the output must be
  byte-identical for the same input.

Then run ``python -m mkvlib.docs --write`` (``make docs``) and commit the data file with docs/results.md.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from .markdown import DASH, code, mib, num, pct, table
from .records import Data, option, read_json


@dataclass(frozen=True)
class Section:
    name: str                           # the marker name: <!-- generated: NAME -->
    title: str                          # the heading in docs/results.md
    sources: tuple[str, ...]            # glob patterns under data/ that it reads
    render: Callable[[Data], str | None]  # the Markdown body, or None when its files are absent

    def reads(self, relpath: str) -> bool:
        """Whether this section reads ``relpath`` (relative to data/): it matches a pattern and no '!pattern'."""
        match = [fnmatch.fnmatch(relpath, p) for p in self.sources if not p.startswith("!")]
        exclude = [fnmatch.fnmatch(relpath, p[1:]) for p in self.sources if p.startswith("!")]
        return any(match) and not any(exclude)


SECTIONS: list[Section] = []


def section(name: str, title: str, *sources: str, lead: bool = False):
    """Register the decorated function ``fn(data) -> str | None`` as one table of docs/results.md (``lead``: among
    the leading sections, in their order of registration, before every other)."""
    def register(fn):
        if any(s.name == name for s in SECTIONS):
            raise ValueError(f"a results section named {name!r} is already registered")
        entry = Section(name, title, sources, fn)
        SECTIONS.insert(sum(s.name in LEADING for s in SECTIONS), entry) if lead else SECTIONS.append(entry)
        if lead:
            LEADING.add(name)
        return fn
    return register


LEADING: set = set()


def source_line(data: Data, *paths, note: str = "") -> str:
    files = ", ".join(code(data.rel(p)) for p in paths)
    return f"Source: {files}." + (f" {note}" if note else "")


def path_cell(path) -> str:
    """A committed file as inline code, or 'not committed'."""
    return code(path) if isinstance(path, str) and path else "not committed"


def commands_line(commands, what: str = "Command") -> str:
    """The commands that made a table, one per line; or a plain statement that none is recorded."""
    commands = [c for c in dict.fromkeys(commands) if c]
    if not commands:
        return f"{what}: not recorded in the file."
    if len(commands) == 1:
        return f"{what}: {code(commands[0])}"
    return f"{what}s:\n\n" + "\n".join(f"- {code(c)}" for c in commands)


def labelled_commands(commands: dict) -> str:
    """{label: command} as a list, or the statement that none is recorded."""
    if not commands:
        return commands_line([])
    return "Commands:\n\n" + "\n".join(f"- {label}: {code(cmd)}" for label, cmd in commands.items())


def quiet(fn, *args, **kwargs):
    """Call a library reader that explains its choices on stderr, without the explanation."""
    with contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


# --- zero-shot accuracy through lm-evaluation-harness ----------------------------------------------------

def projections_recipe(data: Data, fingerprint: str) -> str:
    """How the projections with ``fingerprint`` were made, in words: 'PCA' or 'MatryoshkaKV trained' for the files
    shipped in this data folder, else the recipe :mod:`mkvlib.lmeval.recipes` records for projections that have left
    the tree, else 'projections <fingerprint> (not committed)'."""
    from ..lmeval.recipes import EARLIER, SHIPPED_NAMES

    found = data.projections_file(fingerprint)
    if found and found.startswith("data/projections/") and found.count("/") == 2:
        kind = (data.projections.get(found) or {}).get("kind")
        if kind in SHIPPED_NAMES and data.short(found) == kind:
            return SHIPPED_NAMES[kind]
    if fingerprint in EARLIER:
        return EARLIER[fingerprint]
    return f"{data.short(found)} projections" if found else f"projections {fingerprint} (not committed)"


# which search gave the adaptive ranks of a results file whose trajectory is no longer committed (its record says)
SEARCH_OF_SOURCE = {"data/results/lm_eval_smollm2.csv": "spread-limited search"}


def setup_label(data: Data, fingerprint: str, allocation: str, trajectory: str | None, recorded: str | None = None,
                source: str | None = None, calibration: str | None = None) -> str:
    """'<recipe>, uniform ranks' or '<recipe>, searched ranks (<which search>)': the projections named by how they
    were made (:func:`projections_recipe`), the search by its committed trajectory file ('default trajectory'
    for the one found by fingerprint), else by what the results file records about it."""
    proj = projections_recipe(data, fingerprint)
    if allocation != "adaptive":
        return f"{proj}, uniform ranks"
    if trajectory is not None:
        name = ("default trajectory" if trajectory == data.default_trajectory(fingerprint) else
                data.short(trajectory))
    elif calibration:
        name = f"free search on {calibration}"
    elif source in SEARCH_OF_SOURCE:
        name = SEARCH_OF_SOURCE[source]
    else:
        name = (data.short(recorded) if recorded else "trajectory") + ", not committed"
    return f"{proj}, searched ranks ({name})"


LM_EVAL_FILES = ("results/lm_eval_*.csv", "results/lm_eval_*.json")


def sweep_csvs(data: Data) -> list:
    """The results CSVs written by the lm-eval sweep (the sweep's columns), sorted."""
    out = []
    for path in sorted(data.results.glob("lm_eval_*.csv")):
        with open(path) as fh:
            header = fh.readline().strip().split(",")
        if {"method", "task", "acc", "ranks"} <= set(header):
            out.append(path)
    return out


def csv_cells(data: Data) -> pd.DataFrame:
    """Every sweep CSV's cells (the library's :func:`~mkvlib.lmeval.report.load_results`), labelled by set-up."""
    from ..lmeval.report import load_results
    from ..lmeval.sweep import BASELINE

    frames = []
    for path in sweep_csvs(data):
        df = quiet(load_results, path)
        trajectories = [data.trajectory_of(r) if r.startswith("adaptive") else None for r in df.ranks]
        labels = [BASELINE if r.method == BASELINE else setup_label(data, r.fingerprint, r.allocation, t,
                                                                    source=data.rel(path))
                  for r, t in zip(df.itertuples(), trajectories)]
        frames.append(df.assign(sweep_method=df.method, method=labels, trajectory=trajectories,
                                source=data.rel(path), command=None))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def json_cells(data: Data) -> pd.DataFrame:
    """Cells of results JSON files whose ``rows`` hold one lm-eval run each (``<task>_acc`` per task)."""
    cells = []
    for path in sorted(data.results.glob("lm_eval_*.json")):
        for row in read_json(path).get("rows") or []:
            if not isinstance(row, dict) or not isinstance(row.get("items"), dict):
                continue
            recorded = row.get("trajectory")
            traj = recorded if recorded and (data.root / recorded).is_file() else None
            label = setup_label(data, row["fingerprint"], row["allocation"], traj, recorded,
                                calibration=row.get("calibration"))
            for task, items in row["items"].items():
                cells.append({"model": row["model"], "method": label, "sweep_method": None,
                          "fingerprint": row["fingerprint"], "trajectory": traj,
                              "budget": float(row["budget"]), "task": task, "acc": row[f"{task}_acc"],
                              "acc_norm": row.get(f"{task}_acc_norm"), "items": items, "limit": str(row["limit"]),
                              "source": data.rel(path), "command": row.get("command")})
    return pd.DataFrame(cells)


def lm_eval_cells(data: Data) -> tuple[pd.DataFrame, list[str]]:
    """All lm-eval cells run on the same items as the uncompressed baseline, and the sources left out."""
    from ..lmeval.sweep import BASELINE

    cells = pd.concat([csv_cells(data), json_cells(data)], ignore_index=True)
    if cells.empty or not (cells.method == BASELINE).any():
        return pd.DataFrame(), []
    limit = str(cells[cells.method == BASELINE]["limit"].iloc[0])
    same = cells["limit"].astype(str) == limit
    left_out = sorted(set(cells[~same].source))
    return cells[same].reset_index(drop=True), left_out


def _items_note(cells: pd.DataFrame) -> str:
    items = cells.groupby("task")["items"].max()
    return "Items per task: " + ", ".join(f"{t} {int(n)}" for t, n in items.items()) + "."


@section("lm-eval-table1", "Zero-shot accuracy against KV budget", *LM_EVAL_FILES)
def lm_eval_table1(data: Data) -> str | None:
    from ..lmeval.report import table1

    cells, left_out = lm_eval_cells(data)
    if cells.empty:
        return None
    wide = table1(cells)
    headers = ["budget", "set-up"] + [str(c) for c in wide.columns]
    rows = [[b, m] + [num(v) for v in r] for (b, m), r in zip(wide.index, wide.itertuples(index=False))]
    intro = ("Accuracy (%) per task, the average over tasks, and that average as a share of the uncompressed "
             "model's (the paper's Table 1 layout, `mkvlib.lmeval.report.table1`). A set-up is named by how its "
             "projections were made (the shipped files by their name, projections that have left the tree by "
             "how they were trained) and, for searched ranks, by the search that gave them (see "
             "[Where the accuracy rows come from](#where-the-accuracy-rows-come-from)). " + _items_note(cells))
    if left_out:
        intro += " Left out (run on other items): " + ", ".join(code(s) for s in left_out) + "."
    return intro + "\n\n" + table(headers, rows, "l" * 2 + "r" * (len(headers) - 2))


@section("lm-eval-kept", "Share of the uncompressed accuracy kept", *LM_EVAL_FILES)
def lm_eval_kept(data: Data) -> str | None:
    from ..lmeval.report import kept_at

    cells, _ = lm_eval_cells(data)
    if cells.empty:
        return None
    budgets = sorted({b for b in cells.budget if b < 1}, reverse=True)
    acc, norm = kept_at(cells, budgets, "acc"), kept_at(cells, budgets, "acc_norm")
    rows = []
    for budget in budgets:
        for method in acc.index:
            if pd.isna(acc.loc[method, ("kept", budget)]):
                continue
            rows.append([pct(budget, None), method] + [num(t.loc[method, (col, budget)]) for t in (acc, norm)
                                                      for col in ("kept", "kept_above_chance")])
    intro = ("The average accuracy over tasks as % of the uncompressed model's, and above chance: "
             "(acc - chance) / (acc at 100% - chance), in % (`mkvlib.lmeval.report.kept_at`), for `acc` and "
             "`acc_norm`.")
    headers = ["budget", "set-up", "acc kept", "acc above chance", "acc_norm kept", "acc_norm above chance"]
    return intro + "\n\n" + table(headers, rows, "ll" + "r" * 4)


def _sweep_commands(data: Data, source: str, method: str, budget: float) -> list[str]:
    """Commands in a sweep CSV's JSON record that ran ``method`` at ``budget`` (by --methods and --budgets)."""
    from ..lmeval.sweep import BASELINE

    record = data.record_of(source) or {}
    found = []
    for cmd in record.get("commands") or [record.get("command")]:
        methods, budgets = option(cmd or "", "--methods"), option(cmd or "", "--budgets")
        if not (methods and budgets) or not any(abs(float(b) - budget) < 1e-9 for b in budgets.split(",")):
            continue
        if method in methods.split(",") or method == BASELINE:    # the 100% cell comes with any sweep reaching 1
            found.append(cmd)
    return found


@section("lm-eval-sources", "Where the accuracy rows come from", *LM_EVAL_FILES)
def lm_eval_sources(data: Data) -> str | None:
    from ..lmeval.recipes import EARLIER_DETAILS

    cells, _ = lm_eval_cells(data)
    if cells.empty:
        return None
    lines = []
    for source, part in cells.groupby("source", sort=True):
        csv = source.endswith(".csv")
        record = data.record_of(source) if csv else read_json(data.root / source)
        lines.append(f"- {code(source)}" + (f" (its record: {code(source[:-4] + '.json')})" if csv and record else ""))
        runs = part.drop_duplicates(["method", "budget"]).sort_values(["budget", "method"], ascending=[False, True])
        for r in runs.itertuples():
            cmds = [r.command] if r.command else (
                _sweep_commands(data, source, r.sweep_method, r.budget) if r.sweep_method else [])
            what = ", ".join(code(c) for c in cmds) if cmds else "command not recorded"
            lines.append(f"  - {r.method}, {pct(r.budget, None)}: {what}")
        if csv:
            raw = pd.read_csv(data.root / source, dtype=str)
            commits = sorted(set(raw.get("git_commit", pd.Series(dtype=str)).dropna()))
            lines.append(f"  - git commits the cells were run at: {', '.join(commits) or 'not recorded'}")
        for key in ("what", "run_note", "note", "adaptive_note"):
            if record and record.get(key):
                lines.append(f"  - {key.replace('_', ' ')} (from the record): {record[key]}")
    setups = cells[cells.method != "uncompressed"].drop_duplicates("method").sort_values("method")
    files = []
    for r in setups.itertuples():
        found = data.projections_file(r.fingerprint)
        made = code(found) if found else "not committed: " + EARLIER_DETAILS.get(r.fingerprint, "recipe not recorded")
        files.append([r.method, r.fingerprint, made,
                      path_cell(r.trajectory) if "searched ranks" in r.method else DASH])
    return "\n\n".join(["The projections behind each set-up (by fingerprint: the committed file, or how projections "
                        "that have left the tree were trained; git history keeps them) and the trajectory its "
                        "searched ranks came from, then, per results file, the command that ran each set-up at each "
                        "budget and the commits the cells were run at.",
                        table(["set-up", "fingerprint", "projections", "trajectory"], files, "llll"),
                        "\n".join(lines)])


TARGETS = {0.5: 95.0, 0.375: 90.0}        # the project's targets: % of the uncompressed average accuracy kept


@section("lm-eval-findings", "What the accuracy rows show: rank searches, longer training, the targets",
         *LM_EVAL_FILES)
def lm_eval_findings(data: Data) -> str | None:
    """The reading of the tables above that notebook 04 leaves here: every set-up by recipe, the targets, the noise."""
    from ..lmeval.report import kept_at
    from ..lmeval.sweep import BASELINE

    cells, _ = lm_eval_cells(data)
    if cells.empty:
        return None
    kept = kept_at(cells, tuple(TARGETS))
    setups = cells[cells.method != BASELINE].drop_duplicates("method")
    recipe_of = {m: projections_recipe(data, f) for m, f in zip(setups.method, setups.fingerprint)}
    base = cells[cells.method == BASELINE]
    se = 100 * ((base.acc * (1 - base.acc) / base["items"]).sum() ** 0.5 / len(base)) / base.acc.mean()
    lines = []
    for budget in TARGETS:
        col = kept[("kept", budget)].dropna()
        by_recipe: dict[str, list] = {}
        for method in sorted(col.index, key=lambda m: col[m]):
            by_recipe.setdefault(recipe_of[method], []).append(
                f"{method.removeprefix(recipe_of[method] + ', ')} {num(col[method])}%")
        parts = "; ".join(f"{recipe}: {', '.join(v)}" for recipe, v in by_recipe.items())
        met = [m for m in col.index if col[m] >= TARGETS[budget]]
        lines.append(f"- At {pct(budget, None)}, % of the uncompressed average accuracy kept, per recipe: {parts}. "
                     f"The target of {num(TARGETS[budget], 0)}% is met by "
                     f"{', '.join(met) if met else 'no set-up'}; the best keeps {num(col.max())}% ({col.idxmax()}).")
    shipped = [m for m, r in recipe_of.items() if r == "MatryoshkaKV trained"]
    lines.append(f"- Standard error of a share of the average accuracy: about {num(se)} points (binomial, over "
                 f"{int(base['items'].max()):,} items per task), so differences of a point or two are within noise.")
    lines.append("- Set-ups with the shipped MatryoshkaKV projections: " + (", ".join(shipped) if shipped else
                 "none yet (notebook 06 scores them on ARC-Easy, with a fine-tuned model)") + ".")
    return "\n\n".join(["What the rows of [Zero-shot accuracy against KV budget](#zero-shot-accuracy-against-kv-budget) "
                        "say, computed from them: set-ups grouped by how their projections were made, from the one "
                        "that keeps least to the one that keeps most, against the project's targets.",
                        "\n".join(lines)])


# --- LoRA fine-tuning with compressed KV (notebook 06) --------------------------------------------------

def _lora_ranks(data: Data, ranks: str) -> str:
    if not ranks.startswith("adaptive"):
        return ranks
    traj = data.trajectory_of(ranks)
    return f"adaptive ({data.rel(data.root / traj) if traj else 'trajectory not committed'})"


@section("lora-arc-easy", "ARC-Easy accuracy of the LoRA fine-tuned model against budget", "results/lora_*.csv",
         "results/lora_*.json")
def lora_arc_easy(data: Data) -> str | None:
    from ..lora.accuracy import UNCOMPRESSED, baseline, read_rows

    path = data.results / "lora_arc_easy.csv"
    rows = read_rows(path)
    if not rows:
        return None
    groups: dict[tuple, list] = {}
    for r in rows:                                   # one fine-tuned model (adapter) on one set of items
        groups.setdefault((r["adapter"], r["limit"]), []).append(r)
    out = []
    for (adapter, limit), part in groups.items():
        bundle = data.bundle_with_adapter(adapter)
        for r in sorted(part, key=lambda r: (-r["budget"], r["projections"] != UNCOMPRESSED)):
            kept = []
            for metric in ("acc", "acc_norm"):
                try:
                    kept.append(pct(r[metric] / baseline(part, r["projections"], metric)))
                except (KeyError, TypeError, ZeroDivisionError):
                    kept.append(DASH)
            proj = DASH if r["projections"] == UNCOMPRESSED else data.short(data.projections_file(r["fingerprint"]))
            out.append([adapter, bundle or "not committed", r["items"], r["projections"], proj,
                        _lora_ranks(data, r["ranks"]), pct(r["budget"], None), num(100 * r["acc"]), kept[0],
                        num(100 * r["acc_norm"]) if r["acc_norm"] is not None else DASH, kept[1]])
    intro = ("ARC-Easy test accuracy (%) of the base model with a LoRA adapter merged in, per adapter (its weights "
             "hash; the bundle under `data/lora/` that holds it) and number of items (the first N of the split, "
             "or all of it), with projections attached at each budget; \"kept\" is the share of the same "
             "adapter's uncompressed accuracy on the same items (`mkvlib.lora.accuracy.baseline`). The "
             "`projections` column is the label the run gave; the file column is the committed projections "
             "with that fingerprint. Rows in the order the CSV stores them.")
    headers = ["adapter", "bundle", "items", "projections", "file", "ranks", "budget", "acc", "kept", "acc_norm",
               "kept (acc_norm)"]
    return "\n\n".join([intro, source_line(data, path), table(headers, out, "l" * 2 + "r" + "l" * 3 + "r" * 5),
                        commands_line((data.record_of(path) or {}).get("commands") or []),
                        (data.record_of(path) or {}).get("note", "") + ". The committed bundles' training commands are "
                        "in their manifests (see [data/README.md](../data/README.md))."])


@section("lora-bundles", "LoRA bundles", "lora/*/manifest.json", "lora/*/training.json")
def lora_bundles(data: Data) -> str | None:
    if not data.manifests:
        return None
    rows, cmds = [], []
    for folder, m in sorted(data.manifests.items()):
        cfg = m.get("config") or {}
        rows.append([folder, m.get("stage"), m.get("adapter_weights_hash"), m.get("projections_fingerprint") or DASH,
                     f"{m.get('data')} {m.get('split')}", m.get("steps"), f"{m.get('tokens_seen'):,}",
                     f"{cfg.get('kd_weight')} : {cfg.get('lm_weight')}", ",".join(map(str, cfg.get("schedule") or [])),
                     num(m.get("wall_time_s", 0) / 60, 0), num(m.get("first_loss"), 3), num(m.get("last_loss"), 3)])
        cmds.append(f"{code(folder)}: {code(m.get('command'))}")
    headers = ["bundle", "stage", "adapter", "projections", "training data", "steps", "tokens seen",
               "kd_weight : lm_weight", "rank schedule", "minutes", "first loss", "last loss"]
    return "\n\n".join([source_line(data, *[data.root / f / "manifest.json" for f in sorted(data.manifests)]),
                        table(headers, rows, "lrlllrrrlrrr"),
                        "Commands (from the manifests):\n\n" + "\n".join(f"- {c}" for c in cmds)])


@section("lora-runs", "LoRA two-stage runs: what each run was and what it keeps", "results/lora_*.csv",
         "lora/*/trajectory.json")
def lora_runs(data: Data) -> str | None:
    """The ledger of :mod:`mkvlib.lora.runs` with each run's share kept at 50%, and what the runs show."""
    from ..lora.accuracy import kept_table, read_rows
    from ..lora.runs import RUNS

    path = data.results / "lora_arc_easy.csv"
    if not path.is_file():
        return None
    rows = read_rows(path)
    selectors = {r.label: r.as_selector() for r in RUNS}
    acc, norm = kept_table(rows, selectors), kept_table(rows, selectors, metric="acc_norm")
    k, kn = acc["kept at 50% (%)"], norm["kept at 50% (%)"]
    out = [[r.label, r.what, r.adapter, r.fingerprint, projections_recipe(data, r.init) if r.init else DASH,
            r.stage2_steps or DASH, r.ranks, acc.loc[r.label, "items"], num(100 * acc.loc[r.label, "at 100%"]),
            num(100 * acc.loc[r.label, "at 50%"]), num(k[r.label]), num(kn[r.label])] for r in RUNS]

    def se(label):          # binomial standard error of a share kept, in points
        p, n = acc.loc[label, "at 50%"], acc.loc[label, "items"]
        return 100 * (p * (1 - p) / n) ** 0.5 / acc.loc[label, "at 100%"]

    def listed(*labels, table=k):
        return ", ".join(f"{label} {num(table[label])}%" for label in labels)

    uniform = [r.label for r in RUNS if r.ranks == "uniform" and r.limit == "500"]
    searched = [r.label.removesuffix(" adaptive") for r in RUNS if r.ranks == "adaptive"]
    bundle = data.manifests.get("data/lora/arc_easy_stage2") or {}
    committed = next((r.label for r in RUNS if r.adapter == bundle.get("adapter_weights_hash")
                      and r.fingerprint == bundle.get("projections_fingerprint") and r.ranks == "uniform"
                      and r.limit == "500"), None)
    findings = [
        f"Standard error of a share kept: about {num(se(uniform[0]))} points at {acc.loc[uniform[0], 'items']} items, "
        f"{num(se(committed + ' whole split'))} on the whole split." if committed else "",
        f"The stage-1 model with general projections only: {listed(*[r.label for r in RUNS if r.init is None and r.ranks == 'uniform'])}.",
        "Stage 2 from each of them (start, then steps): " + "; ".join(
            f"{r.label} from {projections_recipe(data, r.init)}, {r.stage2_steps} steps: {num(k[r.label])}%"
            for r in RUNS if r.init and r.ranks == "uniform" and r.limit == "500"
            and r.label in ("(c)", "(c')", "(c'')", "(d)", "(l)", "(m)")) + ".",
        f"Longer or other stage-2 settings from (d): {listed('(e)', '(f)', '(g)', '(h)', '(i)', '(j)', '(k)')}; the best "
        f"with uniform ranks is {k[uniform].idxmax()} ({num(k[uniform].max())}%).",
        "Searched over uniform ranks (points kept, `acc`): " + ", ".join(
            f"{label} {num(k[label + ' adaptive'] - k[label])}" for label in searched) +
        "; in `acc_norm`: " + ", ".join(f"{label} {num(kn[label + ' adaptive'] - kn[label])}" for label in searched) + ".",
    ]
    traj_path = data.root / "data/lora/arc_easy_stage2/trajectory.json"
    if traj_path.is_file():
        ev = read_json(traj_path).get("evaluations") or {}
        at = {r["allocation"]: r["kl_to_base"] for r in ev.get("rows") or [] if r["budget"] == 0.5}
        if {"adaptive", "uniform"} <= set(at):
            findings.append(f"Ranks searched on the task's text are task-specific: on {readout_text(ev)} the committed "
                            f"bundle's searched ranks give a KL to the model of {num(at['adaptive'], 3)} nats per token "
                            f"at 50%, uniform ranks {num(at['uniform'], 3)}.")
    if committed:
        findings.append(f"The committed bundle, {committed}, keeps {num(k[committed])}% on "
                        f"{acc.loc[committed, 'items']} items and {num(k[committed + ' whole split'])}% on the whole "
                        f"split ({acc.loc[committed + ' whole split', 'items']:,} items); `acc_norm` "
                        f"{num(kn[committed])}% and {num(kn[committed + ' whole split'])}%.")
    intro = ("Every scored two-stage run (the ledger `mkvlib.lora.runs`, labelled in the order the runs were "
             "made, as the project's history names them): what it was, the fine-tuned model (adapter weights hash) "
             "and the projections attached at 50% (fingerprint), the general projections stage 2 started from and "
             "the stage-2 steps behind it, and ARC-Easy test accuracy (%) uncompressed and at 50%, with the share "
             "kept of the same model's uncompressed accuracy (`mkvlib.lora.kept_table`). Only "
             f"{committed or 'none'} is committed as a bundle, and of it only its records (its weights are in git "
             "history). Stage 1 is the bundle `data/lora/arc_easy_stage1`; notebook 06 builds both stages.")
    headers = ["run", "what it was", "adapter", "projections", "stage 2 from", "stage-2 steps", "ranks", "items",
               "acc at 100%", "acc at 50%", "kept at 50%", "kept, acc_norm"]
    return "\n\n".join([intro, source_line(data, path), table(headers, out, "lllllrlrrrrr"),
                        "What the runs show, computed from the table:\n\n" +
                        "\n".join(f"- {f}" for f in findings if f)])


# --- Matryoshka training (notebook 02) ------------------------------------------------------------------

def _kl_at(evals: list, budget: float, step_index: int) -> str:
    rows = evals[step_index]["rows"] if evals else []
    return next((num(r["kl_to_base"], 3) for r in rows if abs(r["budget"] - budget) < 1e-9), DASH)


@section("training-runs", "Training runs of the projections", "projections/*.json", "projections/*/*.json")
def training_runs(data: Data) -> str | None:
    records = data.training_records
    if not records:
        return None
    rows, cmds = [], []
    for path, r in sorted(records.items()):
        cfg = r.get("config") or {}
        rows.append([data.short(path), data.short(data.projections_file(r.get("init_fingerprint"))),
                     " + ".join(r.get("corpora") or []), r.get("steps"), f"{r.get('tokens_seen'):,}",
                     f"{cfg.get('kd_weight')} : {cfg.get('lm_weight')}", cfg.get("lr"), cfg.get("seed"),
                     num(r.get("wall_time_s", 0) / 60, 0), (r.get("hardware") or {}).get("device"),
                     _kl_at(r.get("evals"), 0.5, 0), _kl_at(r.get("evals"), 0.5, -1)])
        cmds.append(f"{code(data.short(path))}: {code(r['command'])}")
    intro = ("One row per committed projections file whose JSON record holds its training run (`mkv train`). "
             "KL at 50% is the held-out KL to the uncompressed model at a uniform 50% budget, measured by the "
             "run itself on its own evaluation tokens (`--eval-tokens`), before the first and after the last step.")
    headers = ["projections", "initialised from", "corpora", "steps", "tokens seen", "kd_weight : lm_weight", "lr",
               "seed", "minutes", "device", "KL at 50%, start", "KL at 50%, end"]
    return "\n\n".join([intro, source_line(data, *[data.root / (p[:-len(".safetensors")] + ".json") for p in records],
                                           note="(each `.json` beside its `.safetensors`)"),
                        table(headers, rows, "lllrrrrrrlrr"),
                        "Commands (from the records):\n\n" + "\n".join(f"- {c}" for c in cmds)])


@section("training-evals", "Held-out KL and perplexity ratio during training", "projections/*.json",
         "projections/*/*.json")
def training_evals(data: Data) -> str | None:
    records = {p: r for p, r in sorted(data.training_records.items()) if r.get("evals")}
    if not records:
        return None
    budgets = sorted({row["budget"] for r in records.values() for e in r["evals"] for row in e["rows"]}, reverse=True)
    rows = []
    for path, r in records.items():
        for e in r["evals"]:
            by_budget = {row["budget"]: row for row in e["rows"]}
            rows.append([data.short(path), e["step"], e["rows"][0].get("tokens", DASH)] +
                        [f"{num(by_budget[b]['kl_to_base'], 3)} / {num(by_budget[b]['perplexity_ratio'], 2)}x"
                         if b in by_budget else DASH for b in budgets])
    intro = ("KL to the uncompressed model / perplexity ratio to it, at uniform budgets, on each run's held-out "
             "evaluation tokens, at the steps the run evaluated (from the `evals` of each training record; the "
             "runs evaluated on different text, so compare rows within one run).")
    headers = ["projections", "step", "tokens"] + [pct(b, None) for b in budgets]
    return "\n\n".join([intro, table(headers, rows, "l" + "r" * (len(headers) - 1))])


@section("training-final-eval", "Perplexity and KL against budget: PCA and trained projections",
         "projections/*.json", "projections/*/*.json")
def training_final_eval(data: Data) -> str | None:
    found = {p: r["final_eval"] for p, r in sorted(data.training_records.items()) if r.get("final_eval")}
    if not found:
        return None
    parts = []
    for path, ev in found.items():
        kinds = [k for k, v in ev.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        budgets = sorted({row["budget"] for k in kinds for row in ev[k]}, reverse=True)
        rows = []
        for kind in kinds:
            by_budget = {row["budget"]: row for row in ev[kind]}
            for metric, label, digits in (("perplexity_ratio", "perplexity ratio", 2), ("kl_to_base", "KL", 3)):
                rows.append([f"{kind}: {label}"] + [num(max(by_budget[b][metric], 0.0), digits) if b in by_budget
                                                    else DASH for b in budgets])
        base = next(row["base_perplexity"] for k in kinds for row in ev[k])
        parts += [f"{ev.get('corpus')}, {ev.get('tokens'):,} tokens in blocks of {ev.get('seq_len')}, "
                  f"{ev.get('allocation')} ranks; uncompressed perplexity {num(base, 2)}; a dash: not measured. "
                  f"From the `final_eval` of the record of {code(data.short(path))}.",
                  table(["", *[pct(b, None) for b in budgets]], rows),
                  labelled_commands(ev.get("commands") or {})]
    return "\n\n".join([source_line(data, *[data.root / (p[:-len(".safetensors")] + ".json") for p in found])] + parts)


# --- adaptive ranks: the greedy search (notebook 03) ----------------------------------------------------

def _trajectory_groups(data: Data) -> dict[tuple, list[str]]:
    """Trajectories whose evaluations are comparable: same projections, same model (adapter), same held-out text."""
    groups: dict[tuple, list[str]] = {}
    for path, t in sorted(data.trajectories.items(), key=lambda kv: (data.bundle_of(data.root / kv[0]) is not None,
                                                                     kv[0])):
        ev = t.get("evaluations") or {}
        if not ev.get("rows"):
            continue
        adapter = ((t.get("meta") or {}).get("adapter") or {}).get("weights_hash")
        text = (ev.get("corpus"), tuple(ev.get("domains") or ()), ev.get("tokens"), ev.get("seq_len"))
        groups.setdefault((t["fingerprint"], adapter, text), []).append(path)
    return groups


def readout_text(ev: dict) -> str:
    """What a trajectory's readout was measured on, for a table's caption: the out-of-domain suite's mean over
    its domains (tokens per domain, block length), or one corpus."""
    from ..trajectory import SUITE_CORPUS

    if ev.get("corpus") == SUITE_CORPUS:
        domains = ev.get("domains") or []
        per = ev.get("tokens", 0) // max(1, len(domains))
        return (f"the out-of-domain suite, mean over its {len(domains)} domains ({', '.join(domains)}; "
                f"{per:,} tokens each in blocks of {ev.get('seq_len')}; perplexity: the geometric mean)")
    return f"{ev.get('corpus')}, {ev.get('tokens'):,} tokens in blocks of {ev.get('seq_len')}"


def _quality_cells(rows: list, allocation: str, budgets: list) -> list[str]:
    by_budget = {r["budget"]: r for r in rows if r["allocation"] == allocation}
    return [f"{num(by_budget[b]['perplexity'])} / {num(max(by_budget[b]['kl_to_base'], 0.0), 3)}"
            if b in by_budget else DASH for b in budgets]


@section("search-quality", "Adaptive against uniform ranks: perplexity / KL along each search trajectory",
         "trajectories/*.json", "trajectories/*/*.json", "lora/*/trajectory.json")
def search_quality(data: Data) -> str | None:
    groups = _trajectory_groups(data)
    if not groups:
        return None
    parts = ["Perplexity / KL to the uncompressed model on the out-of-domain suite (the mean over its domains, "
             "each weighing the same; `mkvlib.suite`), at the budgets each search evaluated after it finished (the "
             "`evaluations` stored in each trajectory; `mkvlib.search.evaluate_trajectory`; `mkv search "
             "--readout-only` measures them again). A caption naming one corpus marks an older readout. "
             "`uniform`: every entry at the same rank; the other rows: the ranks of that trajectory's prefix at "
             "the budget. The search settings of each trajectory are in the next table."]
    for (fingerprint, adapter, _), paths in groups.items():
        evals = {p: data.trajectories[p]["evaluations"]["rows"] for p in paths}
        budgets = sorted({r["budget"] for rows in evals.values() for r in rows if r["budget"] < 1}, reverse=True)
        base = evals[paths[0]][0]["base_perplexity"]
        model = f", adapter {adapter} merged in ({data.bundle_with_adapter(adapter) or 'not committed'})" if adapter else ""
        parts.append(f"Projections {code(data.short(data.projections_file(fingerprint)))} (fingerprint "
                     f"{fingerprint}){model}; {readout_text(data.trajectories[paths[0]]['evaluations'])}; "
                     f"uncompressed perplexity {num(base, 2)}.")
        rows = [["uniform"] + _quality_cells(evals[paths[0]], "uniform", budgets)]
        rows += [[f"adaptive: {code(p)}"] + _quality_cells(evals[p], "adaptive", budgets) for p in paths]
        parts.append(table(["ranks", *[pct(b, None) for b in budgets]], rows))
    return "\n\n".join(parts)


@section("search-settings", "Search trajectories: settings and cost", "trajectories/*.json", "trajectories/*/*.json",
         "lora/*/trajectory.json")
def search_settings(data: Data) -> str | None:
    if not data.trajectories:
        return None
    rows, cmds = [], []
    for path, t in sorted(data.trajectories.items()):
        meta, cfg = t.get("meta") or {}, (t.get("meta") or {}).get("config") or {}
        spread = cfg.get("max_spread")
        rows.append([code(path), data.short(data.projections_file(t["fingerprint"])),
                     meta.get("calibration_corpus") or cfg.get("corpus"), meta.get("calibration_tokens"),
                     cfg.get("strategy"), cfg.get("step"), cfg.get("min_rank"),
                     DASH if cfg.get("stop_budget") is None else pct(cfg["stop_budget"], None),
                     DASH if spread is None else spread, cfg.get("nll_weight", 0.0), cfg.get("batched"),
                     cfg.get("proxy_refresh"), len(t.get("steps") or []), num(meta.get("seconds", 0) / 60, 0)])
        cmd = data.search_commands.get(path)
        cmds.append(f"- {code(path)}: " + (code(cmd) if cmd else "command not recorded (settings from its `meta`)"))
    intro = ("Each trajectory's search settings, as recorded in its `meta` (`mkvlib.search.SearchConfig`): "
             "calibration text and tokens, strategy, rank step and floor, where it stopped, the rank spread "
             "allowed, the NLL weight, entries committed per pass, proxy rebuilds, steps taken and search minutes.")
    headers = ["trajectory", "projections", "calibration", "tokens", "strategy", "step", "floor", "stop",
               "max spread", "nll weight", "batched", "proxy refresh", "steps", "minutes"]
    return "\n\n".join([intro, table(headers, rows, "lllrl" + "r" * 9),
                        "Commands (from the results files that record them):\n\n" + "\n".join(cmds)])


# --- the real compressed cache (notebook 05) ------------------------------------------------------------

def _machine(obj: dict) -> str:
    return f"Machine: {obj['machine']}." if obj.get("machine") else "Machine: not recorded."


@section("bench-decode", "Decode speed: compressed cache against DynamicCache and quanto", "results/bench_decode*.json")
def bench_decode(data: Data) -> str | None:
    paths = sorted(data.results.glob("bench_decode*.json"))
    if not paths:
        return None
    parts = ["Median decode tokens/s over the repeats, its ratio to `DynamicCache` (speed-up), the same per CPU "
             "second of the process, and the bytes of the stored keys and values (`mkvlib.bench`). A dash in "
             "budget: a cache that keeps every entry (DynamicCache, or quanto's 4-bit one)."]
    for path in paths:
        obj = read_json(path)
        rows = [[r["cache"], DASH if r.get("budget") is None else pct(r["budget"], None), r["context"], r["batch"],
                 num(r["decode_tokens_per_s"], 2), num(r["speedup"], 2), num(r.get("decode_tokens_per_cpu_s"), 2),
                 num(r.get("speedup_cpu"), 2), mib(r.get("cache_bytes"))] for r in obj["rows"]]
        parts += [source_line(data, path) + " " + _machine(obj),
                  table(["cache", "budget", "context", "batch", "tokens/s", "speed-up", "tokens/CPU-s",
                         "speed-up (CPU)", "cache"], rows),
                  commands_line([obj.get("command")])]
    return "\n\n".join(parts)


@section("bench-memory", "Peak memory of one generate() call", "results/bench_memory*.json")
def bench_memory(data: Data) -> str | None:
    path, obj = data.result("bench_memory.json")
    if obj is None:
        return None
    rows = [[r["kind"], pct(r["budget"], None), r["batch"], r["context"], num(r["prefill_s"]),
             num(r["decode_tokens_per_s"], 3), mib(r["cache_bytes"]), mib(r["peak_memory_bytes"]),
             mib(r["model_memory_bytes"])] for r in obj["runs"]]
    check = obj.get("verification") or {}
    verified = (f"The memory model (next table) predicted {mib(check['predicted_peak_bytes'])} for "
                f"{check['run']} and {mib(check['measured_peak_bytes'])} was measured (relative error "
                f"{pct(check['relative_error'])}).") if check else ""
    return "\n\n".join([source_line(data, path) + " " + _machine(obj),
                        table(["cache", "budget", "batch", "context", "prefill s", "decode tokens/s", "cache",
                               "peak growth", "model"], rows), verified, commands_line([obj.get("command")])])


@section("bench-capacity", "What fits in a fixed memory limit", "results/bench_memory*.json")
def bench_capacity(data: Data) -> str | None:
    path, obj = data.result("bench_memory.json")
    if obj is None:
        return None
    models = [[kind, mib(m["fixed_bytes"]), mib(m["per_sequence_bytes"]), f"{m['bytes_per_token']:,.0f}"]
              for kind, m in obj["memory_models"].items()]
    capacity = dict(obj.get("capacity") or {})
    capacity.update({k.removeprefix("capacity_"): v for k, v in obj.items() if k.startswith("capacity_")})
    rows = []
    for name, c in capacity.items():
        kinds = [k for k in c if isinstance(c[k], dict)]
        first = c[kinds[0]]
        rows.append([name, f"{first['limit_bytes'] / 2 ** 30:g} GiB", first["context"]] +
                     [c[k]["max_batch"] for k in kinds] + [num(c["ratio"], 2)])
    kinds = [k for k in next(iter(capacity.values())) if k != "ratio"]
    return "\n\n".join([
        "Memory = fixed + batch x (per sequence + context x bytes per token), fitted to the runs above "
        "(`mkvlib.bench.memory_model`), then the largest batch that fits a limit (`mkvlib.bench.capacity`).",
        table(["cache", "fixed", "per sequence", "bytes per token"], models),
        table(["case", "limit", "context"] + [f"max batch, {k}" for k in kinds] + ["ratio"], rows),
        source_line(data, path)])


@section("bench-profile", "Where a decode step spends its time", "results/bench_profile*.json")
def bench_profile(data: Data) -> str | None:
    paths = sorted(data.results.glob("bench_profile*.json"))
    if not paths:
        return None
    parts = []
    for path in paths:
        obj = read_json(path)
        prof = obj["profile"]
        kinds = list(prof)
        ops = sorted({op for k in kinds for op in prof[k] if op != "total_s_per_step"},
                     key=lambda op: (-sum(prof[k].get(op, 0.0) for k in kinds), op))
        rows = [[code(op)] + [num(prof[k].get(op), 3) for k in kinds] for op in ops]
        rows.append(["total per step"] + [num(prof[k]["total_s_per_step"], 3) for k in kinds])
        parts += [source_line(data, path) + " Self CPU seconds per decode step of the top operators. " +
                  _machine(obj), table(["operator", *kinds], rows), commands_line([obj.get("command")])]
    return "\n\n".join(parts)


@section("bench-cli", "One `mkv bench` run", "results/bench_cli*.json")
def bench_cli(data: Data) -> str | None:
    paths = sorted(data.results.glob("bench_cli*.json"))
    if not paths:
        return None
    parts = []
    for path in paths:
        obj = read_json(path)
        r = obj["result"]
        kinds = [("compressed", ""), ("dynamic", "baseline_"), ("quanto", "quantized_")]
        metrics = [("decode tokens/s", "decode_tokens_per_s", lambda v: num(v, 3)),
                   ("cache", "cache_bytes", mib), ("peak memory growth", "peak_memory_bytes", mib),
                   ("prefill s", "prefill_s", num)]
        rows = [[label] + [fmt(r.get(prefix + key)) for _, prefix in kinds] for label, key, fmt in metrics]
        parts += [source_line(data, path) + f" Projections {r['projections']} at {pct(r['budget'], None)} "
                  f"({r['allocation']}), batch {r['batch']} x context {r['context']}, {r['new_tokens']} new tokens, "
                  f"{r['device']} {r['dtype']}. " + _machine(obj),
                  table(["", *[k for k, _ in kinds]], rows), commands_line([obj.get("command")])]
    return "\n\n".join(parts)


# --- results files no section reads ---------------------------------------------------------------------

def unread_results(data: Data) -> list[str]:
    """Files under data/results/ that no registered section reads."""
    rels = [p.relative_to(data.dir).as_posix() for p in data.files if data.results in p.parents]
    return [r for r in rels if not any(s.reads(r) for s in SECTIONS)]

def other_results(data: Data) -> str | None:
    """The closing part of docs/results.md: results files that no table reads (None when there are none)."""
    unread = unread_results(data)
    if not unread:
        return None
    return ("No table reads these files yet; register one in `mkvlib/docs/results.py` (see its docstring):\n\n" +
            "\n".join(f"- {code('data/' + r)}" for r in unread))

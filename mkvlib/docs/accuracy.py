"""Results sections for task accuracy: the zero-shot lm-eval sweep (notebook 04) and the LoRA two-stage runs
(notebook 06). Set-ups are named by how their projections were made, never by fingerprint."""
from __future__ import annotations

import contextlib
import io
import shlex

import pandas as pd

from ..lmeval.recipes import UNSHIPPED, UNSHIPPED_DETAILS, SHIPPED_NAMES
from ..lmeval.report import kept_at, load_results, table1
from ..lora.accuracy import kept_table, read_rows
from ..lora.runs import RUNS
from ..results_store import BASELINE
from .markdown import DASH, bullets, code, num, paragraphs, pct, table
from .records import Data
from .results import commands_line, commands_list, prose, readout_text, section, source_line

LM_EVAL_FILES = ("results/lm_eval_*.csv", "results/lm_eval_*.json")
# which search gave the adaptive ranks of a results file whose trajectory is no longer committed (its record says)
SEARCH_OF_SOURCE = {"data/results/lm_eval_smollm2.csv": "spread-limited search"}
TARGETS = {0.5: 95.0, 0.375: 90.0}        # the project's targets: % of the uncompressed average accuracy kept


def projections_recipe(data: Data, fingerprint: str) -> str:
    """'PCA' or 'MatryoshkaKV trained' for the shipped files, else the recorded recipe of projections that have left
    the tree, else 'projections <fingerprint> (not committed)'."""
    found = data.projections_file(fingerprint)
    kind = (data.projections.get(found) or {}).get("kind") if found and found.count("/") == 2 else None
    if kind in SHIPPED_NAMES and data.short(found) == kind:
        return SHIPPED_NAMES[kind]
    if fingerprint in UNSHIPPED:
        return UNSHIPPED[fingerprint]
    return f"{data.short(found)} projections" if found else f"projections {fingerprint} (not committed)"


def lm_eval_cells(data: Data) -> tuple[pd.DataFrame, list[str]]:
    """Every sweep CSV's cells labelled by set-up ('<recipe>, uniform ranks' or '<recipe>, searched ranks (<which
    search>)'), those run on the uncompressed baseline's items; and the sources left out (run on other items)."""
    def label(r, trajectory: str | None, source: str) -> str:
        if r.method == BASELINE or r.allocation != "adaptive":
            return BASELINE if r.method == BASELINE else f"{projections_recipe(data, r.fingerprint)}, uniform ranks"
        name = SEARCH_OF_SOURCE.get(source, "trajectory, not committed") if not trajectory else \
            "default trajectory" if trajectory == data.default_trajectory(r.fingerprint) else data.short(trajectory)
        return f"{projections_recipe(data, r.fingerprint)}, searched ranks ({name})"
    frames = []
    for path in sorted(data.results.glob("lm_eval_*.csv")):
        if not {"method", "task", "acc", "ranks"} <= set(open(path).readline().strip().split(",")):
            continue
        with contextlib.redirect_stderr(io.StringIO()):
            df = load_results(path)
        traj = [data.trajectory_of.get(r) if r.startswith("adaptive") else None for r in df.ranks]
        frames.append(df.assign(sweep_method=df.method, trajectory=traj, source=data.rel(path), method=[
            label(r, t, data.rel(path)) for r, t in zip(df.itertuples(), traj)]))
    cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if cells.empty or not (cells.method == BASELINE).any():
        return pd.DataFrame(), []
    same = cells["limit"].astype(str) == str(cells[cells.method == BASELINE]["limit"].iloc[0])
    return cells[same].reset_index(drop=True), sorted(set(cells[~same].source))


def lm_eval_section(name: str, title: str):
    """Register ``fn(data, cells, left_out)`` (:func:`lm_eval_cells`), left out while there are no cells."""
    return lambda fn: section(name, title, *LM_EVAL_FILES)(
        lambda data: None if (found := lm_eval_cells(data))[0].empty else fn(data, *found)) and fn


@lm_eval_section("lm-eval-table1", "Zero-shot accuracy against KV budget")
def lm_eval_table1(data: Data, cells, left_out) -> str:
    wide, items = table1(cells), cells.groupby("task")["items"].max()
    intro = prose("lm-eval-table1", items=", ".join(f"{t} {int(n)}" for t, n in items.items())) + (
        " Left out (run on other items): " + ", ".join(map(code, left_out)) + "." if left_out else "")
    rows = [[b, m] + [num(v) for v in r] for (b, m), r in zip(wide.index, wide.itertuples(index=False))]
    return paragraphs(intro, table(["budget", "set-up", *map(str, wide.columns)], rows, "ll" + "r" * len(wide.columns)))


@lm_eval_section("lm-eval-kept", "Share of the uncompressed accuracy kept")
def lm_eval_kept(data: Data, cells, _) -> str:
    budgets = sorted({b for b in cells.budget if b < 1}, reverse=True)
    acc, norm = kept_at(cells, budgets, "acc"), kept_at(cells, budgets, "acc_norm")
    rows = [[pct(b, None), m] + [num(t.loc[m, (col, b)]) for t in (acc, norm) for col in ("kept", "kept_above_chance")]
            for b in budgets for m in acc.index if not pd.isna(acc.loc[m, ("kept", b)])]
    return paragraphs(prose("lm-eval-kept"), table(["budget", "set-up", "acc kept", "acc above chance", "acc_norm kept",
                                                    "acc_norm above chance"], rows, "llrrrr"))


def _sweep_commands(data: Data, source: str, method: str, budget: float) -> list[str]:
    """Commands in a sweep CSV's record that ran ``method`` at ``budget`` (by --methods and --budgets); the
    uncompressed cell comes with any sweep reaching 1."""
    def option(words, flag):
        return words[words.index(flag) + 1] if flag in words[:-1] else None
    found, record = [], data.record_of(source) or {}
    for cmd in record.get("commands") or [record.get("command")]:
        try:
            words = shlex.split(cmd or "")
        except ValueError:
            continue
        methods, budgets = option(words, "--methods"), option(words, "--budgets")
        if methods and budgets and any(abs(float(b) - budget) < 1e-9 for b in budgets.split(",")) and (
                method in methods.split(",") or method == BASELINE):
            found.append(cmd)
    return found


@lm_eval_section("lm-eval-sources", "Where the accuracy rows come from")
def lm_eval_sources(data: Data, cells, _) -> str:
    lines = []
    for source, part in cells.groupby("source", sort=True):
        record = data.record_of(source) or {}
        lines.append(f"- {code(source)}" + (f" (its record: {code(source[:-4] + '.json')})" if record else ""))
        for r in part.drop_duplicates(["method", "budget"]).sort_values(["budget", "method"],
                                                                        ascending=[False, True]).itertuples():
            cmds = _sweep_commands(data, source, r.sweep_method, r.budget)
            lines.append(f"  - {r.method}, {pct(r.budget, None)}: "
                         + (", ".join(map(code, cmds)) if cmds else "command not recorded"))
        commits = sorted(set(pd.read_csv(data.root / source, dtype=str).get("git_commit", pd.Series()).dropna()))
        lines.append(f"  - git commits the cells were run at: {', '.join(commits) or 'not recorded'}")
        lines += [f"  - {k.replace('_', ' ')} (from the record): {record[k]}" for k in
                  ("what", "run_note", "note", "adaptive_note") if record.get(k)]
    setups = cells[cells.method != "uncompressed"].drop_duplicates("method").sort_values("method")
    files = [[r.method, r.fingerprint, code(found) if (found := data.projections_file(r.fingerprint)) else
              "not committed: " + UNSHIPPED_DETAILS.get(r.fingerprint, "recipe not recorded"),
              (code(r.trajectory) if isinstance(r.trajectory, str) else "not committed")
              if "searched ranks" in r.method else DASH] for r in setups.itertuples()]
    return paragraphs(prose("lm-eval-sources"),
                      table(["set-up", "fingerprint", "projections", "trajectory"], files, "llll"), "\n".join(lines))


@lm_eval_section("lm-eval-findings", "What the accuracy rows show: rank searches, longer training, the targets")
def lm_eval_findings(data: Data, cells, _) -> str:
    """The set-ups against the targets, and the noise."""
    kept, base = kept_at(cells, tuple(TARGETS)), cells[cells.method == BASELINE]
    se = 100 * ((base.acc * (1 - base.acc) / base["items"]).sum() ** 0.5 / len(base)) / base.acc.mean()
    lines = [f"At {pct(budget, None)} the target of {num(target, 0)}% kept is met by "
             f"{', '.join(col.index[col >= target]) or 'no set-up'}; the best keeps {num(col.max())}% ({col.idxmax()})."
             for budget, target in TARGETS.items() for col in [kept[("kept", budget)].dropna()]]
    shipped = sorted(m for m, f in set(zip(cells.method, cells.fingerprint)) if m != BASELINE
                     and projections_recipe(data, f) == "MatryoshkaKV trained")
    lines += [f"Standard error of a share of the average accuracy: about {num(se)} points (binomial, over "
              f"{int(base['items'].max()):,} items per task), so differences of a point or two are within noise.",
              "Set-ups with the shipped MatryoshkaKV projections: " + (", ".join(shipped) or "none yet (notebook 06 "
                                                                       "scores them on ARC-Easy)") + "."]
    return paragraphs(prose("lm-eval-findings"), bullets(lines))


@section("lora-arc-easy", "ARC-Easy accuracy of the LoRA fine-tuned model against budget", "results/lora_*.csv",
         "results/lora_*.json")
def lora_arc_easy(data: Data) -> str | None:
    path = data.results / "lora_arc_easy.csv"
    if not (rows := read_rows(path) if path.is_file() else []):
        return None
    groups: dict[tuple, list] = {}
    for r in rows:                                   # one fine-tuned model (adapter) on one set of items
        groups.setdefault((r["adapter"], r["limit"]), []).append(r)
    out = []
    for (adapter, _), part in groups.items():
        base = next((x for x in part if x["projections"] == BASELINE), None)   # the same adapter and items
        for r in sorted(part, key=lambda r: (-r["budget"], r["projections"] != BASELINE)):
            ranks = r["ranks"] if not r["ranks"].startswith("adaptive") else \
                f"adaptive ({data.trajectory_of.get(r['ranks']) or 'trajectory not committed'})"
            kept = [pct(r[m] / base[m]) if base and r[m] is not None and base[m] else DASH for m in ("acc", "acc_norm")]
            out.append([adapter, data.bundle_with_adapter(adapter) or "not committed", r["items"], r["projections"],
                        DASH if r["projections"] == BASELINE else data.short(data.projections_file(r["fingerprint"])),
                        ranks, pct(r["budget"], None), num(100 * r["acc"]), kept[0],
                        num(100 * r["acc_norm"]) if r["acc_norm"] is not None else DASH, kept[1]])
    record = data.record_of(path) or {}
    return paragraphs(
        prose("lora-arc-easy"), source_line(data, path),
        table(["adapter", "bundle", "items", "projections", "file", "ranks", "budget", "acc", "kept", "acc_norm",
               "kept (acc_norm)"], out, "llrlllrrrrr"),
        commands_line(record.get("commands") or []),
        record.get("note", "") + ". The committed bundles' training commands are in their manifests (see "
        "[data/README.md](../data/README.md)).")


@section("lora-bundles", "LoRA bundles", "lora/*/manifest.json", "lora/*/training.json")
def lora_bundles(data: Data) -> str | None:
    bundles = sorted(data.manifests.items())
    rows = [[f, m.get("stage"), m.get("adapter_weights_hash"), m.get("projections_fingerprint") or DASH,
             f"{m.get('data')} {m.get('split')}", m.get("steps"), f"{m.get('tokens_seen'):,}",
             f"{cfg.get('kd_weight')} : {cfg.get('lm_weight')}", ",".join(map(str, cfg.get("schedule") or [])),
             num(m.get("wall_time_s", 0) / 60, 0), num(m.get("first_loss"), 3), num(m.get("last_loss"), 3)]
            for f, m in bundles for cfg in [m.get("config") or {}]]
    return paragraphs(source_line(data, *[data.root / f / "manifest.json" for f, _ in bundles]),
                      table(["bundle", "stage", "adapter", "projections", "training data", "steps", "tokens seen",
                             "kd_weight : lm_weight", "rank schedule", "minutes", "first loss", "last loss"], rows,
                            "lrlllrrrlrrr"),
                      commands_list({f: m.get("command") for f, m in bundles}, "the manifests")) if bundles else None


def _lora_findings(data: Data, k, kn, acc, committed) -> list[str]:
    """What the runs show beyond the table: the noise, searched against uniform ranks, and the committed bundle's
    searched ranks on general text (``k``, ``kn``: the shares kept at 50% in acc and acc_norm)."""
    def se(label):          # binomial standard error of a share kept, in points
        p, n = acc.loc[label, "at 50%"], acc.loc[label, "items"]
        return 100 * (p * (1 - p) / n) ** 0.5 / acc.loc[label, "at 100%"]
    uniform = [r.label for r in RUNS if r.ranks == "uniform" and r.limit == "500"]
    searched = [r.label.removesuffix(" adaptive") for r in RUNS if r.ranks == "adaptive"]
    traj = data.trajectories.get("data/lora/arc_easy_stage2/trajectory.json") or {}
    at = {r["allocation"]: r["kl_to_base"] for r in (traj.get("evaluations") or {}).get("rows") or []
          if r["budget"] == 0.5}
    return [f"Standard error of a share kept: about {num(se(uniform[0]))} points at {acc.loc[uniform[0], 'items']} "
            f"items, {num(se(committed + ' whole split'))} on the whole split." if committed else "",
            f"The best with uniform ranks is {k[uniform].idxmax()} ({num(k[uniform].max())}%).",
            "Searched over uniform ranks (points kept, `acc`): " + ", ".join(
                f"{s} {num(k[s + ' adaptive'] - k[s])}" for s in searched) + "; in `acc_norm`: " + ", ".join(
                f"{s} {num(kn[s + ' adaptive'] - kn[s])}" for s in searched) + ".",
            f"Ranks searched on the task's text are task-specific: on {readout_text(traj['evaluations'])} the "
            f"committed bundle's searched ranks give a KL to the model of {num(at['adaptive'], 3)} nats per token at "
            f"50%, uniform ranks {num(at['uniform'], 3)}." if {"adaptive", "uniform"} <= set(at) else ""]


@section("lora-runs", "LoRA two-stage runs: what each run was and what it keeps", "results/lora_*.csv",
         "lora/*/trajectory.json")
def lora_runs(data: Data) -> str | None:
    """The ledger of :mod:`mkvlib.lora.runs` with each run's share kept at 50%, and what the runs show."""
    if not (path := data.results / "lora_arc_easy.csv").is_file():
        return None
    rows, selectors = read_rows(path), {r.label: r.as_selector() for r in RUNS}
    acc, norm = kept_table(rows, selectors), kept_table(rows, selectors, metric="acc_norm")
    k, kn = acc["kept at 50% (%)"], norm["kept at 50% (%)"]
    out = [[r.label, r.what, r.adapter, r.fingerprint, projections_recipe(data, r.init) if r.init else DASH,
            r.stage2_steps or DASH, r.ranks, acc.loc[r.label, "items"], num(100 * acc.loc[r.label, "at 100%"]),
            num(100 * acc.loc[r.label, "at 50%"]), num(k[r.label]), num(kn[r.label])] for r in RUNS]
    bundle = data.manifests.get("data/lora/arc_easy_stage2") or {}
    committed = next((r.label for r in RUNS if (r.adapter, r.fingerprint, r.ranks, r.limit) == (
        bundle.get("adapter_weights_hash"), bundle.get("projections_fingerprint"), "uniform", "500")), None)
    return paragraphs(prose("lora-runs", committed=committed or "none"), source_line(data, path),
                      table(["run", "what it was", "adapter", "projections", "stage 2 from", "stage-2 steps", "ranks",
                             "items", "acc at 100%", "acc at 50%", "kept at 50%", "kept, acc_norm"], out,
                            "lllllrlrrrrr"),
                      bullets(_lora_findings(data, k, kn, acc, committed),
                              "What the runs show, computed from the table:"))

"""Every committed result names its projections by a fingerprint the project can name, no label stands for two sets
of projections (a row's label is what a reader sees, the fingerprint what was measured), and a comparison's item
store holds only the items its summary is built from."""
import csv
import json
import math
import re
import sys
from pathlib import Path

import pytest

from mkvlib.lmeval.recipes import recipe
from mkvlib.lora.runs import RUNS

RESULTS = Path(__file__).resolve().parents[1] / "data" / "results"
FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")
IDENTITY = re.compile(r"proj=([0-9a-f]{16})")
LABEL_KEYS = ("method", "label")
# where a row keeps its projections' fingerprint; never ``adapter`` (a LoRA adapter's weights hash)
FINGERPRINT_KEYS = ("fingerprint", "fit_fingerprint", "projections", "identity", "projections_fingerprint")
# stage-2 projections, trained together with one LoRA adapter: the ledger mkvlib.lora.runs says how each was made
LORA_STAGE2 = {r.fingerprint for r in RUNS if r.init}


def rows_of(path: Path):
    """Every dict anywhere in a results file (CSV rows, JSON objects at any depth)."""
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            yield from csv.DictReader(fh)
        return
    stack = [json.loads(path.read_text())]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def fingerprint_of(row: dict) -> str | None:
    for key in FINGERPRINT_KEYS:
        value = row.get(key)
        if isinstance(value, str):
            if FINGERPRINT.match(value):
                return value
            found = IDENTITY.search(value)
            if found:
                return found.group(1)
    return None


def result_files():
    return sorted(RESULTS.glob("*.json")) + sorted(RESULTS.glob("*.csv"))


def labelled_fingerprints():
    """(file, label, fingerprint, recipe) of every row carrying a fingerprint; recipe: the row's own ``recipe``
    (how a file records projections it made and kept only by fingerprint, e.g. bases fitted in-sample), or None."""
    for path in result_files():
        for row in rows_of(path):
            fp = fingerprint_of(row)
            if fp is None:
                continue
            label = next((row[k] for k in LABEL_KEYS if isinstance(row.get(k), str) and row[k]), None)
            own = row.get("recipe") if isinstance(row.get("recipe"), str) and row["recipe"].strip() else None
            yield path.name, label, fp, own


def test_every_fingerprint_is_committed_or_named_by_a_recipe():
    """Named: committed under data/projections/ or in mkvlib.lmeval.recipes, a LoRA stage-2 run's projections in
    the ledger, or described by a row of the same file that carries its own recipe."""
    rows = list(labelled_fingerprints())
    own = {(name, fp) for name, _, fp, text in rows if text}
    unknown = {}
    for name, _, fp, _ in rows:
        if (name, fp) in own or fp in LORA_STAGE2:
            continue
        try:
            recipe(fp)
        except KeyError:
            unknown.setdefault(fp, set()).add(name)
    assert not unknown, f"projections neither committed nor named in mkvlib.lmeval.recipes: {unknown}"


def test_no_label_stands_for_two_projections():
    seen: dict[str, dict[str, set]] = {}
    for name, label, fp, _ in labelled_fingerprints():
        if label:
            seen.setdefault(label, {}).setdefault(fp, set()).add(name)
    clashes = {label: fps for label, fps in seen.items() if len(fps) > 1}
    assert not clashes, f"one label, several projections (label: {{fingerprint: files}}): {clashes}"


# --- comparison summaries and their item stores ------------------------------------------------------------

def compare_summaries():
    """(summary, items) paths of every `mkv compare` summary in data/results/ whose item store is committed."""
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        rec = json.loads(path.read_text())
        if isinstance(rec, dict) and "rows" in rec and "ceiling" in rec and rec.get("items_file") \
                and (RESULTS / rec["items_file"]).is_file():
            out.append((path, RESULTS / rec["items_file"]))
    return out


def _cell(method, setting, identity, task, length) -> tuple:
    return method, setting, identity, task, str(length)


def stale_and_unmatched(summary: Path, items: Path) -> tuple[list, list]:
    """(cells of the item store no summary row is built from, summary rows whose numbers do not recompute from
    the store's items 0..n-1). A cell: method spec, setting label, identity (when the summary records it), task,
    length; items of this model and seed only."""
    rec = json.loads(summary.read_text())
    with open(items, newline="") as fh:
        stored = [r for r in csv.DictReader(fh) if r["model"] == rec["model"] and r["seed"] == str(rec["seed"])]
    with_identity = all("identity" in row for row in rec["rows"])
    by_cell: dict = {}
    for r in stored:
        key = _cell(r["method"], r["label"], r["identity"] if with_identity else None, r["task"], r["length"])
        by_cell.setdefault(key, []).append(r)
    shown = set()
    wrong = []
    for row in rec["rows"]:
        key = _cell(row["method"], row["setting"], row.get("identity") if with_identity else None, row["task"],
                    row["length"])
        shown.add(key)
        mine = [r for r in by_cell.get(key, []) if int(r["item"]) < rec["n"]]
        if len(mine) != row["n"]:
            wrong.append((key, f"n {row['n']}, {len(mine)} items stored"))
        elif mine and row["task"] == "ppl":
            nll = sum(float(r["nll"]) for r in mine) / len(mine)
            if not math.isclose(nll, row["nll"], rel_tol=1e-9, abs_tol=1e-12):
                wrong.append((key, f"nll {row['nll']}, items give {nll}"))
        elif mine and sum(int(r["correct"]) for r in mine) != row["correct"]:
            wrong.append((key, f"correct {row['correct']}, items give {sum(int(r['correct']) for r in mine)}"))
    return sorted(set(by_cell) - shown), wrong


@pytest.mark.parametrize("summary,items", compare_summaries(), ids=lambda p: p.name)
def test_a_comparison_store_holds_only_what_its_summary_shows(summary, items):
    """Items no summary row uses any more (e.g. measured with projections since replaced, under the same method
    spec) are stale: they would let a label stand for projections the summary does not show."""
    stale, wrong = stale_and_unmatched(summary, items)
    assert not stale, f"{items.name} holds cells {summary.name} does not show: {stale}"
    assert not wrong, f"{summary.name} rows do not recompute from {items.name}: {wrong}"


# --- the checks themselves ---------------------------------------------------------------------------------

def test_the_checks_catch_a_clash_and_an_unknown(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text(json.dumps({"rows": [{"method": "X", "fingerprint": "ac63cf12294c56a7"}]}))
    (tmp_path / "b.csv").write_text("method,fingerprint\nX,0123456789abcdef\n")
    # a fingerprint described by its own file's recipe row is named; an adapter id is never read as projections
    (tmp_path / "c.json").write_text(json.dumps({
        "methods": [{"label": "Y", "recipe": "fitted on the suite", "fit_fingerprint": "fedcba9876543210"}],
        "rows": [{"method": "Y", "projections": "fedcba9876543210", "adapter": "1111111111111111"}]}))
    monkeypatch.setattr(sys.modules[__name__], "RESULTS", tmp_path)
    with pytest.raises(AssertionError, match="one label, several projections"):
        test_no_label_stands_for_two_projections()
    with pytest.raises(AssertionError, match="0123456789abcdef") as err:
        test_every_fingerprint_is_committed_or_named_by_a_recipe()
    assert "fedcba9876543210" not in str(err.value) and "1111111111111111" not in str(err.value)


def test_the_store_check_catches_a_stale_cell_and_a_wrong_count(tmp_path):
    fields = ["model", "method", "setting", "identity", "task", "version", "length", "seed", "item", "label",
              "correct", "nll"]
    row = {"model": "m", "method": "matryoshka", "setting": "s", "identity": "proj=ac63cf12294c56a7",
           "task": "passkey", "version": "1", "length": "1024", "seed": "0", "item": "0", "label": "50%",
           "correct": "1", "nll": ""}
    with open(tmp_path / "c_items.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        w.writerows([row, dict(row, identity="proj=216e18ec88005d87")])
    summary = {"model": "m", "seed": 0, "n": 1, "ceiling": {}, "items_file": "c_items.csv",
               "rows": [{"method": "matryoshka", "setting": "50%", "identity": "proj=ac63cf12294c56a7",
                         "task": "passkey", "length": 1024, "n": 1, "correct": 0}]}
    (tmp_path / "c.json").write_text(json.dumps(summary))
    stale, wrong = stale_and_unmatched(tmp_path / "c.json", tmp_path / "c_items.csv")
    assert stale == [_cell("matryoshka", "50%", "proj=216e18ec88005d87", "passkey", 1024)]
    assert wrong and "correct 0, items give 1" in wrong[0][1]

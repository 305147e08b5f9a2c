"""mkv reproduce: the fast form of every results file that allows it remakes a file of the same shape; --list
names every file and says why one cannot be remade; bad input is one clear line; the comparison itself."""
import importlib.util
import json
import os
from pathlib import Path

import pytest
from helpers import needs_model

from mkvlib.cli import main
from mkvlib.commands import reproduce as R

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "data" / "results"


def results_files() -> list[Path]:
    """Every results file: summaries and records in data/results/, item stores in data/results/items/."""
    return sorted(p for p in RESULTS.rglob("*") if p.is_file() and p.suffix in (".json", ".csv"))


def quanto_installed() -> bool:
    try:
        return importlib.util.find_spec("optimum.quanto") is not None
    except ModuleNotFoundError:
        return False


# commands whose fast form still reads the data folder: lm-eval's task files, sft's ARC-Easy split, the ladder's
# calibration text (the training mixture)
READS_DATA = ("lm-eval", "sft", "ladder_run")


def fast_runs() -> list:
    """One file per distinct fast run: a summary checks its items file too, and files whose commands differ only in
    their output share a run."""
    chosen, seen = [], set()
    for path in results_files():
        r = R.recipe(path, ROOT)
        if r.why_not or r.no_fast or (path.suffix == ".csv" and r.summary):
            continue
        words = R.rewrite(R.split_command(r.commands[0])[1], Path("SCRATCH"), fast=True)
        same = " ".join("OUT" if w.startswith("SCRATCH") else w for w in words)
        if same not in seen:
            seen.add(same)
            marks = [pytest.mark.slow]
            if R.command_name(words) in READS_DATA or "--facts" in words:      # the capitals probe reads the data
                marks.append(pytest.mark.needs_data)
            if R.command_name(words) == "bench" and not quanto_installed():
                marks.append(pytest.mark.skip(reason="the record holds the quantized baseline: pip install -e .[quant]"))
            rel = path.relative_to(RESULTS).as_posix()
            chosen.append(pytest.param(rel, marks=marks, id=rel))
    return chosen


def snapshot() -> dict:
    return {p.relative_to(RESULTS).as_posix(): p.stat().st_mtime_ns for p in RESULTS.rglob("*")}


@needs_model
@pytest.mark.parametrize("name", fast_runs())
def test_fast_form_remakes_the_shape_of_every_file_that_allows_it(name, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = snapshot()
    assert main(["reproduce", f"data/results/{name}", "--fast"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "same shape" in out and "reproduced" in out and "shape differs" not in out
    assert snapshot() == before                             # nothing written into data/results


def test_every_summary_and_its_items_file_are_covered():
    stores = sorted((RESULTS / "items").glob("*_items.csv"))
    assert stores and not list(RESULTS.glob("*_items.csv")), "item stores live in data/results/items/"
    for path in stores:
        summary = R.recipe(path, ROOT).summary
        assert summary is not None, f"{path.name}: no summary names it"
        assert R.recipe(summary, ROOT).commands == R.recipe(path, ROOT).commands


def test_list_names_every_results_file_and_says_why_one_cannot_be_remade(capsys):
    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:] if line.strip() and not line[0].isdigit()}
    assert set(rows) == {p.relative_to(RESULTS).as_posix() for p in results_files()}
    for name, line in rows.items():
        full = line.split()[1]
        reason = line.split("  ")[-1].strip()
        if full == "no":
            assert len(reason) > 15, f"{name}: cannot be remade, but the list says not why"
    assert rows["ood_suite.json"].split()[1:3] == ["yes", "yes"]
    assert rows["answers.json"].split()[1:3] == ["yes", "yes"]
    assert rows["bench_memory.json"].split()[1:3] == ["yes", "yes"]
    assert "printed result of its own command" in rows["ood_routes.json"]
    assert rows["passkey_rank_mix.json"].split()[1:3] == ["yes", "no"]
    assert rows["items/compare_think_half_items.csv"].split()[1:3] == ["yes", "yes"]


def test_dry_run_shows_the_ci_sized_command_writing_outside_data(capsys):
    before = snapshot()
    assert main(["reproduce", "data/results/ood_suite.json", "--fast", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--tokens 128" in out and "--in-domain 128" in out and "--budgets 0.875 " in out and "(MKV_FAST=1)" in out
    assert "--out data/" not in out and "/ood_suite.json" in out
    assert snapshot() == before


@pytest.mark.parametrize("argv, message", [
    (["data/results/no_such_file.json"], "no file at data/results/no_such_file.json"),
    (["README.md"], "README.md is not in data/results/"),
    (["data/results/ood_routes.json"], "data/results/ood_routes.json cannot be remade: each row is the printed"),
    (["data/results/positions.json"], "merged by hand"),
    (["data/results/lm_eval_smollm2.json"], "mkv reproduce data/results/lm_eval_smollm2.csv"),
    (["data/results/passkey_rank_mix.json", "--fast"], "has no fast form"),
    (["data/results/ood_suite.json", "--keep", "data/scratch"], "lies in data/"),
    ([], "give a FILE under data/results/"),
])
def test_bad_input_is_one_line_saying_what_to_do(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["reproduce", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_command_that_fails_is_reported_with_its_last_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "data" / "results").mkdir(parents=True)
    record = {"command": "mkv eval --suite ood --budgets 2 --out data/results/broken.json", "rows": []}
    (tmp_path / "data" / "results" / "broken.json").write_text(json.dumps(record))
    monkeypatch.setenv("MKV_PROJECT_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "data/results/broken.json", "--fast"]) == 2
    err = capsys.readouterr().err
    assert "the command failed (exit 2)" in err and "budget" in err
    assert sorted(os.listdir(tmp_path / "data" / "results")) == ["broken.json"]


def test_the_comparison_holds_within_the_tolerance_and_names_what_differs(capsys):
    old = {"command": "a", "wall_time_s": 10, "rows": [{"method": "pca", "budget": 0.5, "kl": 1.0},
                                                         {"method": "pca", "budget": 0.25, "kl": 2.0}]}
    near = {"command": "b", "wall_time_s": 99, "rows": [{"method": "pca", "budget": 0.25, "kl": 2.0001},
                                                          {"method": "pca", "budget": 0.5, "kl": 1.0}]}
    assert R.check_file("x", old, near, False, R.EVALUATION)              # rows matched by what they are
    far = json.loads(json.dumps(near).replace("2.0001", "2.1"))
    assert not R.check_file("x", old, far, False, R.EVALUATION)
    assert "rows[pca, 0.25].kl: 2.0 -> 2.1" in capsys.readouterr().out
    assert not R.check_file("x", old, {"rows": near["rows"][:1], "command": "", "wall_time_s": 1}, False,
                            R.EVALUATION)
    assert "1 of 2 committed rows not remade" in capsys.readouterr().out
    assert R.shape_problems(old, {"command": "b", "rows": [{"method": "pca"}]}) == [
        "wall_time_s: missing", "rows: rows lack ['budget', 'kl']"]
    assert R.shape_problems(old, dict(near, extra=1)) == []                  # a new field is no shape change


def test_bench_figures_are_compared_for_presence_only():
    old = {"decode_tokens_per_s": 1.0, "peak_memory_bytes": 100, "cache_bytes": 4096, "context": 128}
    assert R.check_file("x", old, dict(old, decode_tokens_per_s=9.0, peak_memory_bytes=7), False, None)
    assert not R.check_file("x", old, dict(old, cache_bytes=2048), False, None)


def test_recorded_environment_assignments_are_expanded(monkeypatch):
    monkeypatch.setenv("MKV_DATA_DIR", "/somewhere/data")
    env, words = R.split_command("MKV_DATA_DIR=$MKV_DATA_DIR mkv bench --json")
    assert env == {"MKV_DATA_DIR": "/somewhere/data"} and words == ["mkv", "bench", "--json"]
    monkeypatch.delenv("MKV_DATA_DIR")
    assert R.split_command("MKV_DATA_DIR=$MKV_DATA_DIR mkv bench --json")[0] == {}    # unset: left as it is


SCRIPT = """import sys
from mkvlib.core.io import write_json
write_json(sys.argv[1], {"script": open(__file__).read(), "rows": [{"setting": "a", "value": 1.5}]})
"""


def test_a_shell_command_that_runs_the_records_own_script_remakes_it(tmp_path, capsys, monkeypatch):
    """Like passkey_rank_mix.json: the command writes the record's `script` to a file and runs it; it runs in a
    scratch folder holding a copy of the record at its own path, with this Python first on PATH."""
    (tmp_path / "data" / "results").mkdir(parents=True)
    command = ("python -c \"import json; print(json.load(open('data/results/mix.json'))['script'], end='')\" "
               "> mix.py && python mix.py data/results/mix.json")
    record = {"script": SCRIPT, "rows": [{"setting": "a", "value": 1.5}], "command": command}
    (tmp_path / "data" / "results" / "mix.json").write_text(json.dumps(record))
    monkeypatch.setenv("MKV_PROJECT_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "data/results/mix.json"]) == 0
    out = capsys.readouterr().out
    assert "1 numbers and 2 other values on 1 matched rows" in out and "reproduced" in out
    assert main(["reproduce", "data/results/mix.json", "--fast"]) == 2
    assert "has no fast form (a shell pipeline" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["data"] and os.listdir(tmp_path / "data" / "results") == ["mix.json"]


def test_a_later_command_reads_an_earlier_ones_output_from_the_scratch_folder():
    """Like lora_arc_easy.csv: stage 2 reads the bundle stage 1 wrote (--out lora_stage1)."""
    first = "mkv sft --stage 1 --out lora_stage1 --eval-out data/results/x.csv"
    words = R.split_command("mkv sft --stage 2 --adapter lora_stage1 --out lora_stage2")[1]
    new = R.rewrite(words, Path("/scratch"), fast=False, earlier=R.outputs_of(first))
    assert new[new.index("--adapter") + 1] == "/scratch/lora_stage1" and new[-1] == "/scratch/lora_stage2"
    assert R.outputs_of(first) == ["lora_stage1", "data/results/x.csv"]


def test_a_command_reading_an_adapter_without_weights_cannot_be_remade(tmp_path):
    (tmp_path / "data" / "lora" / "b" / "adapter").mkdir(parents=True)
    (tmp_path / "data" / "results").mkdir()
    path = tmp_path / "data" / "results" / "acc.json"
    path.write_text(json.dumps({"command": "mkv sft --stage 2 --adapter data/lora/b --out data/results/acc.json"}))
    assert "whose weights are not committed" in R.recipe(path, tmp_path).why_not


def test_the_fast_form_shrinks_whole_token_counts_without_dropping_one_to_zero():
    """--keep-first/--keep-recent shrink with the block (by 8), rounded up: a count above 0 stays above 0, so the
    fast record keeps the whole-token fields of the committed one (whole_tokens_sinks.json keeps 4 first, 0 recent)."""
    words = R.split_command("mkv eval --suite ood --keep-first 4 --keep-recent 0,16,64 --tokens 1024 --out x.json")[1]
    new = R.rewrite(words, Path("/scratch"), fast=True)
    assert new[new.index("--keep-first") + 1] == "1" and new[new.index("--keep-recent") + 1] == "0,2,8"

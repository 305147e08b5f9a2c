"""lm-eval through the compression wrapper: tiny local tasks on a tiny model, exactness at full rank, sweep resume,
and clear errors for missing task files."""
import json

import pytest
import torch

from mkvlib.core.geometry import KVGeometry
from mkvlib.lmeval import LMEvalConfig, Sweep, SweepConfig, run_lm_eval
from mkvlib.lmeval.hellaswag import process_docs
from mkvlib.lmeval.sweep import GUESSED_ITEMS, read_rows
from mkvlib.lmeval.tasks import TaskFilesMissingError, resolve_task_paths, write_local_tasks
from mkvlib.models import tiny_model
from mkvlib.core.projections import Projections
from mkvlib.core.ranks import Method

WORDS = ("question answer what is the a an of to in yes no red blue green sky grass fire water cold hot "
         "colour color sun ice open door key lock how do i").split()
TINY_TASK = [{"q": "what colour is the sky", "choices": ["blue", "green", "red"], "label": 0},
             {"q": "what colour is the grass", "choices": ["red", "green"], "label": 1},
             {"q": "is ice cold", "choices": ["yes", "no"], "label": 0},
             {"q": "is fire hot", "choices": ["no", "yes"], "label": 1},
             {"q": "how do i open a lock", "choices": ["the key", "the water", "the sun"], "label": 0}]
TINY_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {file}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{q}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[EOS]", *WORDS, ":", "?", ".", ","])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", heads=4, kv_heads=2, layers=2, vocab=64)


@pytest.fixture(scope="module")
def include_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TINY_TASK))
    (folder / "tiny_mc.yaml").write_text(TINY_YAML.format(file=data))
    return folder


@pytest.fixture(scope="module")
def projections_file(model, tmp_path_factory):
    """Random orthogonal bases and value means for the tiny model, saved like shipped projections."""
    g = torch.Generator().manual_seed(3)
    L, G, d = 2, 2, 16
    keys = torch.linalg.qr(torch.randn(L, G, d, d, generator=g))[0]
    values = torch.linalg.qr(torch.randn(L, G, d, d, generator=g))[0]
    proj = Projections(keys, values, 0.1 * torch.randn(L, G, d, generator=g), meta={"model": model.mkv_name})
    return proj.save(tmp_path_factory.mktemp("proj") / "random.safetensors")


def config(include_dir, **kw):
    return LMEvalConfig(["tiny_mc"], include_path=str(include_dir), source="local", batch_size=4, **kw)


def test_wrapper_scores_a_tiny_local_task(model, tokenizer, include_dir, projections_file):
    from mkvlib.core.compress import attach

    plain = run_lm_eval(model, tokenizer, config(include_dir))
    row = plain["tasks"]["tiny_mc"]
    assert row["items"] == len(TINY_TASK)
    assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["acc_norm"] <= 1.0
    assert plain["average"] == row["acc"]
    with attach(model, str(projections_file), 0.25):
        low = run_lm_eval(model, tokenizer, config(include_dir, log_samples=True))
    assert low["tasks"]["tiny_mc"]["items"] == len(TINY_TASK)


def test_full_rank_gives_the_same_per_item_loglikelihoods(model, tokenizer, include_dir, projections_file):
    from mkvlib.core.compress import attach

    plain = run_lm_eval(model, tokenizer, config(include_dir, log_samples=True))["loglikelihoods"]["tiny_mc"]
    with attach(model, str(projections_file), 1.0):
        full = run_lm_eval(model, tokenizer, config(include_dir, log_samples=True))["loglikelihoods"]["tiny_mc"]
    with attach(model, str(projections_file), 0.25):
        low = run_lm_eval(model, tokenizer, config(include_dir, log_samples=True))["loglikelihoods"]["tiny_mc"]
    assert [len(x) for x in plain] == [len(r["choices"]) for r in TINY_TASK]
    flat = lambda lls: torch.tensor([x for item in lls for x in item])  # noqa: E731
    assert torch.allclose(flat(plain), flat(full), atol=1e-4), "full rank must be exact"
    assert not torch.allclose(flat(plain), flat(low), atol=1e-4), "a 25% budget should change the scores"


def test_offline_builtin_piqa_and_hellaswag_read_local_files(model, tokenizer, tmp_path, monkeypatch):
    """The built-in piqa YAML (prompts, choices, metrics) runs on a local copy laid out like the data folder."""
    (tmp_path / "piqa").mkdir()
    rows = [{"goal": "how do i open a door", "sol1": "the key", "sol2": "the water", "label": 0},
            {"goal": "is ice cold", "sol1": "no", "sol2": "yes", "label": 1}]
    (tmp_path / "piqa" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    result = run_lm_eval(model, tokenizer, LMEvalConfig(["piqa"], source="local", batch_size=4))
    assert result["tasks"]["piqa"]["items"] == 2
    generated = (tmp_path / "x")  # the generated YAML includes lm-eval's own definition and only moves the data
    folder = write_local_tasks(["piqa"], tmp_path, generated)
    text = (folder / "piqa_local.yaml").read_text()
    assert "lm_eval/tasks/piqa/piqa.yaml" in text and str(tmp_path / "piqa" / "validation.jsonl") in text


def test_hellaswag_adapter_feeds_lm_evals_own_process_docs():
    import datasets

    row = {"idx": 0, "activity_label": "Roof shingle removal", "ctx": "A man is sitting on a roof. he",
           "query": "Roof shingle removal: A man is sitting on a roof. He",
           "choices": ["is using wrap.", "is ripping level tiles off.", "is holding a cube.", "starts pulling."],
           "label": 3}
    doc = process_docs(datasets.Dataset.from_list([row]))[0]
    assert doc["query"] == row["query"] and doc["choices"] == row["choices"] and doc["gold"] == 3


def test_missing_task_files_name_the_expected_files(tmp_path, monkeypatch, capsys):
    with pytest.raises(TaskFilesMissingError) as err:
        write_local_tasks(["piqa", "hellaswag"], tmp_path)
    assert "piqa/validation.jsonl" in str(err.value) and "hellaswag/validation.jsonl" in str(err.value)
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    with pytest.raises(TaskFilesMissingError, match="arc_easy/test.jsonl"):
        resolve_task_paths(["arc_easy"], source="local")
    with pytest.raises(ValueError, match="no offline definition"):
        resolve_task_paths(["no_such_task"], source="local")
    from mkvlib.cli import main

    assert main(["lm-eval", "--tasks", "piqa", "--source", "local"]) == 2   # fails before loading any model
    assert "piqa/validation.jsonl" in capsys.readouterr().err


def test_configs_reject_bad_fields(tmp_path):
    with pytest.raises(ValueError, match="limit"):
        LMEvalConfig(["piqa"], limit=0)
    with pytest.raises(ValueError, match="batch_size"):
        LMEvalConfig(["piqa"], batch_size=0)
    with pytest.raises(ValueError, match="no tasks"):
        LMEvalConfig("")
    with pytest.raises(ValueError, match=".csv"):
        SweepConfig(out=str(tmp_path / "out.json"))
    with pytest.raises(ValueError, match="budgets"):
        SweepConfig(out=str(tmp_path / "out.csv"), budgets=[1.5])
    with pytest.raises(ValueError, match="unknown method"):
        SweepConfig(out=str(tmp_path / "out.csv"), methods=["magic"])


def test_sweep_resumes_without_redoing_finished_cells(model, tokenizer, include_dir, projections_file, tmp_path):
    out = tmp_path / "sweep.csv"
    cfg = SweepConfig(out=str(out), methods=[Method("random-uniform", str(projections_file))],
                      budgets=[1.0, 0.5, 0.25], tasks=["tiny_mc"], include_path=str(include_dir), source="local",
                      batch_size=4)
    sweep = Sweep(model, tokenizer, cfg)
    guess = sweep.estimate()
    assert guess["cells"] == 3 and guess["measured_on_cells"] == 0
    assert guess["seconds"] == guess["requests"] * cfg.seconds_per_request
    assert guess["requests"] == 3 * GUESSED_ITEMS * 4      # a task of your own: its size is not known yet
    first = sweep.run(progress=False, max_cells=2)        # "interrupted" after two cells
    assert [r["method"] for r in first] == ["uncompressed", "random-uniform"]
    measured = Sweep(model, tokenizer, cfg).estimate()     # now timed on the two stored cells
    rate = sum(float(r["seconds"]) for r in first) / (2 * 5 * 4)
    assert measured["cells"] == 1 and measured["measured_on_cells"] == 2
    assert measured["seconds_per_request"] == pytest.approx(rate)
    assert measured["requests"] == 5 * 4                   # the stored cells say the task has 5 items
    rest = Sweep(model, tokenizer, cfg).run(progress=False)
    assert [(r["method"], r["budget"]) for r in rest] == [("random-uniform", "0.2500")]
    assert Sweep(model, tokenizer, cfg).run(progress=False) == []
    rows = read_rows(out)
    assert len(rows) == 3 and {r["limit"] for r in rows} == {"full"}
    assert all(r["git_commit"] and r["lm_eval_version"] and r["items"] == "5" for r in rows)
    assert rows[0]["fingerprint"] == "none" and len(rows[1]["fingerprint"]) == 16


def test_a_sweep_scores_your_own_projections_and_trajectory(model, tokenizer, include_dir, projections_file,
                                                            tmp_path):
    """``with_own_files`` swaps the trained methods' projections and adaptive ranks (PCA untouched); the sweep
    then attaches exactly the trajectory's ranks and records the file and its fingerprint."""
    from mkvlib.lmeval.sweep import ranks_digest, with_own_files
    from mkvlib.core.ranks import budget_of
    from mkvlib.core.trajectory import Trajectory

    proj = Projections.load(projections_file)
    ranks = torch.full(KVGeometry.of(model).shape, 16, dtype=torch.long)
    steps = []
    for layer, g, c in [(1, 0, 0), (1, 1, 1), (0, 0, 1), (0, 1, 0)]:
        ranks[layer, g, c] = 4
        steps.append((layer, g, c, 4, 0.1 * len(steps), budget_of(ranks, 16)))
    traj_file = Trajectory(model.mkv_name, proj.fingerprint(), proj.geometry, steps, {}, None).save(
        tmp_path / "own.json")
    methods = with_own_files("pca-uniform,trained-uniform,trained-adaptive", str(projections_file), str(traj_file))
    assert [(m.name, m.projections, m.trajectory) for m in methods] == [
        ("pca-uniform", "pca", None), ("trained-uniform", str(projections_file), None),
        ("trained-adaptive", str(projections_file), str(traj_file))]
    mine = Method("mine", str(projections_file), "adaptive", str(traj_file))
    assert with_own_files([mine]) == [mine]             # nothing given: a method's own files are kept
    with pytest.raises(ValueError, match="add trained-adaptive"):
        with_own_files("pca-uniform,trained-uniform", None, str(traj_file))
    with pytest.raises(FileNotFoundError, match="mkv search"):
        with_own_files("trained-adaptive", None, str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="trajectory gives adaptive"):
        Method("x", "pca", "uniform", str(traj_file))

    out = tmp_path / "own.csv"
    cfg = SweepConfig(out=str(out), methods=methods[2:], budgets=[0.75], tasks=["tiny_mc"],
                      include_path=str(include_dir), source="local", batch_size=4)
    sweep = Sweep(model, tokenizer, cfg)
    expected = Trajectory.load(traj_file).ranks_at(0.75)
    assert torch.equal(sweep.ranks_for(methods[2], 0.75), expected)
    (row,) = sweep.run(progress=False)
    assert row["projections"] == str(projections_file) and row["fingerprint"] == proj.fingerprint()
    assert row["ranks"] == ranks_digest(expected) and budget_of(expected, 16) < 0.75
    assert float(row["kv_budget"]) == pytest.approx(budget_of(expected, 16), abs=1e-4)


def test_adaptive_cells_are_keyed_by_the_ranks_they_used(model, tokenizer, include_dir, projections_file, tmp_path,
                                                          monkeypatch):
    """A new search trajectory gives new adaptive ranks: their stored cells no longer count as done; uniform
    cells keep counting."""
    from mkvlib.lmeval.sweep import ranks_digest, results_store

    out = tmp_path / "sweep.csv"
    cfg = SweepConfig(out=str(out), methods=[Method("rand-uniform", str(projections_file)),
                                             Method("rand-adaptive", str(projections_file), "adaptive")],
                      budgets=[1.0, 0.5], tasks=["tiny_mc"], include_path=str(include_dir), source="local")
    sweep = Sweep(model, tokenizer, cfg)
    ranks = torch.full(KVGeometry.of(model).shape, 8, dtype=torch.long)
    monkeypatch.setattr(sweep, "ranks_for", lambda m, b: ranks.clone() if m.allocation == "adaptive" else float(b))
    for cell in sweep.cells():
        row = sweep._identity(cell)
        results_store(out).add({**row, "allocation": cell.method.allocation if cell.method else "none"})
    assert sweep.pending() == []
    assert {r["ranks"] for r in read_rows(out)} == {"full", "uniform", ranks_digest(ranks)}
    monkeypatch.setattr(model, "mkv_adapter", "0123abcd", raising=False)   # `--adapter`: a fine-tuned model's cells
    assert len(sweep.pending()) == len(sweep.cells())                      # are not the base model's
    monkeypatch.delattr(model, "mkv_adapter")
    assert sweep.pending() == []
    ranks[0, 0, 0] = 4                                        # the trajectory changed
    assert [c.label for c in sweep.pending()] == ["rand-adaptive @ 50% / tiny_mc"]


def test_report_keeps_one_limit_and_the_newest_row_per_cell(tmp_path, capsys):
    from mkvlib.lmeval import report
    from mkvlib.lmeval.sweep import results_store

    out = tmp_path / "mixed.csv"
    add = results_store(out).add
    base = {"model": "m", "projections": "pca", "allocation": "uniform", "ranks": "uniform", "kv_budget": "0.5000",
            "acc_norm": "0.5", "items": "25", "limit": "25", "batch_size": "8", "seconds": "1", "source": "local", "git_commit": "x",
            "lm_eval_version": "0.4"}
    for task, acc in (("piqa", "0.70"), ("arc_easy", "0.50")):
        add({**base, "method": "uncompressed", "fingerprint": "none", "budget": "1.0000", "task": task,
                         "acc": acc, "finished_at": "2026-01-01T00:00:00"})
        add({**base, "method": "pca-uniform", "fingerprint": "a", "budget": "0.5000", "task": task,
                         "acc": "0.10", "finished_at": "2026-01-01T00:00:00"})
    big = {**base, "items": "1000", "limit": "1000"}
    for task, acc in (("piqa", "0.60"), ("arc_easy", "0.40")):
        add({**big, "method": "uncompressed", "fingerprint": "none", "budget": "1.0000", "task": task,
                         "acc": acc, "finished_at": "2026-01-02T00:00:00"})
        for when, value in (("2026-01-02T00:00:00", "0.20"), ("2026-01-03T00:00:00", "0.30")):  # re-run later
            add({**big, "method": "pca-uniform", "fingerprint": when[:10], "budget": "0.5000",
                             "task": task, "acc": value, "finished_at": when})
    df = report.load_results(out)
    assert len(df) == 4 and set(df["limit"]) == {"1000"}
    assert sorted(df[df.method == "pca-uniform"].acc) == [0.3, 0.3]
    assert "left out 6" in capsys.readouterr().err                          # a note, on stderr outside a notebook
    table = report.table1(df)
    assert table.loc[("50%", report.LABELS["pca-uniform"]), "% of 100%"] == pytest.approx(60.0)
    assert len(report.load_results(out, limit=25)) == 4
    with pytest.raises(ValueError, match="no cells run with limit 7"):
        report.load_results(out, limit=7)


def test_lora_accuracy_curve_uses_a_trajectorys_ranks_and_keys_rows_by_them(model, tokenizer, tmp_path,
                                                                              monkeypatch):
    """Notebook 06's accuracy rows: an adaptive label scores with the search's ranks (not uniform ones), its
    row is told apart from the uniform row of the same projections, stored rows are reused, and rows another
    process adds to the same CSV meanwhile are kept."""
    from helpers import random_projections
    from mkvlib.lora.accuracy import accuracy_curve, read_rows, results_store
    from mkvlib.search import SearchConfig, greedy_search

    (tmp_path / "arc_easy").mkdir()
    rows = [{"id": str(i), "question": r["q"], "answerKey": "ABC"[r["label"]],
             "choices": {"text": r["choices"], "label": list("ABC"[:len(r["choices"])])}} for i, r in
            enumerate(TINY_TASK)]
    for split in ("validation", "test"):
        (tmp_path / "arc_easy" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    proj = random_projections(model, seed=3)
    ids = torch.randint(2, 60, (2, 24), generator=torch.Generator().manual_seed(0))
    traj = greedy_search(model, proj, ids, SearchConfig(step=8, min_rank=4, tokens=48, seq_len=24, batch_size=2,
                                                        strategy="exact"), progress=False)
    seen = []
    real_attach = accuracy_curve.__globals__["attach"]

    def spy(m, p, ranks):
        seen.append(ranks)
        return real_attach(m, p, ranks)

    monkeypatch.setitem(accuracy_curve.__globals__, "attach", spy)
    out = tmp_path / "acc.csv"
    got = accuracy_curve(model, tokenizer, {"uniform": proj, "adaptive": proj}, [0.5], adapter="abc", task="arc_easy",
                         batch_size=4, out=out, progress=False, trajectories={"adaptive": traj})
    assert [r["projections"] for r in got] == ["uncompressed", "uniform", "adaptive"]
    assert seen[0] == 0.5 and torch.equal(seen[1], traj.ranks_at(0.5))
    assert got[1]["ranks"] == "uniform" and got[2]["ranks"].startswith("adaptive-")
    assert len(read_rows(out)) == 3 and all(r["items"] == 5 for r in got)
    again = accuracy_curve(model, tokenizer, {"uniform": proj, "adaptive": proj}, [0.5], adapter="abc",
                           task="arc_easy", out=out, progress=False, trajectories={"adaptive": traj})
    assert len(seen) == 2 and [r["acc"] for r in again] == [float(r["acc"]) for r in got]   # reused, not re-run
    # a second process sharing the CSV: its row, written while this one runs, is kept; no uncompressed cell
    other = {**got[0], "adapter": "other-process"}
    monkeypatch.setitem(accuracy_curve.__globals__, "attach",
                        lambda m, p, ranks: (results_store(out).add(other), spy(m, p, ranks))[1])
    more = accuracy_curve(model, tokenizer, {"uniform": proj}, [0.25], adapter="abc", task="arc_easy", out=out,
                          progress=False, uncompressed=False)
    assert [(r["projections"], r["budget"]) for r in more] == [("uniform", 0.25)] and seen[-1] == 0.25
    assert sorted((r["adapter"], r["budget"]) for r in read_rows(out)) == [
        ("abc", 0.25), ("abc", 0.5), ("abc", 0.5), ("abc", 1.0), ("other-process", 1.0)]
    with pytest.raises(KeyError, match="not among the projections"):
        accuracy_curve(model, tokenizer, {"uniform": proj}, [0.5], adapter="abc", trajectories={"other": traj})


def test_a_handful_of_items_is_labelled_a_pipeline_check_not_a_result(tmp_path):
    """Fast-mode numbers (a few items per task) say so on the table, the figure and `mkv lm-eval`'s output;
    a sweep of enough items is shown as a result."""
    import matplotlib.pyplot as plt

    from mkvlib.commands.lm_eval import labelled
    from mkvlib.lmeval import report
    from mkvlib.lmeval.sweep import results_store

    base = {"model": "m", "projections": "pca", "allocation": "uniform", "ranks": "uniform", "kv_budget": "0.5000",
            "acc_norm": "0.5", "batch_size": "8", "seconds": "1", "source": "local", "git_commit": "x", "lm_eval_version": "0.4",
            "finished_at": "2026-01-01T00:00:00"}
    for items in (4, report.RESULT_ITEMS):
        out = tmp_path / f"sweep_{items}.csv"
        add = results_store(out).add
        for method, fp, budget, acc in (("uncompressed", "none", "1.0000", "0.75"),
                                        ("pca-uniform", "a", "0.5000", "0.5")):
            add({**base, "method": method, "fingerprint": fp, "budget": budget, "task": "piqa",
                             "acc": acc, "items": str(items), "limit": str(items)})
        df = report.load_results(out)
        fig = report.accuracy_vs_budget(df)
        check = f"pipeline check ({items} items), not a result"
        if items < report.RESULT_ITEMS:
            assert report.caption(df) == check and report.table1(df).columns.name == check
            assert fig._suptitle is not None and fig._suptitle.get_text() == check
            assert labelled({"piqa_acc": 0.5}, [items]) == {"status": check, "piqa_acc": 0.5}
        else:
            assert report.caption(df) == f"result: piqa {items} items" and report.table1(df).columns.name == "task"
            assert fig._suptitle is None and labelled({"piqa_acc": 0.5}, [items]) == {"piqa_acc": 0.5}
        plt.close(fig)

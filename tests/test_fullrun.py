"""`mkv fullrun` rehearsed on the CPU with a tiny random model (hidden --tiny): every stage in float32 and
bfloat16, at most eight files, a failing check or stage stops the run and names it, a run whose time runs out
or that is interrupted still leaves what finished."""
import json
import os
import signal
import time

import pytest
import torch
from helpers import random_projections

from mkvlib.cli import main
from mkvlib.fullrun import clock
from mkvlib.fullrun.config import STAGES, WEIGHTS, FullRunConfig, parse_stages
from mkvlib.fullrun.context import FILES

pytest.importorskip("lm_eval")
pytest.importorskip("peft")


def _rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A data folder with four items of piqa, ARC-Easy (validation and test) and HellaSwag, in the shared data
    folder's layout (no training text: the tiny run trains on Python's documentation)."""
    root = tmp_path_factory.mktemp("data")
    _rows(root / "piqa" / "validation.jsonl", [{"goal": f"how do i open door {i}", "sol1": "use the key",
                                                 "sol2": "use the water", "label": i % 2} for i in range(4)])
    arc = [{"id": f"q{i}", "question": f"What colour is the sky {i}?", "answerKey": "ABCD"[i],
            "choices": {"text": ["blue", "green", "red", "black"], "label": ["A", "B", "C", "D"]}} for i in range(4)]
    _rows(root / "arc_easy" / "validation.jsonl", arc)
    _rows(root / "arc_easy" / "test.jsonl", arc)
    _rows(root / "hellaswag" / "validation.jsonl", [
        {"idx": i, "activity_label": "Roof", "ctx": "A man is on a roof. he", "query": "Roof: A man is on a roof. He",
         "choices": ["is using wrap.", "is ripping tiles off.", "is holding a cube.", "starts pulling."], "label": i}
        for i in range(4)])
    return root


@pytest.fixture
def data_env(tiny_data, monkeypatch):
    monkeypatch.setenv("MKV_DATA_DIR", str(tiny_data))
    return tiny_data


def fullrun(out, *extra):
    code = main(["fullrun", "--tiny", "--minutes", "5", "--out", str(out), *extra])
    summary = json.loads((out / "summary.json").read_text())
    return code, summary


def check_files(out):
    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= 8 and set(names) <= set(FILES.values()), names
    return names


@pytest.mark.parametrize("dtype,tasks", [("float32", "piqa,arc_easy,hellaswag"), ("bfloat16", "piqa")])
def test_every_stage_passes_on_a_tiny_model(data_env, tmp_path, capsys, dtype, tasks):
    out = tmp_path / "run"
    code, summary = fullrun(out, "--dtype", dtype, "--tasks", tasks, "--json")
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and printed["status"] == "passed" and summary["status"] == "passed"
    assert {s: r["status"] for s, r in summary["stages"].items()} == {s: "passed" for s in STAGES}
    assert summary["dtype"] == dtype and summary["profile"] == "tiny"
    assert check_files(out) == sorted(set(FILES.values()) - {"train.ckpt"})
    checks = summary["stages"]["smoke"]["checks"]
    assert set(checks) == {"exactness", "train_step", "search_step", "generation", "lmeval"}
    assert checks["generation"]["tokens"] == 4 and checks["lmeval"]["items_per_task"] == 3
    lmeval = summary["stages"]["lmeval"]
    assert lmeval["cells_run"] == len(tasks.split(",")) * 4 and not lmeval["cells_skipped_for_time"]
    kept = {(r["method"], r["budget"]): r.get("kept") for r in lmeval["table"]}
    assert set(kept) == {("uncompressed", 1.0)} | {(m, 0.5) for m in
                                                    ("pca-uniform", "trained-uniform", "trained-adaptive")}
    assert all(k is not None for k in kept.values())
    methods = ("PCA uniform", "trained uniform", "trained adaptive")
    assert set(summary["stages"]["suite"]["results"]) == {f"{m} @ {b}" for m in methods for b in (0.5, 0.375)}
    bench = json.loads((out / "bench.json").read_text())
    assert set(bench["probe"]) == {"dynamic", "static", "compressed@1", "compressed@0.5", "compressed@0.25"}
    assert bench["ratios"]["capacity_compressed@0.5_vs_static"] == pytest.approx(2.0, rel=0.01)
    assert summary["stages"]["lora"]["stage2"]["steps"] == 2


def test_lmeval_is_skipped_with_a_note_without_its_task_files(tmp_path, monkeypatch):
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("MKV_DATA_DIR", str(empty))
    out = tmp_path / "run"
    code, summary = fullrun(out, "--stages", "smoke,lmeval")
    assert code == 0 and summary["status"] == "partial"
    assert "task files missing" in summary["stages"]["smoke"]["checks"]["lmeval"]["skipped"]
    assert summary["stages"]["smoke"]["status"] == "passed"
    assert summary["stages"]["lmeval"]["status"] == "skipped"
    assert "piqa/validation.jsonl" in summary["stages"]["lmeval"]["note"]


def test_a_failing_smoke_check_stops_the_run_and_names_it(data_env, tmp_path, monkeypatch, capsys):
    from mkvlib.fullrun import smoke

    monkeypatch.setitem(smoke.TOLERANCE, torch.float32, -1.0)
    out = tmp_path / "run"
    code, summary = fullrun(out, "--stages", "smoke,train,search")
    err = capsys.readouterr().err
    assert code == 2 and "mkv fullrun: error: stage 'smoke' failed: full-rank exactness" in err
    assert summary["status"] == "failed" and summary["failed_stage"] == "smoke"
    assert summary["stages"]["smoke"]["status"] == "failed" and "exactness" in summary["stages"]["smoke"]["error"]
    assert [summary["stages"][s]["status"] for s in ("train", "search")] == ["not run", "not run"]
    assert check_files(out) == ["log.txt", "summary.json"]
    assert "Traceback" in (out / "log.txt").read_text()


def test_a_failing_later_stage_keeps_what_finished(data_env, tmp_path, monkeypatch, capsys):
    import mkvlib.search

    def broken(*args, **kwargs):
        raise ValueError("injected failure")

    monkeypatch.setattr(mkvlib.search, "evaluate_trajectory", broken)   # only the search stage calls it
    out = tmp_path / "run"
    code, summary = fullrun(out, "--stages", "smoke,train,search,suite", "--tasks", "piqa")
    assert code == 2 and "stage 'search' failed: ValueError: injected failure" in capsys.readouterr().err
    assert [summary["stages"][s]["status"] for s in ("smoke", "train", "search", "suite")] == \
        ["passed", "passed", "failed", "not run"]
    assert "train.safetensors" in check_files(out) and "trajectory.json" not in check_files(out)


def test_a_run_out_of_time_skips_later_stages_and_keeps_what_finished(data_env, tmp_path, monkeypatch):
    from mkvlib.fullrun import train

    offset = [0.0]
    monkeypatch.setattr(clock, "now", lambda: time.monotonic() + offset[0])
    real = train.run

    def train_then_time_is_up(ctx, deadline):
        result = real(ctx, deadline)
        offset[0] = 1e6
        return result

    monkeypatch.setattr(train, "run", train_then_time_is_up)
    out = tmp_path / "run"
    code, summary = fullrun(out, "--stages", "smoke,train,search,bench,lmeval", "--tasks", "piqa")
    assert code == 0 and summary["status"] == "partial"
    states = {s: r["status"] for s, r in summary["stages"].items()}
    assert states == {"smoke": "passed", "train": "passed", "search": "skipped", "bench": "skipped",
                      "lmeval": "skipped"}
    assert all("out of time" in summary["stages"][s]["note"] for s in ("search", "bench", "lmeval"))
    assert check_files(out) == ["figures.png", "log.txt", "summary.json", "train.safetensors"]


def test_an_interrupt_in_training_saves_the_checkpoint_and_projections(data_env, tmp_path, monkeypatch):
    from mkvlib.training import Trainer

    real = Trainer.train_step

    def step_then_interrupt(self):
        row = real(self)
        if self.checkpoint_path is not None and self.step == 2:    # the train stage's trainer, not smoke's
            os.kill(os.getpid(), signal.SIGTERM)                    # as a job's time limit would
        return row

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
    out, before = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    code, summary = fullrun(out, "--stages", "smoke,train,search", "--tasks", "piqa")
    assert code == 130 and summary["status"] == "interrupted"
    assert [summary["stages"][s]["status"] for s in ("smoke", "train", "search")] == \
        ["passed", "interrupted", "not run"]
    assert {"train.ckpt", "train.safetensors"} <= set(check_files(out))
    assert signal.getsignal(signal.SIGTERM) is before                      # the handler is put back


def test_time_shares_flow_to_later_stages_and_train_minutes_fix_trainings():
    budget = clock.Budget(10.0)
    left = budget.left()
    share = budget.share("lmeval", ["lmeval", "lora"])
    assert share == pytest.approx(left * WEIGHTS["lmeval"] / (WEIGHTS["lmeval"] + WEIGHTS["lora"]), rel=1e-3)
    assert budget.share("lora", ["lora"]) == pytest.approx(left, rel=1e-3)
    assert clock.Budget(10.0, train_minutes=6).share("train", list(STAGES[1:])) == pytest.approx(360.0)
    assert budget.share("smoke", list(STAGES)) == pytest.approx(left, rel=1e-3)


def test_retime_stretches_the_schedule_of_one_trainer():
    from mkvlib.fullrun.train import retime
    from mkvlib.models import tiny_model
    from mkvlib.training import TrainConfig, Trainer

    model = tiny_model("llama", heads=4, kv_heads=2)
    blocks = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    trainer = Trainer(model, random_projections(model), blocks, TrainConfig.fast(steps=4, warmup_steps=1))
    trainer.train(until=2)
    retime(trainer, 100)
    trainer.train(until=3)
    trainer.close()
    assert trainer.config.steps == 100 and trainer.history[-1]["lr"] > 0.9 * trainer.config.lr
    assert TrainConfig.fast().steps == 8                      # the class default is untouched


def test_config_and_output_folder_are_checked(tmp_path):
    assert parse_stages("lora,smoke") == ("smoke", "lora")
    with pytest.raises(ValueError, match="unknown stage"):
        parse_stages("smoke,trian")
    with pytest.raises(ValueError, match="train-minutes"):
        FullRunConfig(out=str(tmp_path), minutes=2, train_minutes=3)
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["fullrun", "--tiny", "--out", str(tmp_path)]) == 2
    assert main(["fullrun", "--tiny", "--out", str(tmp_path), "--overwrite"]) == 2   # never deletes others' files
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert len(FILES) <= 8


def test_gpu_capacity_search_lowers_the_batch_on_out_of_memory(monkeypatch):
    """The GPU branch of the benchmark, with the device faked: predicted batch, a fifth less per out-of-memory,
    the common batch from the full-width cache's largest, and the ratios."""
    from mkvlib.fullrun import bench
    from mkvlib.fullrun.config import PROFILES

    class Ctx:
        device, profile = torch.device("cuda"), PROFILES["gpu"]
        log = staticmethod(lambda message: None)

    def fake_measure(ctx, factory, batch, context, new_tokens):
        if batch > factory():
            raise torch.OutOfMemoryError("fake")
        return {"batch": batch, "decode_tokens_per_s": 10.0 * batch, "cache_bytes": batch, "peak_memory_bytes": batch}

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(bench, "free_memory", lambda device: 1000)
    caches = {"static": lambda: 600, "compressed@0.5": lambda: 1200}
    result = {"context": 8159, "new_tokens": 32, "capacity": {}, "common": {},
              "probe": {"static": {"batch": 16, "peak_memory_bytes": 16.0},
                        "compressed@0.5": {"batch": 16, "peak_memory_bytes": 8.0}}}
    bench.measure_capacity(Ctx(), caches, result, clock.now() + 60)
    assert result["capacity"]["static"]["max_batch"] == 576 and result["capacity"]["static"]["verified"]  # 900, 720
    assert result["capacity"]["compressed@0.5"]["max_batch"] == 1152                                      # 1800, 1440
    bench.measure_common(Ctx(), caches, result, clock.now() + 60)
    assert result["common"]["batch"] == 576 and result["common"]["rows"]["compressed@0.5"]["batch"] == 576
    ratios = bench.ratios(result)
    assert ratios["capacity_compressed@0.5_vs_static"] == 2.0 and ratios["decode_compressed@0.5_vs_static"] == 1.0

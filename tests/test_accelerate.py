"""Scale-out on accelerate: `mkv train` in two accelerate CPU processes trains the same projections (within 1e-5)
as one process with the same global batch, only the main process writes and prints, and a launch resumed from
a checkpoint of another ends exactly where an uninterrupted launch ends.

The processes come from ``accelerate launch --multi_gpu --num_processes 2`` (torchrun) running
tests/accelerate_worker.py, which makes each a CPU process and then runs the command line: accelerate 1.15's
``launch --cpu --num_processes 2`` starts a single process unless mpirun is set up. Each process starts Python,
torch and transformers; on a busy 2-core machine the test takes 20-60 s.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mkvlib.cli import main
from mkvlib.core.projections import Projections

pytest.importorskip("accelerate")
ACCELERATE = Path(sys.executable).with_name("accelerate")
WORKER = Path(__file__).with_name("accelerate_worker.py")
# What is compared: the rank-8 projectors, trained at that one rank, with a small learning rate. Rotations within
# the first 8 columns (or within the rest) leave the projector unchanged, so their gradient is zero up to
# rounding, and Adam turns rounding noise of either sign into steps of size lr: bases compared column by column
# differ by ~lr between any two runs that sum in another order (one batch of 4 or two of 2), and through the
# Cayley map those steps reach the projector at second order (~(steps x lr)^2 x d).
RANK = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(model_dir, out, batch):
    return ["train", "--model", str(model_dir), "--init", str(model_dir / "pca.safetensors"), "--corpus",
            "pydoc-train", "--tokens", "2048", "--seq-len", "32", "--batch", str(batch), "--steps", "4", "--warmup",
            "1", "--lr", "1e-4", "--schedule", str(RANK), "--eval-tokens", "0", "--out", str(out), "--json"]


def launch(args, **env) -> subprocess.CompletedProcess:
    """Run ``mkv ARGS`` in two accelerate CPU processes; the finished process, checked for success."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]), **env)
    proc = subprocess.run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(free_port()), str(WORKER), *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def projectors(bases: torch.Tensor) -> torch.Tensor:
    """U[:, :r] U[:, :r]^T per (layer, head): what compression at rank r computes with."""
    return bases[..., :RANK] @ bases[..., :RANK].transpose(-1, -2)


@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate command line is not installed beside Python")
def test_two_processes_train_what_one_process_trains_and_only_the_main_one_writes(
        tiny_model_folder, tmp_path, capsys):
    one = tmp_path / "one" / "p.safetensors"
    assert main(train_args(tiny_model_folder, one, batch=4)) == 0
    capsys.readouterr()
    two = tmp_path / "two" / "p.safetensors"
    proc = launch(train_args(tiny_model_folder, two, batch=2))
    printed = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1, proc.stdout                                 # only the main process reports
    assert sorted(p.name for p in two.parent.iterdir()) == ["p.ckpt", "p.json", "p.safetensors"]
    record = json.loads(two.with_suffix(".json").read_text())
    reference = json.loads(one.with_suffix(".json").read_text())
    assert record["hardware"]["processes"] == 2 and reference["hardware"]["processes"] == 1
    assert record["tokens_seen"] == reference["tokens_seen"] == 4 * 4 * 32
    init = Projections.load(tiny_model_folder / "pca.safetensors")
    a, b = Projections.load(one), Projections.load(two)
    assert (projectors(a.keys) - projectors(init.keys)).abs().max() > 1e-3   # training moved the subspaces
    torch.testing.assert_close(projectors(b.keys), projectors(a.keys), atol=1e-5, rtol=0)
    torch.testing.assert_close(projectors(b.values), projectors(a.values), atol=1e-5, rtol=0)


@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate command line is not installed beside Python")
def test_a_launch_resumed_from_a_checkpoint_ends_where_an_uninterrupted_one_ends(tiny_model_folder, tmp_path):
    straight = tmp_path / "straight" / "p.safetensors"
    args = train_args(tiny_model_folder, straight, batch=1) + ["--checkpoint-every", "2"]
    launch(args, MKV_TEST_KEEP_STEP="2")             # keeps the step-2 checkpoint: where an interruption leaves it
    interrupted = straight.with_suffix(".ckpt.step2")
    assert interrupted.is_file()
    resumed = tmp_path / "resumed" / "p.safetensors"
    proc = launch(train_args(tiny_model_folder, resumed, batch=1) + ["--checkpoint-every", "2", "--resume",
                                                                     str(interrupted)])
    assert "resumed from" in proc.stderr and "at step 2" in proc.stderr
    a, b = Projections.load(straight), Projections.load(resumed)
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    first, second = (json.loads(p.with_suffix(".json").read_text()) for p in (straight, resumed))
    assert [r["loss"] for r in first["history"]] == [r["loss"] for r in second["history"]]
    assert second["steps"] == 4 and second["tokens_seen"] == first["tokens_seen"] == 4 * 2 * 32

"""SIGTERM (a job's time limit) during training: a checkpoint of the last completed step, written atomically, a
clean stop with TrainingTerminated, the previous handler put back, and a resume that matches an unstopped run."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mkvlib.models import tiny_model
from mkvlib.core.pca import fit_pca
from mkvlib.core.stats import collect_kv_stats
from mkvlib.training import TrainConfig, Trainer, load_checkpoint
from mkvlib.training.trainer import TrainingTerminated, _defer_signals

ROOT = Path(__file__).resolve().parents[1]


def make_trainer(path, steps=5, checkpoint_every=0):
    model = tiny_model("llama", heads=4, kv_heads=2, seed=0)
    blocks = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(3))
    proj = fit_pca(collect_kv_stats(model, blocks[:4], progress=False))
    config = TrainConfig.fast(steps=steps, lr=2e-2, warmup_steps=1, schedule=(2, 8, 16),
                              checkpoint_every=checkpoint_every)
    return Trainer(model, proj, blocks, config, checkpoint_path=path)


def terminate_at(step):
    def callback(trainer, row):
        if trainer.step == step:
            os.kill(os.getpid(), signal.SIGTERM)     # as a scheduler's time limit would
    return callback


def test_sigterm_saves_the_last_step_stops_and_resumes_exactly(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    straight = make_trainer(tmp_path / "a.ckpt")
    straight.train()
    stopped = make_trainer(tmp_path / "b.ckpt")
    with pytest.raises(TrainingTerminated):
        stopped.train(callback=terminate_at(2))
    assert isinstance(TrainingTerminated(), KeyboardInterrupt)              # Ctrl-C handlers handle it too
    assert signal.getsignal(signal.SIGTERM) is before                      # the handler is put back
    assert stopped.step == 2 and load_checkpoint(tmp_path / "b.ckpt")["step"] == 2
    assert [f.name for f in tmp_path.iterdir() if f.suffix == ".tmp"] == []  # no half-written file left behind
    resumed = make_trainer(tmp_path / "b.ckpt").resume(tmp_path / "b.ckpt")
    resumed.train()
    assert resumed.step == straight.step == 5
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for name, p in straight.projector.named_parameters():
        assert torch.equal(p, dict(resumed.projector.named_parameters())[name]), name
    assert signal.getsignal(signal.SIGTERM) is before


def test_signals_wait_while_a_step_is_committed_or_a_checkpoint_written():
    done = []
    with pytest.raises(TrainingTerminated):
        with _defer_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("after the signal")                                 # the block runs to its end
    assert done == ["after the signal"]
    with pytest.raises(KeyboardInterrupt) as info:
        with _defer_signals():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("after Ctrl-C")
    assert done[-1] == "after Ctrl-C" and not isinstance(info.value, TrainingTerminated)


WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_trainer_sigterm import make_trainer
    from mkvlib.training.trainer import TrainingTerminated

    trainer = make_trainer({ckpt!r}, steps=100000, checkpoint_every=3)
    def ready(tr, row):
        if tr.step == 1:
            print("step 1", flush=True)
    try:
        trainer.train(callback=ready)
    except TrainingTerminated:
        print("terminated at", trainer.step, flush=True)
        sys.exit(143)
""")


def test_sigterm_from_outside_stops_a_training_process_with_a_loadable_checkpoint(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    code = WORKER.format(tests=str(ROOT / "tests"), ckpt=str(ckpt))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)
    try:
        first = proc.stdout.readline()
        assert first.strip() == "step 1", (first, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    stopped_at = int(out.split("terminated at")[1])
    assert stopped_at >= 1 and f"terminated (SIGTERM) at step {stopped_at}" in out + err
    assert load_checkpoint(ckpt)["step"] == stopped_at                      # whole, hash-checked, the last step


def test_the_command_line_driver_exits_143_after_sigterm_and_names_the_checkpoint(tmp_path, capsys):
    from mkvlib.commands.common import drive_trainer

    trainer = make_trainer(tmp_path / "c.ckpt")
    trainer.train = lambda: Trainer.train(trainer, callback=terminate_at(3))
    assert drive_trainer(trainer, None, tmp_path / "c.ckpt", "train") == 143
    assert "mkv train: terminated (SIGTERM); resume with --resume" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "c.ckpt")["step"] == 3
    assert trainer.compression._handle.removed                             # the trainer was closed

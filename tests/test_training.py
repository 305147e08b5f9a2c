"""Matryoshka training on tiny random models: orthogonality, exactness, learning, exact resume, clear errors."""
import json

import pytest
import torch

from mkvlib.core.compress import attach
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model
from mkvlib.core.pca import fit_pca
from mkvlib.core.stats import collect_kv_stats
from mkvlib.training import CheckpointError, TrainConfig, Trainer, load_checkpoint, save_checkpoint
from mkvlib.core.sampler import RankSampler, default_schedule
from mkvlib.core.checks import check_schedule
from mkvlib.core.loss import distill_loss

torch.set_num_threads(2)


def setup(seed=0, kv_heads=2, n=8, t=24):
    model = tiny_model("llama", heads=4, kv_heads=kv_heads, seed=seed)
    blocks = torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(3))
    proj = fit_pca(collect_kv_stats(model, blocks[:4], progress=False))
    return model, blocks, proj


def cfg(**kw):
    return TrainConfig.fast(**{"steps": 6, "lr": 2e-2, "warmup_steps": 1, **kw})


def test_projections_stay_orthogonal_and_move():
    model, blocks, proj = setup()
    trainer = Trainer(model, proj, blocks, cfg(schedule=(4, 8)))
    trainer.train()
    trained = trainer.result()
    assert trained.orthogonality_error() < 1e-5
    assert (trained.keys - proj.keys).abs().max() > 1e-4   # the bases did move
    assert trained.meta["kind"] == "trained" and trained.meta["training"]["steps"] == 6


def test_full_rank_is_exact_with_trained_projections(ids):
    model, blocks, proj = setup()
    trainer = Trainer(model, proj, blocks, cfg(schedule=(4,)))
    trainer.train()
    trainer.close()
    trained = trainer.result()
    with torch.no_grad():
        base = model(ids).logits
        with attach(model, trained, ranks=16):
            full = model(ids).logits
    torch.testing.assert_close(full, base, atol=2e-5, rtol=1e-5)


def _kl_at(model, proj, blocks, rank):
    with torch.no_grad():
        base = model(blocks).logits
        with attach(model, proj, ranks=rank):
            comp = model(blocks).logits
    return distill_loss(comp, base, blocks, kd_weight=1.0, lm_weight=0.0)[1]["kd"]


def test_loss_falls_on_a_tiny_model():
    model, blocks, proj = setup()
    trainer = Trainer(model, proj, blocks, cfg(steps=25, lr=3e-2, schedule=(4,), kd_weight=1.0, lm_weight=0.0))
    history = trainer.train()
    trainer.close()
    before, after = _kl_at(model, proj, blocks, 4), _kl_at(model, trainer.result(), blocks, 4)
    assert after < 0.7 * before, (before, after)
    first, last = sum(r["kd"] for r in history[:5]) / 5, sum(r["kd"] for r in history[-5:]) / 5
    assert last < first


def test_model_weights_frozen_and_extra_parameters_train():
    model, blocks, proj = setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    extra = {"norm": model.model.norm.weight}                      # stands in for a LoRA adapter's weights
    trainer = Trainer(model, proj, blocks, cfg(steps=3, kd_weight=0.0, lm_weight=1.0), extra_parameters=extra)
    trainer.train()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == ["model.norm.weight"]
    assert all("kd" not in row for row in trainer.history)        # KD off: no teacher pass


def _run(tmp_path, interrupt_at=None, resume=False):
    model, blocks, proj = setup()
    config = cfg(steps=6, grad_accum=2, schedule=(2, 8, 16), checkpoint_every=0)
    trainer = Trainer(model, proj, blocks, config, checkpoint_path=tmp_path / "run.ckpt")
    if resume:
        trainer.resume(tmp_path / "run.ckpt")

    def stop(tr, row):
        if tr.step == interrupt_at:
            raise KeyboardInterrupt

    trainer.train(callback=stop if interrupt_at else None)
    return trainer


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    straight = _run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", interrupt_at=3)
    assert load_checkpoint(tmp_path / "b" / "run.ckpt")["step"] == 3
    resumed = _run(tmp_path / "b", resume=True)
    assert resumed.step == straight.step == 6
    for name, p in straight.projector.named_parameters():
        assert torch.equal(p, dict(resumed.projector.named_parameters())[name]), name
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    assert torch.equal(resumed.sampler.generator.get_state(), straight.sampler.generator.get_state())


def test_truncated_or_corrupted_checkpoint_is_a_clear_error(tmp_path):
    model, blocks, proj = setup()
    trainer = Trainer(model, proj, blocks, cfg(steps=1))
    trainer.train()
    path = trainer.save(tmp_path / "ok.ckpt")
    raw = path.read_bytes()
    (tmp_path / "short.ckpt").write_bytes(raw[:-100])
    flipped = bytearray(raw)
    flipped[-50] ^= 0xFF
    (tmp_path / "flip.ckpt").write_bytes(bytes(flipped))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    for name, msg in [("short", "truncated"), ("flip", "corrupted"), ("junk", "not an mkv"), ("absent", "no checkpoint")]:
        with pytest.raises(CheckpointError, match=msg):
            Trainer(model, proj, blocks, cfg(steps=1)).resume(tmp_path / f"{name}.ckpt")
    with pytest.raises(CheckpointError, match="different settings"):
        Trainer(model, proj, blocks, cfg(steps=1, lr=1e-3)).resume(path)
    with pytest.raises(CheckpointError, match="other data"):
        Trainer(model, proj, blocks.flip(0), cfg(steps=1)).resume(path)


def test_checkpoint_roundtrip_keeps_every_value(tmp_path):
    state = {"a": torch.arange(5), "b": [1, 2.5, "x"], "c": {"d": None}}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "s.ckpt", state))
    assert torch.equal(loaded["a"], state["a"]) and loaded["b"] == state["b"] and loaded["c"] == state["c"]


@pytest.mark.parametrize("schedule,msg", [([], "empty"), ([0, 8], "outside"), ([8, 17], "outside"),
                                          ([4, 4], "repeats"), ("8", "list of ranks"), ([2.5], "whole"),
                                          (8, "list of ranks")])
def test_invalid_rank_schedule_is_a_clear_error(schedule, msg):
    with pytest.raises(ValueError, match=msg):
        check_schedule(schedule, 16)
    model, blocks, proj = setup()
    if not isinstance(schedule, (str, int)):
        with pytest.raises(ValueError, match=msg):
            Trainer(model, proj, blocks, cfg(schedule=schedule))


def test_sampler_draws_from_schedule_and_resumes_exactly():
    geom = KVGeometry(layers=3, heads=4, kv_heads=2, head_dim=64)
    assert default_schedule(64) == (8, 16, 24, 32, 40, 48, 56, 64)
    sampler = RankSampler(geom, (8, 32), seed=1)
    draws = torch.stack([sampler.sample() for _ in range(50)])
    assert draws.shape == (50, 3, 2, 2) and set(draws.unique().tolist()) == {8, 32}
    state = sampler.state_dict()
    again = RankSampler(geom, (8, 32), seed=99)
    again.load_state_dict(state)
    assert torch.equal(again.sample(), sampler.sample())
    with pytest.raises(ValueError, match="schedule"):
        RankSampler(geom, (8, 16)).load_state_dict(state)


def test_distill_loss_zero_kl_for_identical_logits_and_mask():
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    loss, parts = distill_loss(logits, logits, ids, kd_weight=1.0, lm_weight=0.0)
    assert abs(parts["kd"]) < 1e-6
    mask = torch.ones(2, 5)
    mask[1] = 0                                                     # second row is padding
    _, masked = distill_loss(logits, logits.flip(-1), ids, mask, kd_weight=1.0, lm_weight=1.0)
    _, first = distill_loss(logits[:1], logits.flip(-1)[:1], ids[:1], kd_weight=1.0, lm_weight=1.0)
    assert masked["kd"] == pytest.approx(first["kd"]) and masked["lm"] == pytest.approx(first["lm"])


def test_config_rejects_bad_fields():
    for bad in [dict(steps=0), dict(lr=-1.0), dict(kd_weight=0.0, lm_weight=0.0), dict(mixed_precision="fp8"),
                dict(eval_budgets=(0.0,))]:
        with pytest.raises(ValueError, match="TrainConfig"):
            TrainConfig(**bad)


def test_cli_refuses_the_evaluation_set(tmp_path, capsys):
    from mkvlib.cli import main

    assert main(["train", "--corpus", "wikitext2-test", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "evaluation set" in capsys.readouterr().err
    assert main(["train", "--schedule", "8,x", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert main(["train", "--out", str(tmp_path / "x.pt")]) == 2


def test_report_targets_and_reversed_columns():
    from mkvlib.training.report import reversed_columns, targets

    def rows(kl50, ppl50, ppl375):
        return [{"budget": 0.5, "kl_to_base": kl50, "perplexity_ratio": ppl50},
                {"budget": 0.375, "kl_to_base": 2 * kl50, "perplexity_ratio": ppl375}]

    got = targets({"PCA": rows(1.2, 3.4, 5.0), "trained": rows(0.3, 1.1, 1.4)})
    assert got["kl_vs_pca@50%"]["measured"] == pytest.approx(0.25) and got["kl_vs_pca@50%"]["met"]
    assert got["ppl_ratio@50%"]["met"] and not got["ppl_ratio@37.5%"]["met"]
    _, _, proj = setup()
    flipped = reversed_columns(proj)
    assert torch.equal(flipped.keys[..., 0], proj.keys[..., -1]) and flipped.orthogonality_error() < 1e-5


def test_runs_under_an_accelerate_accelerator(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    model, blocks, proj = setup()
    trainer = Trainer(model, proj, blocks, cfg(steps=2), accelerator=accelerate.Accelerator(cpu=True),
                      checkpoint_path=tmp_path / "acc.ckpt")
    trainer.train()
    assert trainer.step == 2 and load_checkpoint(tmp_path / "acc.ckpt")["step"] == 2


def test_periodic_evaluation_includes_the_starting_point():
    model, blocks, proj = setup()
    trainer = Trainer(model, proj, blocks, cfg(steps=2, eval_every=2, eval_budgets=(0.5,)), eval_blocks=blocks[:2])
    trainer.train()
    assert [e["step"] for e in trainer.evals] == [0, 2]
    assert trainer.evals[0]["rows"][0]["budget"] == 0.5


def test_cli_recall_span_trains_on_recall_blocks(tiny_model_folder, tmp_path, monkeypatch, capsys):
    """mkv train --recall-span N: every training block's last N tokens repeat an earlier span of it (the trainer is
    handed exactly recall_blocks of the plain blocks), the record says so, and a span that does not fit is a clear
    error before anything is written."""
    from mkvlib import training
    from mkvlib.cli import main
    from mkvlib.recall import recall_blocks

    seen = []
    real = training.Trainer.__init__

    def spy(self, model, projector, train_blocks, *a, **kw):
        seen.append(train_blocks.clone())
        real(self, model, projector, train_blocks, *a, **kw)

    monkeypatch.setattr(training.Trainer, "__init__", spy)
    args = ["train", "--model", str(tiny_model_folder), "--init", str(tiny_model_folder / "pca.safetensors"),
            "--corpus", "pydoc-train", "--tokens", "512", "--seq-len", "64", "--batch", "2", "--steps", "1",
            "--warmup", "1", "--eval-tokens", "0", "--json"]
    plain, recall = tmp_path / "plain.safetensors", tmp_path / "recall.safetensors"
    assert main(args + ["--out", str(plain)]) == 0
    assert main(args + ["--recall-span", "16", "--out", str(recall)]) == 0
    assert torch.equal(seen[1], recall_blocks(seen[0], 16, seed=0))
    assert not torch.equal(seen[1], seen[0])
    assert json.loads(recall.with_suffix(".json").read_text())["recall_span"] == 16
    capsys.readouterr()
    bad = tmp_path / "bad.safetensors"
    assert main(args + ["--recall-span", "40", "--out", str(bad)]) == 2
    assert "--recall-span" in capsys.readouterr().err
    assert not bad.exists() and not bad.with_suffix(".json").exists()


def test_activation_checkpointing_trains_the_same_projections_without_warnings():
    import warnings
    results = []
    for checkpointing in (False, True):
        model, blocks, proj = setup()
        trainer = Trainer(model, proj, blocks, cfg(steps=3, schedule=(4,), gradient_checkpointing=checkpointing))
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)   # no deprecated transformers call
            trainer.train()
            trainer.close()
        results.append(trainer.result())
    assert (results[1].keys - proj.keys).abs().max() > 1e-4
    torch.testing.assert_close(results[1].keys, results[0].keys, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[1].values, results[0].values, atol=1e-5, rtol=1e-4)


def test_tokens_kept_whole_in_training_leave_only_the_rest_to_learn():
    """keep_first/keep_recent: the trainer reads those tokens whole, as the cache will. With every token inside the
    recent window nothing is compressed, so the KD loss is 0 and the bases stay where they started; with a short
    window they move, and differently from a run that compresses every token."""
    model, blocks, proj = setup()
    everything = Trainer(model, proj, blocks, cfg(steps=2, schedule=(4,), keep_recent=blocks.shape[1]))
    history = everything.train()
    everything.close()
    assert max(abs(r["kd"]) for r in history) < 1e-6
    assert torch.allclose(everything.result().keys, proj.keys, atol=1e-6)
    runs = []
    for whole in (dict(), dict(keep_first=2, keep_recent=4)):
        trainer = Trainer(model, proj, blocks, cfg(steps=3, schedule=(4,), **whole))
        trainer.train()
        trainer.close()
        runs.append(trainer.result())
        assert trainer.config.to_dict()["keep_recent"] == whole.get("keep_recent", 0)
    assert (runs[1].keys - proj.keys).abs().max() > 1e-4
    assert (runs[1].keys - runs[0].keys).abs().max() > 1e-5
    for bad in (dict(keep_first=-1), dict(keep_recent=1.5)):
        with pytest.raises(ValueError, match="keep_"):
            TrainConfig(**bad)

"""LoRA with compressed KV (notebook 06): data masks, both stages, bundles, merging, mismatch errors."""
import json
from pathlib import Path

import pytest
import torch

from helpers import random_projections
from mkvlib.core.compress import attach
from mkvlib.lora import (BundleMismatchError, Example, LoRASettings, add_adapter, adapter_parameters, encode,
                         load_bundle, merge, save_bundle, stage1_config, stage1_trainer, stage2_config,
                         stage2_trainer, target_count, weights_hash)
from mkvlib.lora.data import arc_examples, instruction_examples
from mkvlib.models import tiny_model


class CharTokenizer:
    """A tokenizer stand-in for tiny models: one id per character."""
    eos_token_id, pad_token_id = 1, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) % 120 for c in text]}


def examples(n=48):
    return [Example(f"Q{i}: what is {i % 5}?\nA:", f" it is {i % 5}") for i in range(n)]


def lora_model(arch="llama", kv_heads=2, seed=0, randomise=True):
    model = tiny_model(arch, heads=4, kv_heads=kv_heads, seed=seed)
    peft_model = add_adapter(model, LoRASettings.fast())
    if randomise:   # a fresh adapter is the identity (B = 0): give it weight so the checks can fail
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in adapter_parameters(peft_model).values():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return peft_model


def test_mask_scores_exactly_the_responses():
    tok, exs = CharTokenizer(), examples(10)
    for pack in (True, False):
        ids, mask = encode(exs, tok, seq_len=64, pack=pack)
        assert ids.shape[1] == 64 and mask.shape == ids.shape
        assert target_count(mask) == sum(len(e.response) + 1 for e in exs)   # + eos
        scored = ids[:, 1:][(mask[:, 1:] * mask[:, :-1]).bool()]
        expected = torch.cat([torch.tensor(tok(e.response)["input_ids"] + [1]) for e in exs])
        assert torch.equal(scored, expected)
    packed, _ = encode(exs, tok, seq_len=64, pack=True)
    assert len(packed) < len(exs)
    _, every = encode(exs, tok, seq_len=64, loss_on="all")
    assert target_count(every) > target_count(mask)


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="reported on"):
        arc_examples("test")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="'prompt' and 'response'"):
        instruction_examples(bad)
    with pytest.raises(ValueError, match="does not fit"):
        encode([Example("q", "x" * 100)], CharTokenizer(), seq_len=32)


def test_choices_give_every_continuation_the_accuracy_compares(tmp_path, monkeypatch):
    """--choices data: one example per answer choice under the item's own prompt, the gold one among them
    (ARC from the data folder, and an lm-eval task through its own doc_to_choice); limit counts items."""
    from mkvlib.lora import load_examples

    (tmp_path / "arc_easy").mkdir()
    rows = [{"question": "What is hot?", "choices": {"text": ["ice", "fire", "snow"], "label": ["A", "B", "C"]},
             "answerKey": "B"},
            {"question": "What is wet?", "choices": {"text": ["water", "sand"], "label": ["1", "2"]}, "answerKey": "1"}]
    (tmp_path / "arc_easy" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "piqa").mkdir()
    piqa = [{"goal": "open a door", "sol1": "use the key", "sol2": "use water", "label": 0}]
    (tmp_path / "piqa" / "validation.jsonl").write_text(json.dumps(piqa[0]) + "\n")
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    gold = load_examples("arc_easy")
    every = load_examples("arc_easy", choices=True)
    assert [e.response for e in every] == [" ice", " fire", " snow", " water", " sand"]
    assert [e.prompt for e in every] == [gold[0].prompt] * 3 + [gold[1].prompt] * 2
    assert set(gold) <= set(every) and len(load_examples("arc_easy", limit=1, choices=True)) == 3
    mc = load_examples("piqa", choices=True)
    assert [e.response for e in mc] == [" use the key", " use water"]
    assert mc[0].prompt == mc[1].prompt and "open a door" in mc[0].prompt
    assert load_examples("piqa")[0] == mc[0]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Say hi.", "response": " hi"}) + "\n")
    with pytest.raises(ValueError, match="no answer choices"):
        load_examples(str(pairs), choices=True)


def test_stage1_trains_only_the_adapter_and_loss_falls():
    peft_model = lora_model(randomise=False)
    base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" not in n}
    ids, mask = encode(examples(), CharTokenizer(), seq_len=64)
    trainer = stage1_trainer(peft_model, ids, mask, stage1_config(steps=24, batch_size=4, lr=5e-3, warmup_steps=2,
                                                                  progress=False, checkpoint_every=0))
    hist = trainer.train()
    trainer.close()
    first, last = sum(r["loss"] for r in hist[:3]) / 3, sum(r["loss"] for r in hist[-3:]) / 3
    assert last < 0.9 * first, (first, last)
    assert torch.equal(trainer.projector.to_projections().keys, torch.eye(16).expand_as(trainer.projector.keys_init))
    for n, p in peft_model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n


def test_stage2_loss_falls_and_rotations_move():
    peft_model = lora_model()
    ids, mask = encode(examples(), CharTokenizer(), seq_len=64, loss_on="all")
    proj = random_projections(peft_model, seed=3)
    before = weights_hash(peft_model)
    trainer = stage2_trainer(peft_model, proj, ids, mask, stage2_config(
        steps=24, batch_size=4, lr=3e-2, warmup_steps=2, schedule=(4,), progress=False, checkpoint_every=0))
    hist = trainer.train()
    trainer.close()
    first, last = sum(r["loss"] for r in hist[:3]) / 3, sum(r["loss"] for r in hist[-3:]) / 3
    assert last < first, (first, last)
    trained = trainer.result()
    assert trained.fingerprint() != proj.fingerprint() and trained.orthogonality_error() < 1e-4
    assert weights_hash(peft_model) != before       # the adapter trained jointly


def test_bundle_round_trip_gives_the_same_logits(tmp_path, ids):
    peft_model = lora_model()
    proj = random_projections(peft_model, seed=4, value_mean=True)
    folder = save_bundle(tmp_path / "bundle", peft_model, proj, stage=2)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["projections_fingerprint"] == proj.fingerprint()
    assert manifest["adapter_weights_hash"] == weights_hash(peft_model)
    loaded, proj2, _ = load_bundle(folder, tiny_model("llama", heads=4, kv_heads=2, seed=0))
    assert proj2.fingerprint() == proj.fingerprint()
    with torch.no_grad(), attach(peft_model, proj, ranks=0.5):
        want = peft_model(ids).logits
    with torch.no_grad(), attach(loaded, proj2, ranks=0.5):
        got = loaded(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_merged_and_unmerged_models_agree_with_and_without_compression(ids):
    peft_model = lora_model()
    proj = random_projections(peft_model, seed=5, value_mean=True)
    with torch.no_grad():
        plain = peft_model(ids).logits
        with attach(peft_model, proj, ranks=0.375):
            compressed = peft_model(ids).logits
    with torch.no_grad():
        base_only = peft_model.get_base_model()
        with peft_model.disable_adapter():
            assert not torch.allclose(base_only(ids).logits, plain, atol=1e-3)   # the adapter matters
    merged = merge(peft_model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, plain, rtol=0, atol=1e-4)
        with attach(merged, proj, ranks=0.375):
            torch.testing.assert_close(merged(ids).logits, compressed, rtol=0, atol=1e-4)
    assert not torch.allclose(compressed, plain, atol=1e-3)   # compression is really on


def test_mismatched_adapter_is_a_clear_error(tmp_path):
    folder = save_bundle(tmp_path / "bundle", lora_model(), None, stage=1)
    with pytest.raises(BundleMismatchError, match="geometry"):
        load_bundle(folder, tiny_model("llama", heads=4, kv_heads=1))
    other = tiny_model("llama", heads=4, kv_heads=2)
    other.mkv_name = "some-other-model"
    with pytest.raises(BundleMismatchError, match="fine-tuned from"):
        load_bundle(folder, other)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["adapter_weights_hash"] = "0" * 16
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleMismatchError, match="weights do not match"):
        load_bundle(folder, tiny_model("llama", heads=4, kv_heads=2))
    with pytest.raises(FileNotFoundError, match="not an adapter bundle"):
        load_bundle(tmp_path, tiny_model("llama", heads=4, kv_heads=2))


def test_cli_stage2_needs_an_adapter(capsys):
    from mkvlib.cli import main

    assert main(["sft", "--stage", "2", "--out", "/tmp/never"]) == 2
    assert "needs --adapter" in capsys.readouterr().err


def test_load_merged_folds_the_adapter_in_and_names_it(tmp_path, ids):
    """What `mkv search/lm-eval --adapter` evaluate: the bundle's adapter merged into a fresh base model gives the
    fine-tuned logits, and the merged model carries the adapter's hash (results record it)."""
    from mkvlib.lora import load_merged

    peft_model = lora_model(seed=2)
    proj = random_projections(peft_model, seed=6)
    folder = save_bundle(tmp_path / "bundle", peft_model, proj, stage=2)
    with torch.no_grad():
        want = peft_model(ids).logits
    fresh = tiny_model("llama", heads=4, kv_heads=2, seed=2)
    with torch.no_grad():
        assert not torch.allclose(fresh(ids).logits, want, atol=1e-3)
    merged, own, manifest = load_merged(folder, fresh)
    assert merged.mkv_adapter == manifest["adapter_weights_hash"] == weights_hash(peft_model)
    assert merged.mkv_name == peft_model.mkv_name and own.fingerprint() == proj.fingerprint()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("argv,msg", [
    (["search", "--projections", "bundle", "--out", "t.json"], "give --adapter BUNDLE"),
    (["search", "--adapter", "/no/such/bundle", "--out", "t.json"], "not an adapter bundle"),
    (["sft", "--stage", "1", "--schedule", "24,32,40", "--out", "b"], "belong to stage 2"),
    (["sft", "--stage", "1", "--choices", "--out", "b"], "belong to stage 2"),
    (["sft", "--stage", "2", "--adapter", "a", "--choices", "--out", "b"], "pass --lm-weight 0"),
    (["sft", "--stage", "2", "--adapter", "a", "--choices", "--lm-weight", "0", "--kd-weight", "0", "--out", "b"],
     "pass --lm-weight 0"),
    (["sft", "--stage", "2", "--adapter", "a", "--schedule", "24,x", "--out", "b"], "comma-separated integers"),
])
def test_cli_adapter_options_fail_clearly_before_loading(argv, msg, capsys):
    from mkvlib.cli import main

    assert main(argv) == 2
    assert msg in capsys.readouterr().err


SHIPPED_LORA = Path(__file__).resolve().parents[1] / "data" / "lora"
COMMITTED_CSV = Path(__file__).resolve().parents[1] / "data" / "results" / "lora_arc_easy.csv"


def _csv(path, rows):
    from mkvlib.lora.accuracy import results_store

    results_store(path).write([{"model": "m", "task": "arc_easy", "acc_norm": r["acc"], "items": 4, "limit": 4,
                                "seconds": 1.0, "ranks": "uniform", **r} for r in rows])
    return path


def test_committed_rows_are_the_newest_cells_of_the_bundles_model(tmp_path):
    """Notebook 06 without the bundle's weights: the rows evaluate_bundle would give, read from the CSV (the
    bundle's adapter only, the newest row per cell, the bundle's own projections for a 'bundle' label)."""
    from mkvlib.lora import accuracy_table, committed_rows, keep_ratio, plot_accuracy

    peft_model = lora_model(seed=3)
    proj = random_projections(peft_model, seed=7)
    folder = save_bundle(tmp_path / "bundle", peft_model, proj, stage=2)
    mine, own = weights_hash(peft_model), proj.fingerprint()
    path = _csv(tmp_path / "acc.csv", [
        dict(adapter=mine, projections="uncompressed", fingerprint="uncompressed", budget=1.0, acc=0.60, ranks="full"),
        dict(adapter=mine, projections="two-stage", fingerprint=own, budget=0.5, acc=0.40),
        dict(adapter="other", projections="two-stage", fingerprint=own, budget=0.5, acc=0.10),        # another model
        dict(adapter=mine, projections="two-stage", fingerprint=own, budget=0.5, acc=0.45),           # newer: wins
        dict(adapter=mine, projections="two-stage", fingerprint="elsewhere", budget=0.5, acc=0.20),   # not its own
        dict(adapter=mine, projections="PCA", fingerprint="pca", budget=0.5, acc=0.30),
        dict(adapter=mine, projections="PCA", fingerprint="pca", budget=0.5, acc=0.33, limit=""),     # whole split
    ])
    rows = committed_rows(path, folder, {"PCA": "pca", "two-stage": "bundle"}, (0.5,), limit=4)
    assert [(r["projections"], r["budget"], r["acc"]) for r in rows] == [
        ("uncompressed", 1.0, 0.60), ("PCA", 0.5, 0.30), ("two-stage", 0.5, 0.45)]
    assert keep_ratio(rows, "two-stage", 0.5) == pytest.approx(0.75)
    assert "75.0%" in accuracy_table(rows)
    check = "pipeline check (4 items), not a result"          # 4 items: the table and the figure say what it is
    assert accuracy_table(rows).splitlines()[0] == check
    assert plot_accuracy(rows).axes[0].get_title().startswith(check)
    enough = [{**r, "items": 500} for r in rows]
    assert check not in accuracy_table(enough)
    assert plot_accuracy(enough).axes[0].get_title() == "fine-tuned model, 500 items"
    assert [r["acc"] for r in committed_rows(path, folder, ["two-stage"], (0.5,), limit=4)] == [0.60, 0.20]  # a list pins nothing
    assert len(committed_rows(path, folder, ["PCA"], (0.5,), limit=4, uncompressed=False)) == 1
    with pytest.raises(KeyError, match="no rows for"):
        committed_rows(path, folder, ["PCA"], (0.5, 0.25), limit=4)
    with pytest.raises(KeyError, match="no rows for"):        # no uncompressed row at the whole split
        committed_rows(path, folder, ["PCA"], (0.5,), limit=None)


def test_kept_table_pairs_each_run_with_its_own_uncompressed_row(tmp_path):
    """Notebook 06's discussion table: per named run the newest row at the budget over the same adapter's
    uncompressed row on the same items; ranks and item limit tell rows apart; a missing cell names the run."""
    from mkvlib.lora import kept_table, read_rows

    path = _csv(tmp_path / "acc.csv", [
        dict(adapter="m", projections="uncompressed", fingerprint="uncompressed", budget=1.0, acc=0.80, ranks="full"),
        dict(adapter="m", projections="p", fingerprint="f", budget=0.5, acc=0.40),
        dict(adapter="m", projections="p", fingerprint="f", budget=0.5, acc=0.60),                   # newer: wins
        dict(adapter="m", projections="p, adaptive", fingerprint="f", budget=0.5, acc=0.70, ranks="adaptive-1"),
        dict(adapter="m", projections="uncompressed", fingerprint="uncompressed", budget=1.0, acc=0.50, ranks="full",
             limit="", items=100),
        dict(adapter="m", projections="p", fingerprint="f", budget=0.5, acc=0.45, limit="", items=100),
    ])
    run = dict(adapter="m", fingerprint="f", ranks="uniform", limit="4")
    table = kept_table(read_rows(path), {"u": run, "a": {**run, "ranks": "adaptive"}, "all": {**run, "limit": ""}})
    assert table["kept at 50% (%)"].round(6).to_dict() == {"u": 75.0, "a": 87.5, "all": 90.0}
    assert table["items"].to_dict() == {"u": 4, "a": 4, "all": 100}
    with pytest.raises(KeyError, match="run 'x': no 50% row"):
        kept_table(read_rows(path), {"x": {**run, "fingerprint": "other"}})


def test_committed_csv_holds_every_cell_notebook_06_shows():
    from mkvlib.lora import committed_rows, keep_ratio

    for stage, labels in ((1, {"PCA": "pca", "general": "general"}),
                          (2, {"two-stage": "bundle", "two-stage, adaptive": "bundle"})):
        rows = committed_rows(COMMITTED_CSV, SHIPPED_LORA / f"arc_easy_stage{stage}", labels, (0.75, 0.625, 0.5), 500)
        assert len(rows) == 1 + 3 * len(labels) and {r["items"] for r in rows} == {500}
    assert keep_ratio(rows, "two-stage", 0.5) == pytest.approx(0.590 / 0.626)


def test_bundle_without_weights_says_how_to_get_them_back(tmp_path):
    """The committed bundles keep their records but not their weights (a small repository): loading one is a
    FileNotFoundError that names the commit holding them and the retraining command, after the model check."""
    import subprocess

    from mkvlib.lora import BundleWeightsMissingError, missing_weights
    from mkvlib.lora.bundle import weights_missing_error

    peft_model = lora_model(seed=4)
    folder = save_bundle(tmp_path / "bundle", peft_model, random_projections(peft_model, seed=8), stage=2,
                         command="mkv sft --stage 2 --adapter s1 --out bundle")
    (folder / "adapter" / "adapter_model.safetensors").unlink()
    assert missing_weights(folder) == ["adapter/adapter_model.safetensors"]
    with pytest.raises(BundleMismatchError, match="geometry"):          # the wrong model is still that error
        load_bundle(folder, tiny_model("llama", heads=4, kv_heads=1))
    with pytest.raises(BundleWeightsMissingError, match="mkv sft --stage 2 --adapter s1") as err:
        load_bundle(folder, tiny_model("llama", heads=4, kv_heads=2))
    assert isinstance(err.value, FileNotFoundError)

    for stage, files in ((1, ["adapter/adapter_model.safetensors"]),
                         (2, ["adapter/adapter_model.safetensors", "projections.safetensors"])):
        shipped = SHIPPED_LORA / f"arc_easy_stage{stage}"
        assert missing_weights(shipped) == files, "the committed bundles ship without their weights"
        for name in ("manifest.json", "training.json", "adapter/adapter_config.json"):
            assert (shipped / name).is_file(), name
        with pytest.raises(BundleMismatchError, match="geometry"):      # notebook 06 shows this one
            load_bundle(shipped, tiny_model("llama", heads=4, kv_heads=2))
        message = str(weights_missing_error(shipped, files, json.loads((shipped / "manifest.json").read_text())))
        assert "not shipped in the repository" in message and f"mkv sft --stage {stage}" in message
        for name in files:
            rel = f"data/lora/arc_easy_stage{stage}/{name}"
            line = next(x for x in message.splitlines() if f":{rel} > {rel}" in x)
            commit = line.split()[2].split(":")[0]
            have = subprocess.run(["git", "cat-file", "-e", f"{commit}:{rel}"], cwd=SHIPPED_LORA.parent.parent,
                                  capture_output=True)
            if have.returncode != 0 and subprocess.run(["git", "cat-file", "-t", commit], capture_output=True,
                                                       cwd=SHIPPED_LORA.parent.parent).returncode != 0:
                continue                                    # a checkout without that history: nothing to check
            assert have.returncode == 0, f"{commit} does not hold {rel}"

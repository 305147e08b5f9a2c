"""The trajectory's precomputed readout: measured on the out-of-domain suite (the mean over domains) or on one
corpus (the older files), and re-measured for an existing file by `mkv search --readout-only`."""
import json
import math

import pytest
import torch

from helpers import random_projections
from mkvlib import suite
from mkvlib.core.compress import attach
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model
from mkvlib.search import SearchConfig, evaluate_trajectory, greedy_search
from mkvlib.search.quality import allocation_ranks
from mkvlib.core.trajectory import SUITE_CORPUS, Trajectory, readout_label

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = SearchConfig(step=8, min_rank=4, tokens=48, seq_len=24, batch_size=2, strategy="proxy", proxy_refresh=0)
BUDGETS = [1.0, 0.5, 0.25]


class CharTok:
    """One token per character (code point mod 128, as the tiny model's vocabulary)."""

    pad_token_id = 0

    def __call__(self, text, **kw):
        return {"input_ids": [ord(c) % 128 for c in text]}


@pytest.fixture(scope="module")
def searched():
    model = tiny_model("llama", heads=4, kv_heads=2)
    proj = random_projections(model)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    traj = greedy_search(model, proj, ids, CFG, progress=False)
    torch.set_num_threads(before)
    return model, proj, traj


def domain_blocks(seq_len=24):
    g = torch.Generator().manual_seed(7)
    return {d: torch.randint(0, 128, (n, seq_len), generator=g) for d, n in (("alpha", 2), ("beta", 1))}


def test_suite_readout_stores_the_means_of_evaluate_suite(searched):
    model, proj, traj = searched
    blocks = domain_blocks()
    ev = evaluate_trajectory(model, proj, traj, blocks, BUDGETS, progress=False)
    assert ev["corpus"] == SUITE_CORPUS and ev["domains"] == ["alpha", "beta"]
    assert ev["tokens"] == 3 * 24 and ev["seq_len"] == 24 and traj.evaluations is ev
    geom = KVGeometry.of(model)
    specs = [allocation_ranks(traj, a, b, geom) for a in ("adaptive", "uniform") for b in BUDGETS]
    with attach(model, proj, 1.0) as comp:
        rows = suite.evaluate_suite(model, comp, specs, blocks, batch_size=CFG.batch_size)
    assert [(r["allocation"], r["budget"]) for r in ev["rows"]] == \
        [(a, b) for a in ("adaptive", "uniform") for b in BUDGETS]
    for i, stored in enumerate(ev["rows"]):
        mean = next(r for r in rows if r["domain"] == "mean" and r["setting"] == i)
        for key in suite.MEAN_KEYS:
            assert stored[key] == pytest.approx(mean[key], abs=2e-6), key
        domains = [r for r in rows if r["domain"] != "mean" and r["setting"] == i]
        for key in ("perplexity", "base_perplexity"):           # geometric means over the domains
            geo = math.exp(sum(math.log(r[key]) for r in domains) / len(domains))
            assert stored[key] == pytest.approx(geo, rel=1e-5), key
        assert stored["actual_budget"] == pytest.approx(mean["budget"], abs=1e-6)
        assert stored["actual_budget"] <= stored["budget"] + 1e-9
    quarter = [r for r in ev["rows"] if r["budget"] == 0.25]
    assert all(r["kl_to_base"] > 0 for r in quarter)
    assert all(abs(r["kl_to_base"]) < 1e-5 for r in ev["rows"] if r["budget"] == 1.0)
    q = traj.quality_at(0.25, "uniform")
    assert q["kl_to_base"] == pytest.approx(quarter[1]["kl_to_base"]) and not q["interpolated"]
    assert readout_label(ev) == "the out-of-domain suite (mean over 2 domains)"


def test_suite_readout_refuses_an_empty_suite_or_mixed_block_lengths(searched):
    model, proj, traj = searched
    with pytest.raises(ValueError, match="holds no domain"):
        evaluate_trajectory(model, proj, traj, {}, BUDGETS, progress=False)
    mixed = {"alpha": torch.zeros(1, 24, dtype=torch.long), "beta": torch.zeros(1, 12, dtype=torch.long)}
    with pytest.raises(ValueError, match="different lengths"):
        evaluate_trajectory(model, proj, traj, mixed, BUDGETS, progress=False)


def test_an_old_single_corpus_readout_still_loads_and_reads(searched, tmp_path):
    model, proj, traj = searched
    old = Trajectory(traj.model, traj.fingerprint, traj.geometry, traj.steps, dict(traj.meta))
    blocks = domain_blocks()["alpha"]
    ev = evaluate_trajectory(model, proj, old, blocks, BUDGETS, corpus="wikitext2-test", progress=False)
    assert set(ev) == {"corpus", "tokens", "seq_len", "rows"} and ev["corpus"] == "wikitext2-test"
    path = tmp_path / "old.trajectory.json"
    data = old.to_dict()
    path.write_text(json.dumps(data))                        # the format files had before the suite readout
    back = Trajectory.load(path)
    assert back.moves() == old.moves() and back.evaluations == json.loads(json.dumps(ev))
    q = back.quality_at(0.375)
    lo, hi = (next(r for r in ev["rows"] if r["allocation"] == "adaptive" and r["budget"] == b) for b in (0.25, 0.5))
    assert q["interpolated"] and min(lo["kl_to_base"], hi["kl_to_base"]) <= q["kl_to_base"] <= \
        max(lo["kl_to_base"], hi["kl_to_base"])
    assert readout_label(back.evaluations) == "wikitext2-test" and readout_label(None) == ""


# --- mkv search --readout-only ---------------------------------------------------------------------------------

@pytest.fixture
def readout_cli(searched, tmp_path, monkeypatch):
    """The CLI on the tiny model (its tokenizer: characters); the trajectory saved with a one-corpus readout."""
    import mkvlib.commands.search as command

    model, proj, traj = searched
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)          # the suite is then pydoc-test alone
    monkeypatch.setattr(command, "load_model_and_adapter", lambda args: (model, CharTok()))
    proj_path = proj.save(tmp_path / "proj.safetensors")
    path = tmp_path / "t.trajectory.json"
    saved = Trajectory(traj.model, traj.fingerprint, traj.geometry, traj.steps, dict(traj.meta))
    evaluate_trajectory(model, proj, saved, domain_blocks()["alpha"], BUDGETS, corpus="alpha", progress=False)
    saved.save(path)
    return path, proj_path, model


def test_readout_only_rewrites_only_the_evaluations(readout_cli, capsys):
    from mkvlib.cli import main

    path, proj_path, _ = readout_cli
    before = json.loads(path.read_text())
    assert main(["search", "--readout-only", str(path), "--projections", str(proj_path), "--eval-tokens", "48",
                 "--threads", "1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    after = json.loads(path.read_text())
    assert printed["readout"] == SUITE_CORPUS and printed["budgets"] == BUDGETS
    assert {k: v for k, v in after.items() if k not in ("evaluations", "meta")} == \
        {k: v for k, v in before.items() if k not in ("evaluations", "meta")}        # steps, fingerprint, geometry
    assert {k: v for k, v in after["meta"].items() if k != "readout"} == before["meta"]
    assert "seconds" in after["meta"]["readout"] and "command" in after["meta"]["readout"]
    ev = after["evaluations"]
    assert ev["corpus"] == SUITE_CORPUS and ev["domains"] == ["pydoc-test"] and ev["seq_len"] == CFG.seq_len
    assert ev["tokens"] == 48 and sorted({r["budget"] for r in ev["rows"]}) == sorted(BUDGETS)  # the file's grid
    assert Trajectory.load(path).quality_at(0.5)["kl_to_base"] >= 0


def test_readout_only_refuses_other_projections_and_leaves_the_file(readout_cli, tmp_path, capsys):
    from mkvlib.cli import main

    path, _, model = readout_cli
    other = random_projections(model, seed=1).save(tmp_path / "other.safetensors")
    before = path.read_bytes()
    assert main(["search", "--readout-only", str(path), "--projections", str(other), "--eval-tokens", "48"]) == 2
    err = capsys.readouterr().err
    assert "searched with projections" in err and "not with projections" in err
    assert path.read_bytes() == before
    assert main(["search", "--readout-only", str(tmp_path / "missing.json"), "--projections", str(other)]) == 2
    assert "no trajectory file" in capsys.readouterr().err


def test_search_without_out_or_readout_only_says_what_to_give(capsys):
    from mkvlib.cli import main

    assert main(["search"]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_fresh_search_reads_out_on_the_suite_by_default_or_on_one_corpus(searched, tmp_path, monkeypatch, capsys):
    import mkvlib.commands.search as command
    from mkvlib.cli import main

    model, _, _ = searched
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    monkeypatch.setattr(command, "load_model_and_adapter", lambda args: (model, CharTok()))
    proj_path = random_projections(model).save(tmp_path / "proj.safetensors")
    common = ["search", "--projections", str(proj_path), "--tokens", "48", "--seq-len", "24", "--batch-size", "2",
              "--step", "8", "--min-rank", "4", "--strategy", "proxy", "--proxy-refresh", "0", "--grid", "3",
              "--eval-tokens", "48", "--json"]
    assert main([*common, "--out", str(tmp_path / "suite.json")]) == 0
    ev = Trajectory.load(tmp_path / "suite.json").evaluations
    assert ev["corpus"] == SUITE_CORPUS and ev["domains"] == ["pydoc-test"] and ev["tokens"] == 48
    assert len(ev["rows"]) == 2 * 3 and ev["seq_len"] == 24
    assert main([*common, "--eval-corpus", "pydoc-test", "--out", str(tmp_path / "one.json")]) == 0
    one = Trajectory.load(tmp_path / "one.json").evaluations
    assert one["corpus"] == "pydoc-test" and "domains" not in one and one["tokens"] == 48
    # the same 48 tokens of pydoc-test: one domain's mean is that domain
    for a, b in zip(ev["rows"], one["rows"]):
        assert a["kl_to_base"] == pytest.approx(b["kl_to_base"], abs=2e-6)
        assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-5)
    capsys.readouterr()


def test_grid_0_searches_now_and_reads_out_later_at_another_block_length(searched, tmp_path, monkeypatch, capsys):
    """A long-block search skips its readout (--grid 0); --readout-only then measures it in shorter blocks."""
    import mkvlib.commands.search as command
    from mkvlib.cli import main

    model, _, _ = searched
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    monkeypatch.setattr(command, "load_model_and_adapter", lambda args: (model, CharTok()))
    proj_path = random_projections(model).save(tmp_path / "proj.safetensors")
    out = tmp_path / "long.json"
    assert main(["search", "--projections", str(proj_path), "--tokens", "96", "--seq-len", "48", "--batch-size", "1",
                 "--step", "8", "--min-rank", "4", "--strategy", "proxy", "--proxy-refresh", "0", "--grid", "0",
                 "--out", str(out), "--json"]) == 0
    traj = Trajectory.load(out)
    assert traj.evaluations is None and len(traj) > 0 and traj.meta["config"]["seq_len"] == 48
    assert main(["search", "--readout-only", str(out), "--projections", str(proj_path), "--seq-len", "24",
                 "--eval-tokens", "48", "--grid", "3", "--json"]) == 0
    ev = Trajectory.load(out).evaluations
    assert ev["seq_len"] == 24 and len(ev["rows"]) == 2 * 3 and Trajectory.load(out).steps == traj.steps
    capsys.readouterr()

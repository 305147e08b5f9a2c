"""Varied retrieval prompts (mkvlib.retrieval.varied_prompt): wordings, 5-7 digit keys, a decoy, prose filler;
one prefill giving both the greedy answer and the key's log-probability; the --methods NAME@BUDGETS syntax."""
import argparse

import pytest
import torch
from helpers import needs_model, random_projections, CharTok

from mkvlib import retrieval
from mkvlib.core.compress import attach



@pytest.fixture
def offline(monkeypatch):
    """No data folder: the filler falls back to Python's documentation."""
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)


def test_exact_length_key_once_decoy_differs(offline):
    tok = CharTok()
    for seed in range(8):
        p = retrieval.varied_prompt(tok, 3000, seed)
        again = retrieval.varied_prompt(tok, 3000, seed)
        assert torch.equal(p.ids, again.ids) and p.key == again.key and p.decoy == again.decoy
        assert 3000 - 40 < p.ids.shape[1] <= 3000, "within one filler word of the length asked"
        assert 5 <= len(p.key) <= 7 and p.key.isdigit() and len(p.decoy) == len(p.key) and p.decoy != p.key
        assert p.text.count(p.key) == 1 and p.text.count(p.decoy) == 1
        wording = retrieval.WORDINGS[p.wording]
        assert p.text.endswith(wording.answer_prefix) and wording.question in p.text
        assert wording.needle.format(key=p.key) in p.text and wording.decoy.format(decoy=p.decoy) in p.text
        assert p.depth != p.decoy_depth and 0 <= p.depth <= 1 and 0 <= p.decoy_depth <= 1


def test_wordings_keys_and_filler_vary_across_seeds(offline):
    prompts = retrieval.varied_prompts(CharTok(), 2000, n=12)
    assert len({p.wording for p in prompts}) >= 3
    assert len({len(p.key) for p in prompts}) >= 2 and len({p.key for p in prompts}) == 12
    starts = {p.text[p.text.index("\n\n") + 2:][:80] for p in prompts}
    assert len(starts) >= 10, "each prompt cuts its filler from another passage"


def test_no_data_folder_falls_back_and_says_so(offline, tmp_path, monkeypatch):
    p = retrieval.varied_prompt(CharTok(), 1500, 0)
    assert p.filler_source.startswith("pydoc-test (no data folder") and "unset" in p.filler_source
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))                      # a folder without the books
    assert retrieval.varied_prompt(CharTok(), 1500, 0).filler_source.startswith("pydoc-test")


def test_too_short_and_unknown_family_are_clear_errors(offline):
    with pytest.raises(ValueError, match="needs more than"):
        retrieval.varied_prompt(CharTok(), 100, 0)
    with pytest.raises(ValueError, match="unknown prompt family"):
        retrieval.build_prompts("haystack", CharTok(), 1000)


@needs_model
def test_real_tokenizer_fits_256_and_8192(offline):
    """The fast form of `mkv reproduce` shrinks --lengths to 256; the model's window is 8192."""
    from mkvlib.models import load_model

    _, tok = load_model()
    for length in (256, 8192):
        for p in retrieval.varied_prompts(tok, length, n=2):
            assert length - 8 < p.ids.shape[1] <= length and p.text.count(p.key) == 1
            assert retrieval.answer_ids(tok, p).numel() >= 1


@torch.no_grad()
def test_one_prefill_matches_generate_and_key_margins(llama, one_thread, offline):
    tok = CharTok()
    prompts = retrieval.varied_prompts(tok, 600, n=3)
    proj = random_projections(llama, 1)
    for ranks in (None, 0.5):
        comp = attach(llama, proj, ranks) if ranks else None
        try:
            margins = retrieval.key_margins(llama, prompts, tok)
            for i, p in enumerate(prompts):
                got = retrieval.answer_and_margin(llama, p, tok, max_new_tokens=5)
                assert got["answer"] == retrieval.generate_answer(llama, p, tok, max_new_tokens=5)
                assert got["key_logp"] == pytest.approx(margins["key_logp"][i], abs=2e-3)
                assert got["first_margin"] == pytest.approx(margins["first_margin"][i], abs=2e-3)
        finally:
            if comp is not None:
                comp.detach()


def test_scores_count_exact_match_and_decoys(offline, monkeypatch):
    prompts = retrieval.varied_prompts(CharTok(), 1000, n=4)
    replies = iter([f" {prompts[0].key}.", f" {prompts[1].decoy}", " 123", f" {prompts[3].key}"])
    monkeypatch.setattr(retrieval, "answer_and_margin", lambda *a, **k: {
        "answer": next(replies), "key_logp": -1.0, "first_margin": 0.0, "top": " "})
    out = retrieval.score_prompts(None, prompts, CharTok())
    assert (out["correct"], out["n"], out["decoys"], out["mean_key_logp"]) == (2, 4, 1, -1.0)


def test_methods_with_their_own_budgets():
    args = argparse.Namespace(methods="trained:adaptive,trained:uniform@0.5/0.375", trajectory=None,
                              keep_first=0, keep_recent=0)
    methods, own = retrieval._parse_methods(args)
    assert [m.allocation for m in methods] == ["adaptive", "uniform"] and list(own.values()) == [[0.5, 0.375]]
    with pytest.raises(SystemExit, match="must be numbers"):
        retrieval._parse_methods(argparse.Namespace(**{**vars(args), "methods": "trained:uniform@half"}))


def test_a_method_with_its_own_trajectory_is_named_by_what_it_protects(tmp_path):
    from mkvlib.core.trajectory import Trajectory

    path = tmp_path / "p.trajectory.json"
    Trajectory("m", "f" * 16, (1, 1, 16), [(0, 0, 1, 8, 0.1, 0.75)], {"protected": {"top": 4}}).save(str(path))
    args = argparse.Namespace(methods=f"trained:adaptive,trained:adaptive:{path}@0.5", trajectory=None,
                              keep_first=0, keep_recent=0)
    methods, own = retrieval._parse_methods(args)
    assert [m.trajectory for m in methods] == [None, str(path)]
    assert methods[1].name.endswith("adaptive, 4 retrieval heads whole") and own == {methods[1].name: [0.5]}
    for bad in ("trained:uniform:x.json", "trained:adaptive:a:b"):
        with pytest.raises(SystemExit, match="TRAJECTORY"):
            retrieval._parse_methods(argparse.Namespace(**{**vars(args), "methods": bad}))


def test_a_trajectory_searched_on_recall_blocks_is_named_by_their_length(tmp_path):
    from mkvlib.core.trajectory import Trajectory

    path = tmp_path / "r.trajectory.json"
    meta = {"config": {"recall_span": 256, "seq_len": 8192}}
    Trajectory("m", "f" * 16, (1, 1, 16), [(0, 0, 1, 8, 0.1, 0.75)], meta).save(str(path))
    args = argparse.Namespace(methods=f"trained:adaptive:{path}", trajectory=None, keep_first=0, keep_recent=0)
    assert retrieval._parse_methods(args)[0][0].name == "MatryoshkaKV, adaptive, searched on 8,192-token recall blocks"

"""Retrieval heads and the protected rank search: the attention mass is the model's own attention, protected
entries never move, and bad input is refused with a clear error."""
import json

import pytest
import torch

from helpers import CharTok
from mkvlib import retrieval
from mkvlib.core.geometry import KVGeometry
from mkvlib.core.pca import fit_pca
from mkvlib.core.rules import Rules
from mkvlib.core.stats import collect_kv_stats
from mkvlib.models import tiny_model
from mkvlib.retrieval_heads import (head_scores, key_attention, key_positions, load_protected, protected_entries,
                                    ranked_heads)
from mkvlib.search import SearchConfig, greedy_search

pytestmark = pytest.mark.usefixtures("one_thread")


class OffsetTok(CharTok):
    """CharTok with the character offsets a fast tokenizer gives."""

    def __call__(self, text, return_offsets_mapping=False, **kw):
        out = super().__call__(text)
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out


@pytest.mark.parametrize("layout", [dict(heads=4, kv_heads=2), dict(heads=4, kv_heads=1)])
def test_key_attention_is_the_models_own_attention(layout):
    model = tiny_model("llama", layers=2, **layout)
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(1))
    rows, cols = torch.tensor([12, 15, 19]), torch.tensor([3, 4, 5])
    mass = key_attention(model, ids, rows, cols)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model(ids, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation("sdpa")
    want = torch.stack([a[0][:, rows][:, :, cols].sum(-1).mean(-1) for a in att]).double()
    assert mass.shape == (2, 4)
    assert torch.allclose(mass, want, atol=1e-5)
    assert (mass > 0).all() and (mass < 1).all()


def test_key_positions_cover_the_key_in_the_context():
    tok = OffsetTok()
    p = retrieval.passkey_prompts(tok, 400, n=1, seed=1)[0]
    pos = key_positions(tok, p)
    assert tok.decode(p.ids[0, pos].tolist()) == p.key
    with pytest.raises(ValueError, match="offsets"):
        key_positions(CharTok(), p)


def test_head_scores_rank_the_heads_and_leave_the_model_as_it_was():
    tok = OffsetTok()
    model = tiny_model("llama", heads=4, kv_heads=2, layers=2)
    prompts = retrieval.passkey_prompts(tok, 320, n=2, seed=1)
    before = model(prompts[0].ids, use_cache=False).logits
    scores = head_scores(model, tok, prompts)
    assert scores.shape == (2, 2) and (scores > 0).all()
    assert torch.equal(model(prompts[0].ids, use_cache=False).logits, before)
    heads = ranked_heads(scores)
    assert [h["score"] for h in heads] == sorted((h["score"] for h in heads), reverse=True)
    assert heads[0]["score"] == pytest.approx(float(scores.max()), abs=1e-6)
    entries = protected_entries(heads, 1)
    assert entries == ((heads[0]["layer"], heads[0]["kv_head"], 0), (heads[0]["layer"], heads[0]["kv_head"], 1))
    for bad in (-1, 5, 1.5, True):
        with pytest.raises(ValueError, match="protect"):
            protected_entries(heads, bad)


def test_load_protected_reads_the_file_or_says_what_is_wrong(tmp_path):
    heads = [{"layer": 1, "kv_head": 0, "score": 0.5}, {"layer": 0, "kv_head": 1, "score": 0.2}]
    good = tmp_path / "heads.json"
    good.write_text(json.dumps({"heads": heads}))
    assert load_protected(str(good), 2) == ((1, 0, 0), (1, 0, 1), (0, 1, 0), (0, 1, 1))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_protected(str(tmp_path / "bad.json"), 1)
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="retrieval-heads"):
        load_protected(str(tmp_path / "other.json"), 1)
    with pytest.raises((FileNotFoundError, ValueError), match="retrieval-heads"):
        load_protected(str(tmp_path / "missing.json"), 1)


@pytest.mark.parametrize("strategy", ["exact", "proxy"])
def test_protected_entries_never_move_and_the_rest_reach_the_floor(strategy):
    model = tiny_model("llama", heads=4, kv_heads=2, layers=3)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))
    proj = fit_pca(collect_kv_stats(model, ids, 2, progress=False, model_name=model.mkv_name, positions="start"),
                   model_name=model.mkv_name)
    cfg = SearchConfig(step=8, min_rank=4, tokens=48, seq_len=24, batch_size=2, strategy=strategy, positions="start")
    free = greedy_search(model, proj, ids, cfg, progress=False)
    first = tuple(free.steps[0][:3])                      # the free search's first choice, protected below
    keep = (first, (2, 1, 1))
    traj = greedy_search(model, proj, ids, cfg.with_(protect=keep), progress=False)
    traj.validate()
    assert all(tuple(s[:3]) not in keep for s in traj.steps)
    for n in range(len(traj) + 1):
        ranks = traj.ranks_after(n)
        assert all(int(ranks[e]) == 16 for e in keep)
    final = traj.ranks_after(len(traj))
    others = [e for e in KVGeometry.of(model).entries() if e not in keep]
    assert all(int(final[e]) == 4 for e in others)
    assert traj.final_budget == pytest.approx((2 * 16 + len(others) * 4) / (16 * 12))
    assert [list(e) for e in traj.meta["config"]["protect"]] == [list(e) for e in keep]


def test_bad_protected_entries_are_refused():
    for bad in ([(0, 0, 2)], [(0, 0)], [(-1, 0, 0)], "0,0,0", [(0, 0.5, 1)]):
        with pytest.raises(ValueError, match="protect"):
            SearchConfig(protect=bad)
    with pytest.raises(ValueError, match="not .layer, KV head, kind. entries"):
        Rules(KVGeometry(2, 4, 2, 16), 8, 4, fixed=[(5, 0, 0)])

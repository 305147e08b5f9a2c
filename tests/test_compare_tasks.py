"""The comparison bench's generated tasks (mkvlib.compare.tasks): reproducible per seed, the answer in the context
exactly once, and solvable by reading the context (an oracle that follows the text finds the answer)."""
import re

import pytest
import torch

from mkvlib.compare import tasks
from mkvlib.retrieval import FILLER
from test_suite import CharTok, ChatTok

TOKS = [CharTok(), ChatTok()]
TOK_IDS = ["plain", "chat"]


@pytest.mark.parametrize("tok", TOKS, ids=TOK_IDS)
@pytest.mark.parametrize("task", tasks.RETRIEVAL_TASKS)
def test_items_reproducible_per_seed_and_fit_the_length(task, tok):
    items = tasks.make_items(task, tok, 1500, n=5, seed=2)
    again = tasks.make_items(task, tok, 1500, n=5, seed=2)
    other = tasks.make_items(task, tok, 1500, n=5, seed=3)
    unit = len(FILLER) + 1
    for a, b in zip(items, again):
        assert torch.equal(a.ids, b.ids) and a.answer == b.answer and a.text == b.text and a.meta == b.meta
        assert a.ids.shape[0] == 1 and 1500 - unit < a.ids.shape[1] <= 1500
        assert a.ids[0].tolist() == tok(a.text)["input_ids"]
        assert a.task == task and a.length == 1500
    assert [i.answer for i in items] != [i.answer for i in other]
    assert len({i.answer for i in items}) == 5 and len({i.meta["depth"] for i in items}) == 5
    assert ("<|assistant|>" in items[0].text) == isinstance(tok, ChatTok)


@pytest.mark.parametrize("task", tasks.RETRIEVAL_TASKS)
def test_answer_occurs_exactly_once(task):
    for length in (600, 3000):
        for it in tasks.make_items(task, ChatTok(), length, n=12, seed=5):
            assert it.answer.isdigit() and it.text.count(it.answer) == 1
            assert len(re.findall(rf"(?<!\d){it.answer}(?!\d)", it.text)) == 1


def _niah_oracle(text: str) -> str:
    """Read the asked word from the question, then its needle's number."""
    word = re.search(r"special magic number for (\w+)\? Answer", text).group(1)
    return re.search(rf"The special magic number for {word} is (\d+)\.", text).group(1)


def _vt_oracle(text: str) -> str:
    """Follow the assignments back from the asked variable until a number."""
    name = re.search(r"What is the value of (\w+)\? Answer", text).group(1)
    for _ in range(10):
        value = re.search(rf"(?<![A-Z]){name} = (\w+)\.", text).group(1)
        if value.isdigit():
            return value
        name = value
    raise AssertionError("the chain does not end in a number")


@pytest.mark.parametrize("task,oracle", [("niah", _niah_oracle), ("vt", _vt_oracle)])
def test_solvable_by_reading_the_context(task, oracle):
    for it in tasks.make_items(task, ChatTok(), 2000, n=10, seed=1):
        assert oracle(it.text) == it.answer


def test_vt_has_a_distractor_chain_and_longer_chains():
    it = tasks.vt_item(CharTok(), 2000, 0, hops=3, distractors=2)
    assert len(re.findall(r"\b[A-Z]{5} = \d{5}\.", it.text)) == 3             # the asked chain and two distractors
    assert len(re.findall(r"\b[A-Z]{5} = [A-Z]{5}\.", it.text)) == 3 * 3      # three hops each
    assert _vt_oracle(it.text) == it.answer and it.meta["hops"] == 3
    with pytest.raises(ValueError, match="at least one hop"):
        tasks.vt_item(CharTok(), 2000, 0, hops=0)


def test_niah_has_several_needles_and_depth_says_where():
    it = tasks.niah_item(CharTok(), 4000, 0, keys=5)
    assert len(re.findall(r"The special magic number for \w+ is \d{7}\.", it.text)) == 5
    found = [tasks.niah_item(CharTok(), 4000, i) for i in range(30)]
    early = next(i for i in found if i.meta["depth"] < 0.2)
    late = next(i for i in found if i.meta["depth"] > 0.8)
    assert early.text.index(early.answer) / len(early.text) < 0.3 < 0.7 < late.text.index(late.answer) / len(late.text)


def test_score_item_exact_match():
    it = tasks.passkey_item(CharTok(), 600, 0)
    assert tasks.score_item(f" {it.answer}.", it)
    assert not tasks.score_item(f" {it.answer}1", it) and not tasks.score_item(f" {it.answer[:-1]}", it)
    assert not tasks.score_item(" none", it) and not tasks.score_item(f" 1 and {it.answer}", it)


def test_ppl_items_cycle_domains_without_the_data_folder(monkeypatch):
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    items = tasks.make_items("ppl", CharTok(), 400, n=3, seed=0)
    assert [i.meta["domain"] for i in items] == ["pydoc-test"] * 3
    assert [i.meta["block"] for i in items] == [0, 1, 2]
    assert all(i.ids.shape == (1, 400) and i.answer == "" for i in items)
    again = tasks.make_items("ppl", CharTok(), 400, n=3, seed=0)
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(items, again))
    assert not torch.equal(items[0].ids, items[1].ids)
    shifted = tasks.make_items("ppl", CharTok(), 400, n=2, seed=1)
    assert torch.equal(shifted[0].ids, items[1].ids)


def test_bad_requests_say_what_to_do():
    with pytest.raises(ValueError, match="unknown task 'qa'"):
        tasks.make_items("qa", CharTok(), 1000, 2)
    with pytest.raises(ValueError, match="at least 1"):
        tasks.make_items("niah", CharTok(), 1000, 0)
    with pytest.raises(ValueError, match="needs more than"):
        tasks.make_items("vt", CharTok(), 100, 1)
    with pytest.raises(ValueError, match="length must exceed"):
        tasks.make_items("ppl", CharTok(), 100, 1)

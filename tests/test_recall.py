"""Recall blocks: the tail repeats an early span of the same block, and the search calibrates on them when asked."""
import pytest
import torch

from mkvlib.recall import recall_blocks
from mkvlib.search import SearchConfig


def test_tail_repeats_an_early_span_and_the_rest_is_untouched():
    blocks = torch.arange(4 * 64).reshape(4, 64)          # every token distinct: a copy can only come from the source
    out = recall_blocks(blocks, span=8, seed=3)
    assert out.shape == blocks.shape and torch.equal(blocks, torch.arange(4 * 64).reshape(4, 64))
    assert torch.equal(out[:, :56], blocks[:, :56])
    for row in range(4):
        start = int(out[row, 56] - blocks[row, 0])
        assert 0 <= start <= 16                             # the source lies in the first quarter
        assert torch.equal(out[row, 56:], blocks[row, start:start + 8])
    assert torch.equal(out, recall_blocks(blocks, span=8, seed=3))                    # deterministic per seed
    assert not torch.equal(out, recall_blocks(blocks, span=8, seed=4))


@pytest.mark.parametrize("span, match", [(0, "positive"), (40, "does not fit"), (True, "positive")])
def test_bad_spans_are_refused_with_what_to_do(span, match):
    with pytest.raises(ValueError, match=match):
        recall_blocks(torch.zeros(2, 64, dtype=torch.long), span=span)


def test_search_config_checks_the_span_as_recall_blocks_do():
    # 256-token blocks: the source lies in the first 64 tokens, so at most (256 - 64) // 2 = 96 tokens fit twice
    assert SearchConfig(seq_len=256, tokens=256, recall_span=96).recall_span == 96
    recall_blocks(torch.zeros(1, 256, dtype=torch.long), span=96)          # what the configuration takes, runs
    for span in (97, 128, 129):
        with pytest.raises(ValueError, match="does not fit twice"):
            SearchConfig(seq_len=256, tokens=256, recall_span=span)
    with pytest.raises(ValueError, match="recall_span"):
        SearchConfig(recall_span=-1)


def test_search_calibrates_on_recall_blocks_when_asked(llama):
    from mkvlib.search import greedy_search

    from helpers import random_projections

    proj = random_projections(llama)
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, llama.config.vocab_size, (2, 64), generator=gen)
    base = SearchConfig.fast(step=4, min_rank=4, seq_len=64, tokens=128, stop_budget=0.5)
    plain = greedy_search(llama, proj, blocks, base, progress=False)
    recall = greedy_search(llama, proj, blocks, base.with_(recall_span=16), progress=False)
    assert recall.meta["config"]["recall_span"] == 16 and plain.meta["config"]["recall_span"] == 0
    assert plain.meta["calibration_tokens"] == recall.meta["calibration_tokens"]
    # the search scored the steps on the recall blocks (the KL recorded with each step changes)
    assert [s[4] for s in plain.steps] != [s[4] for s in recall.steps]

"""Recall blocks: calibration text that asks attention to find something far back.

Ordinary calibration blocks are judged position by position on text whose next token mostly depends on the last
few hundred tokens, so a rank search calibrated on them learns nothing about long-range lookup: it strips the
dimensions that carry a token's identity across thousands of positions (the early layers' values, in practice),
and passkey retrieval breaks although perplexity barely moves. A *recall block* is an ordinary block of training
text whose last ``span`` tokens repeat, verbatim, a span from near its start: to predict the repeat the model must
find the earlier copy and carry its tokens over, the mechanism every retrieval task relies on. The KL to the
uncompressed model on such blocks therefore rises when a compression breaks lookup.

The text is the calibration mixture itself (never the evaluation suite, never a benchmark's items), so nothing
here is fitted to the passkey prompts it is judged on; only the block's layout changes.

    blocks = token_blocks(tokenizer, "books,stackexchange", 1024, 4096)       # (4, 1024)
    recall = recall_blocks(blocks, span=128)                                # same shape, tails repeat early spans
"""
from __future__ import annotations

import torch


def check_span(span: int, seq_len: int, start_fraction: float = 0.25) -> None:
    """Raise ValueError unless ``span`` tokens fit twice in blocks of ``seq_len`` with the source in the first
    ``start_fraction`` of the block: 1 <= span and 2 * span + seq_len * start_fraction <= seq_len."""
    if not isinstance(span, int) or isinstance(span, bool) or span < 1:
        raise ValueError(f"span must be a positive number of tokens, not {span!r}")
    if not 0 <= start_fraction < 1:
        raise ValueError(f"start_fraction must be in [0, 1), not {start_fraction!r}")
    latest = int(seq_len * start_fraction)
    if 2 * span + latest > seq_len:
        raise ValueError(f"a recall span of {span} tokens does not fit twice in blocks of {seq_len} tokens (with its "
                         f"source in the first {start_fraction:.0%}): use a span of at most "
                         f"{max((seq_len - latest) // 2, 0)} or longer blocks")


def check_recall_span(span: int, seq_len: int, owner: str) -> None:
    """Nothing for ``span`` 0 (recall blocks off); else :func:`check_span`, its ValueError prefixed by ``owner``
    (the option or field that was given)."""
    if span == 0:
        return
    try:
        check_span(span, seq_len)
    except ValueError as err:
        raise ValueError(f"{owner}: {err}") from None


def recall_blocks(blocks: torch.Tensor, span: int, seed: int = 0, start_fraction: float = 0.25) -> torch.Tensor:
    """Blocks (B, S) whose last ``span`` tokens copy the ``span`` tokens starting at a seeded position in the
    first ``start_fraction`` of the same block (so the copy lies at least S - span - S * start_fraction tokens
    after its source).

    The input is not modified. ``span`` must leave room (:func:`check_span`).
    """
    if blocks.ndim != 2:
        raise ValueError(f"recall_blocks takes token blocks of shape (B, S), not {tuple(blocks.shape)}")
    n, seq = blocks.shape
    check_span(span, seq, start_fraction)
    latest = int(seq * start_fraction)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, latest + 1, (n,), generator=gen)
    out = blocks.clone()
    for row, start in enumerate(starts.tolist()):
        out[row, seq - span:] = blocks[row, start:start + span]
    return out


"""Quality of a compressed model against its own uncompressed self, on held-out text.

perplexity: exp of the mean next-token cross-entropy; kl_to_base: mean over tokens of
KL(p_base || p_compressed) on the next-token distribution; top1_agreement: how often both models' most likely
next token agree. The base pass runs with compression switched off (same model, no second copy).
Introduced in notebook 01.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from .core.env import progress_bar as tqdm

from .core.ranks import budget_of, kv_fraction


class _Acc:
    def __init__(self):
        self.nll = self.kl = self.agree = 0.0
        self.n = 0

    def add(self, logp: torch.Tensor, labels: torch.Tensor, base_logp: torch.Tensor | None) -> None:
        self.nll += float(F.nll_loss(logp, labels, reduction="sum"))
        self.n += labels.numel()
        if base_logp is not None:
            self.kl += float((base_logp.exp() * (base_logp - logp)).sum())
            self.agree += float((base_logp.argmax(-1) == logp.argmax(-1)).sum())

    def result(self) -> dict:
        return {"perplexity": math.exp(self.nll / self.n), "kl_to_base": self.kl / self.n,
                "top1_agreement": self.agree / self.n, "tokens": self.n}


def _logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token log-probs (B * (S-1), vocab) in float32 for all positions but the last."""
    logits = model(ids, use_cache=False).logits[:, :-1]
    return F.log_softmax(logits.float(), dim=-1).flatten(0, 1)


@torch.no_grad()
def quality_curve(model, blocks: torch.Tensor, compression, settings: list, batch_size: int = 4,
                  progress: bool = True) -> list[dict]:
    """Metrics at several rank settings, computing the base log-probs once per batch.

    ``compression``: an attached :class:`~mkvlib.core.compress.Compression` (its ranks are restored afterwards);
    ``settings``: rank specs (budget floats, ints or (L, G, 2) tensors). Returns one dict per setting with
    perplexity, kl_to_base, top1_agreement, tokens, budget and kv_fraction, plus ``base_perplexity``.
    """
    device = next(model.parameters()).device
    saved_ranks, saved_enabled = compression.ranks, compression.enabled
    resolved = []
    for spec in settings:
        compression.set_ranks(spec)
        resolved.append(compression.ranks)
    accs, base = [_Acc() for _ in settings], _Acc()
    try:
        for start in tqdm(range(0, len(blocks), batch_size), desc="evaluating", disable=not progress):
            ids = blocks[start:start + batch_size].to(device)
            labels = ids[:, 1:].flatten()
            compression.enabled = False
            base_logp = _logprobs(model, ids)
            base.add(base_logp, labels, base_logp)
            compression.enabled = True
            for acc, ranks in zip(accs, resolved):
                compression.set_ranks(ranks)
                acc.add(_logprobs(model, ids), labels, base_logp)
    finally:
        compression.set_ranks(saved_ranks)
        compression.enabled = saved_enabled
    d = compression.geometry.head_dim
    rows = []
    for acc, ranks in zip(accs, resolved):
        row = acc.result()
        row.update(budget=budget_of(ranks, d), kv_fraction=kv_fraction(ranks, d),
                   base_perplexity=base.result()["perplexity"])
        row["perplexity_ratio"] = row["perplexity"] / row["base_perplexity"]
        rows.append(row)
    return rows


def evaluate(model, blocks: torch.Tensor, compression, batch_size: int = 4, progress: bool = True) -> dict:
    """Metrics of ``compression`` at its current ranks (see :func:`quality_curve`)."""
    return quality_curve(model, blocks, compression, [compression.ranks], batch_size, progress)[0]

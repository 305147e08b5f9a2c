"""A correctness check of the real compressed cache for notebook 05: its logits against the simulated path."""
from __future__ import annotations

import torch


@torch.no_grad()
def simulated_gap(model, projections, ranks, ids: torch.Tensor, split: int) -> float:
    """Max |logit difference| between the compressed cache (prefill ``split`` tokens, then one token a step) and
    the simulated path of :func:`mkvlib.core.compress.attach` on the same ids (B, T)."""
    from ..core.cache import CompressedCache
    from ..compat import cache_kwargs
    from ..core.compress import attach

    with attach(model, projections, ranks):
        expected = model(ids).logits
    past = CompressedCache(model, projections, ranks)
    got = [model(ids[:, :split], **cache_kwargs(past)).logits]
    got += [model(ids[:, t:t + 1], **cache_kwargs(past)).logits for t in range(split, ids.shape[1])]
    return float((torch.cat(got, 1) - expected).abs().max())

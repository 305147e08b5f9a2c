"""Running the model over a cache: prompts, chunked prefill, greedy decode and interleaved decode speeds."""
from __future__ import annotations

import time

import torch

from ..compat import cache_kwargs
from .caches import cache_bytes, fill_from, make_cache, synthetic_source


def prompt_ids(tokenizer, batch: int, context: int, corpus: str | None = None) -> torch.Tensor:
    """(batch, context) token ids from a corpus; rows repeat if the corpus is shorter than batch x context."""
    from ..corpora import default_corpus, token_blocks

    blocks = token_blocks(tokenizer, corpus or default_corpus("eval"), context, batch * context)
    return blocks.repeat((batch + len(blocks) - 1) // len(blocks), 1)[:batch]


@torch.no_grad()
def prefill(model, ids: torch.Tensor, cache, chunk: int) -> torch.Tensor:
    """Run the prompt (B, S) through the model ``chunk`` tokens at a time; returns the greedy next ids (B, 1)."""
    for start in range(0, ids.shape[1], chunk):
        logits = model(ids[:, start:start + chunk], **cache_kwargs(cache), use_cache=True, logits_to_keep=1).logits
    return logits[:, -1:].argmax(-1)


@torch.no_grad()
def decode(model, next_ids: torch.Tensor, cache, steps: int) -> torch.Tensor:
    """``steps`` greedy decode steps from ``next_ids`` (B, 1); returns the generated ids (B, steps)."""
    out = []
    for _ in range(steps):
        next_ids = model(next_ids, **cache_kwargs(cache), use_cache=True).logits[:, -1:].argmax(-1)
        out.append(next_ids)
    return torch.cat(out, 1)


def synchronize(device) -> None:
    """Wait for the GPU's queued work (nothing on a CPU), so that a wall clock read after it is honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def shared_prefix(model, ids: torch.Tensor, chunk: int, synthetic: bool):
    """The DynamicCache every kind decodes from and the next ids (B, 1): a real prefill of ``ids``, or random
    keys and values of the same shape (``synthetic``)."""
    if synthetic:
        return synthetic_source(model, *ids.shape), ids[:, -1:]
    source = make_cache("dynamic", model)
    return source, prefill(model, ids, source, chunk)


def timed_decode(model, next_ids: torch.Tensor, cache, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``steps`` greedy decode steps."""
    device = next_ids.device
    synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    decode(model, next_ids, cache, steps)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def decode_speeds(model, ids: torch.Tensor, factories: dict, new_tokens: int, repeats: int, chunk: int,
                  synthetic: bool = False) -> dict:
    """Decode tokens/s of each cache kind from one shared prefill, interleaved over ``repeats`` rounds.

    ``factories``: name -> () -> empty cache. Returns name -> list of tokens/s (wall clock), name + '_cpu' ->
    list of tokens per CPU-second of this process (less sensitive to other processes on a shared CPU),
    '_prefill_s' (DynamicCache) and '_bytes': name -> bytes each cache held after its last decode
    (:func:`~mkvlib.bench.caches.cache_bytes`).
    """
    synchronize(ids.device)
    start = time.perf_counter()
    source, next_ids = shared_prefix(model, ids, chunk, synthetic)
    synchronize(ids.device)
    speeds = {key: [] for name in factories for key in (name, name + "_cpu")}
    speeds["_prefill_s"] = time.perf_counter() - start
    speeds["_bytes"] = {}
    tokens = ids.shape[0] * new_tokens
    for _ in range(repeats):
        for name, factory in factories.items():
            cache = factory()
            fill_from(cache, source)
            wall, cpu = timed_decode(model, next_ids, cache, new_tokens)
            speeds[name].append(tokens / wall)
            speeds[name + "_cpu"].append(tokens / cpu)
            speeds["_bytes"][name] = cache_bytes(cache)
            del cache
    return speeds

"""Stage bench: decode tokens/s and memory of the CompressedCache at 100%, 50% and 25% (trained projections,
uniform ranks) against DynamicCache and a preallocated full-width cache (transformers' StaticCache), at the
model's context limit (8k for the embedded model) on a GPU; tiny contexts on a CPU.

Decode cost does not depend on what the cache holds, so each cache is filled with random keys and values of the
model's shape and dtype (in chunks, on the device; no prefill) and then decodes ``bench_new_tokens`` greedy
steps after one warm-up step (:func:`mkvlib.bench.decode`). Three measurements per cache: at the probe batch; at
the largest batch that fits (GPU: predicted from the probe's peak memory per sequence for 90% of the free
memory, lowered by a fifth on out-of-memory until it runs; CPU: predicted only); and at one common batch, the
full-width cache's largest, so that every cache decodes the same work. Results go to bench.json at once.
"""
from __future__ import annotations

import torch

from . import clock
from .config import BENCH_BUDGETS
from .context import StageSkipped


def factories(model, proj, reserve: int) -> dict:
    from transformers import StaticCache

    from ..bench.caches import make_cache

    out = {"dynamic": lambda: make_cache("dynamic", model),
           "static": lambda: StaticCache(config=model.config, max_cache_len=reserve)}
    for b in BENCH_BUDGETS:
        out[f"compressed@{b:g}"] = (lambda b=b: make_cache("compressed", model, proj, float(b), reserve=reserve))
    return out


def held_bytes(cache) -> int:
    """Bytes the cache's buffers occupy (preallocated room included)."""
    from ..bench.caches import cache_bytes

    return cache.allocated_bytes() if hasattr(cache, "allocated_bytes") else cache_bytes(cache)


def measure(ctx, factory, batch: int, context: int, new_tokens: int) -> dict:
    from ..bench.caches import synthetic_fill
    from ..bench.speed import decode, timed_decode

    model, device = ctx.model, ctx.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    cache = None
    try:
        cache = factory()
        synthetic_fill(cache, model, batch, context, ctx.config.seed)
        ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        ids = decode(model, ids, cache, 1)[:, -1:]               # warm-up step
        seconds, _ = timed_decode(model, ids, cache, new_tokens)
        out = {"batch": batch, "decode_tokens_per_s": batch * new_tokens / seconds, "cache_bytes": held_bytes(cache)}
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated() - before if cuda else out["cache_bytes"]
        return out
    finally:
        del cache
        if cuda:
            torch.cuda.empty_cache()


def free_memory(device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as fh:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
    return info.get("MemAvailable", 0)


def largest_batch(ctx, factory, per_seq: float, context: int, new_tokens: int, deadline: float) -> dict:
    """The largest batch that fits: predicted, then (GPU) run, lowered by a fifth on out-of-memory."""
    batch = max(1, int(0.9 * free_memory(ctx.device) / per_seq))
    if ctx.device.type != "cuda":
        return {"max_batch": batch, "verified": False, "note": "predicted from the cache bytes per sequence and "
                "the available memory (CPU: not run)"}
    while batch >= 1 and clock.now() < deadline:
        try:
            return {"max_batch": batch, "verified": True, **measure(ctx, factory, batch, context, new_tokens)}
        except torch.OutOfMemoryError:
            ctx.log(f"bench: batch {batch} ran out of memory; trying {int(batch * 0.8)}")
            batch = int(batch * 0.8)
    return {"max_batch": None, "verified": False, "note": "out of time before a batch fitted"}


def run(ctx, deadline) -> dict:
    from ..core.io import write_json

    p = ctx.profile
    try:
        proj = ctx.trained()
        label = "trained"
    except StageSkipped:
        proj, label = ctx.pca(), "pca"
    limit = getattr(ctx.model.config, "max_position_embeddings", None) or p.bench_context
    context = min(p.bench_context, limit) - p.bench_new_tokens - 1
    caches = factories(ctx.model, proj, context + p.bench_new_tokens + 1)
    result = {"context": context, "new_tokens": p.bench_new_tokens, "projections": label, "ranks": "uniform",
              "device": str(ctx.device), "dtype": str(next(ctx.model.parameters()).dtype).replace("torch.", ""),
              "fill": "synthetic (random keys and values)", "probe": {}, "capacity": {}, "common": {}}
    for name, factory in caches.items():
        result["probe"][name] = measure(ctx, factory, p.bench_batch, context, p.bench_new_tokens)
        ctx.log(f"bench: {name} batch {p.bench_batch}: {result['probe'][name]['decode_tokens_per_s']:.1f} tokens/s")
    write_json(ctx.path("bench"), result)
    measure_capacity(ctx, caches, result, deadline)
    measure_common(ctx, caches, result, deadline)
    result["ratios"] = ratios(result)
    write_json(ctx.path("bench"), result)
    return {"file": ctx.path("bench").name, "context": context, "ratios": result["ratios"],
            "max_batch": {k: v.get("max_batch") for k, v in result["capacity"].items()}}


def measure_capacity(ctx, caches, result, deadline) -> None:
    context, new = result["context"], result["new_tokens"]
    for name, factory in caches.items():
        if clock.now() >= deadline:
            result["capacity"][name] = {"max_batch": None, "note": "out of time"}
            continue
        probe = result["probe"][name]
        per_seq = probe["peak_memory_bytes"] / probe["batch"]
        result["capacity"][name] = largest_batch(ctx, factory, per_seq, context, new, deadline)
        ctx.log(f"bench: {name} largest batch {result['capacity'][name]['max_batch']}")


def measure_common(ctx, caches, result, deadline) -> None:
    """Every cache at the full-width (static) cache's largest batch, on a GPU (on a CPU: the probe batch)."""
    static = result["capacity"].get("static", {})
    if ctx.device.type != "cuda" or not static.get("verified"):
        result["common"] = {"batch": ctx.profile.bench_batch, "rows": result["probe"]}
        return
    batch, rows = static["max_batch"], {}
    for name, factory in caches.items():
        if clock.now() >= deadline:
            break
        rows[name] = static if name == "static" else measure(ctx, factory, batch, result["context"],
                                                                 result["new_tokens"])
    result["common"] = {"batch": batch, "rows": rows}


def ratios(result) -> dict:
    """Decode tokens/s at the common batch and largest batch, each compressed budget over each baseline."""
    out = {}
    rows, cap = result["common"]["rows"], result["capacity"]
    for b in BENCH_BUDGETS:
        name = f"compressed@{b:g}"
        for base in ("static", "dynamic"):
            if name in rows and base in rows:
                out[f"decode_{name}_vs_{base}"] = rows[name]["decode_tokens_per_s"] / rows[base]["decode_tokens_per_s"]
            if cap.get(name, {}).get("max_batch") and cap.get(base, {}).get("max_batch"):
                out[f"capacity_{name}_vs_{base}"] = cap[name]["max_batch"] / cap[base]["max_batch"]
    return {k: round(v, 3) for k, v in out.items()}

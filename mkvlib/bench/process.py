"""Prefill time and peak memory of one cache kind, measured in a fresh Python process for a clean peak.

CPU: the growth of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs where allowed);
GPU: the growth of ``torch.cuda.max_memory_allocated``. ``python -m mkvlib.bench PAYLOAD`` is the fresh process.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict

import torch

from ..core.ranks import ranks_for
from .caches import cache_bytes, make_cache
from .config import BenchConfig
from .speed import decode, prefill, prompt_ids, synchronize


def rss_bytes(field_name: str) -> int:
    """A memory field of /proc/self/status in bytes ('VmRSS': resident now, 'VmHWM': the peak)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set size (VmHWM); False where the system does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM, the peak resident set size
        return True
    except OSError:
        return False


def memory_baseline(cuda: bool) -> tuple[int, bool]:
    """(bytes in use now, whether the peak could be reset), after resetting the peak counter."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated(), True
    clean = reset_peak_rss()
    return rss_bytes("VmRSS"), clean


def memory_peak(cuda: bool) -> int:
    """The peak bytes in use since :func:`memory_baseline`."""
    return torch.cuda.max_memory_allocated() if cuda else rss_bytes("VmHWM")


def memory_measure(cuda: bool, clean: bool) -> str:
    """How the peak was measured, as written in the result."""
    if cuda:
        return "cuda_max_allocated"
    return "peak_rss_growth" if clean else "peak_rss_growth (peak not resettable: includes model loading)"


def run_variant(kind: str, config: BenchConfig, ranks=None) -> dict:
    """Load the model, then prefill and decode with one cache kind, measuring time and peak memory growth.

    Meant for a fresh process (:func:`measure_in_subprocess`): the peak RSS growth is only clean there.
    """
    from ..models import load_model
    from ..core.projections import resolve_projections

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = load_model(config.model)
    device = next(model.parameters()).device
    proj = resolve_projections(config.projections, model) if kind == "compressed" else None
    if kind == "compressed" and ranks is None:
        ranks = ranks_for(model, proj, config.allocation, config.budget)
    ids = prompt_ids(tokenizer, config.batch, config.context, config.corpus).to(device)
    prefill(model, ids[:1, :8], make_cache(kind, model, proj, ranks), config.prefill_chunk)  # warm-up
    cuda = device.type == "cuda"
    before, clean = memory_baseline(cuda)
    cache = make_cache(kind, model, proj, ranks, reserve=config.context + config.new_tokens)
    start = time.perf_counter()
    next_ids = prefill(model, ids, cache, config.prefill_chunk)
    synchronize(device)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    decode(model, next_ids, cache, config.new_tokens)
    synchronize(device)
    decode_s = time.perf_counter() - start
    peak = memory_peak(cuda)
    result = dict(kind=kind, batch=config.batch, context=config.context, new_tokens=config.new_tokens,
                  budget=config.budget if kind == "compressed" else None, prefill_s=prefill_s,
                  decode_tokens_per_s=config.batch * config.new_tokens / decode_s,
                  cache_bytes=cache_bytes(cache), peak_memory_bytes=peak - before,
                  model_memory_bytes=before, memory_measure=memory_measure(cuda, clean))
    if kind == "compressed":
        result["allocated_bytes"] = cache.allocated_bytes()
    return result


def measure_in_subprocess(kind: str, config: BenchConfig, ranks=None, timeout: float | None = None) -> dict:
    """:func:`run_variant` in a fresh Python process; returns its result dict."""
    payload = json.dumps({"kind": kind, "config": asdict(config),
                          "ranks": None if ranks is None or isinstance(ranks, float) else torch.as_tensor(ranks).tolist()})
    proc = subprocess.run([sys.executable, "-m", "mkvlib.bench", payload], capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {kind} measurement process failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv: list[str]) -> int:
    """The fresh process of :func:`measure_in_subprocess`: one JSON payload in, one JSON result line out."""
    args = json.loads(argv[0])
    config = BenchConfig(**{**args["config"], "baselines": tuple(args["config"]["baselines"])})
    ranks = args["ranks"]
    print(json.dumps(run_variant(args["kind"], config, None if ranks is None else torch.tensor(ranks))))
    return 0

"""The whole benchmark: the compressed cache against the baselines at one point (:func:`run_bench`), and decode
speed across budgets (:func:`budget_sweep`)."""
from __future__ import annotations

import statistics
import sys

import torch

from ..core.ranks import ranks_for
from .caches import baseline_factories, bytes_per_token, fill_from, kv_fraction, make_cache
from .config import BenchConfig
from .process import measure_in_subprocess
from .speed import decode_speeds, prefill, prompt_ids


def prepared(config: BenchConfig, model=None, tokenizer=None):
    """(model, projections, prompt ids (batch, context) on the model's device); loads the model if not given."""
    from ..models import load_model
    from ..core.projections import resolve_projections

    if model is None:
        model, tokenizer = load_model(config.model)
    proj = resolve_projections(config.projections, model)
    ids = prompt_ids(tokenizer, config.batch, config.context, config.corpus).to(next(model.parameters()).device)
    return model, proj, ids


def result_prefix(name: str) -> str:
    """The prefix of a cache kind's fields in :func:`run_bench`'s result: none for the compressed cache."""
    return "" if name == "compressed" else ("baseline_" if name == "dynamic" else "quantized_")


def tiny_source(model):
    """A one-token DynamicCache, to build a compressed cache whose bytes per token can be read off."""
    source = make_cache("dynamic", model)
    prefill(model, torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device), source, 1)
    return source


def describe(config: BenchConfig, model, proj, probe) -> dict:
    """The fields of a result that say what was measured: model, projections, point, device, dtype, prefix."""
    param = next(model.parameters())
    return dict(model=getattr(model, "mkv_name", "?"), projections=config.projections,
                fingerprint=proj.fingerprint(), budget=config.budget, allocation=config.allocation,
                context=config.context, batch=config.batch, new_tokens=config.new_tokens, device=str(param.device),
                dtype=str(param.dtype).replace("torch.", ""), repeats=config.repeats,
                prefix="synthetic" if config.synthetic_prefix else "real",
                projection_bytes=probe.projection_bytes(), kv_fraction=kv_fraction(probe))


def add_speeds(result: dict, names, speeds: dict) -> None:
    """Median decode tokens/s (wall and CPU) and the runs of each cache kind."""
    for name in names:
        prefix = result_prefix(name)
        result[f"{prefix}decode_tokens_per_s"] = statistics.median(speeds[name])
        result[f"{prefix}decode_tokens_per_s_runs"] = speeds[name]
        result[f"{prefix}decode_tokens_per_cpu_s"] = statistics.median(speeds[name + "_cpu"])


def add_fresh_process_runs(result: dict, names, config: BenchConfig, ranks, progress: bool) -> None:
    """Cache bytes, peak memory and prefill seconds of each cache kind, each measured in a fresh process."""
    for name in names:
        if progress:
            print(f"measuring {name} in a fresh process ...", file=sys.stderr)
        prefix = result_prefix(name)
        run = measure_in_subprocess(name, config, ranks if name == "compressed" else None)
        result[f"{prefix}cache_bytes"] = run["cache_bytes"]
        result[f"{prefix}peak_memory_bytes"] = run["peak_memory_bytes"]
        result[f"{prefix}prefill_s"] = run["prefill_s"]
        result["model_memory_bytes"] = run["model_memory_bytes"]
        result["memory_measure"] = run["memory_measure"]


def add_ratios(result: dict, per_token: dict, tokens: int) -> None:
    """Cache bytes (from the exact formula where not measured) and the ratios to DynamicCache."""
    result.setdefault("cache_bytes", per_token["compressed"] * tokens)
    result.setdefault("baseline_cache_bytes", per_token["dynamic"] * tokens)
    result["cache_fraction"] = result["cache_bytes"] / result["baseline_cache_bytes"]
    result["decode_speedup"] = result["decode_tokens_per_s"] / result["baseline_decode_tokens_per_s"]
    result["decode_speedup_cpu"] = result["decode_tokens_per_cpu_s"] / result["baseline_decode_tokens_per_cpu_s"]
    if "quantized_decode_tokens_per_s" in result:
        result["quantized_speedup"] = result["quantized_decode_tokens_per_s"] / result["baseline_decode_tokens_per_s"]


def run_bench(config: BenchConfig, model=None, tokenizer=None, progress: bool = False) -> dict:
    """Compressed cache against the baselines at one (budget, context, batch) point; a flat result dict."""
    model, proj, ids = prepared(config, model, tokenizer)
    ranks = ranks_for(model, proj, config.allocation, config.budget)
    reserve = config.context + config.new_tokens
    factories = {"compressed": lambda: make_cache("compressed", model, proj, ranks, reserve=reserve)}
    baselines, skipped = baseline_factories(model, config.baselines)
    factories.update(baselines)
    speeds = decode_speeds(model, ids, factories, config.new_tokens, config.repeats, config.prefill_chunk,
                           synthetic=config.synthetic_prefix)
    probe = factories["compressed"]()
    fill_from(probe, tiny_source(model))
    result = describe(config, model, proj, probe)
    add_speeds(result, factories, speeds)
    if config.memory:
        add_fresh_process_runs(result, factories, config, ranks, progress)
    elif not config.synthetic_prefix:  # bytes from the exact formula: tokens x bytes per token
        result["baseline_prefill_s"] = speeds["_prefill_s"]
    add_ratios(result, bytes_per_token(model, probe), config.batch * (config.context + config.new_tokens))
    if skipped:
        result["skipped"] = skipped
    return result


def sweep_row(name: str, probe, speeds: dict, config: BenchConfig, model) -> dict:
    """One row of :func:`budget_sweep`: a cache's decode speeds, its speed-up over DynamicCache and, for a
    compressed cache (``probe`` not None), its bytes."""
    wall, cpu = statistics.median(speeds[name]), statistics.median(speeds[name + "_cpu"])
    row = dict(cache=name if probe is None else "compressed", budget=float(name[1:]) if probe else None,
               context=config.context, batch=config.batch, new_tokens=config.new_tokens,
               prefix="synthetic" if config.synthetic_prefix else "real",
               decode_tokens_per_s=wall, decode_tokens_per_s_runs=speeds[name], decode_tokens_per_cpu_s=cpu,
               speedup=wall / statistics.median(speeds["dynamic"]),
               speedup_cpu=cpu / statistics.median(speeds["dynamic_cpu"]))
    if probe is not None:
        tokens = config.batch * (config.context + config.new_tokens)
        row.update(cache_bytes=bytes_per_token(model, probe)["compressed"] * tokens,
                   projection_bytes=probe.projection_bytes())
    return row


def budget_sweep(config: BenchConfig, budgets, model=None, tokenizer=None) -> list[dict]:
    """Decode tokens/s and cache bytes of the compressed cache at several budgets against DynamicCache, from one
    shared prefix, all interleaved (no fresh-process memory runs). One row per budget."""
    model, proj, ids = prepared(config, model, tokenizer)
    reserve = config.context + config.new_tokens
    ranks = {b: ranks_for(model, proj, config.allocation, b) for b in budgets}
    factories = {f"b{b}": (lambda r=ranks[b]: make_cache("compressed", model, proj, r, reserve=reserve))
                 for b in budgets}
    baselines, _ = baseline_factories(model, ("dynamic",) + tuple(k for k in config.baselines if k != "dynamic"))
    factories.update(baselines)
    speeds = decode_speeds(model, ids, factories, config.new_tokens, config.repeats, config.prefill_chunk,
                           synthetic=config.synthetic_prefix)
    return [sweep_row(name, factories[name]() if name.startswith("b") else None, speeds, config, model)
            for name in factories]

"""Measure the compressed cache against DynamicCache and transformers' 4-bit quantized cache (quanto).

What is measured, per cache kind ("compressed", "dynamic", "quanto"), for a batch of ``batch`` prompts of
``context`` tokens followed by ``new_tokens`` greedy decode steps:

- cache bytes: the sum of the stored tensors' bytes after decoding (projection matrices reported separately);
- decode tokens/s: batch x steps / seconds. All kinds decode from the *same* prefilled prompt (the compressed and
  quantized caches are filled from the DynamicCache's keys and values, which is exactly what their own prefill
  would store), interleaved over ``repeats`` rounds; the medians are reported (the CPU may be shared);
- prefill seconds (chunked, ``prefill_chunk`` tokens a forward) and peak memory: CPU, the process's peak RSS
  growth over the run; GPU, max_memory_allocated growth. Each kind runs in a fresh subprocess for a clean peak.

:func:`capacity` turns measured bytes per token plus measured fixed overhead into the largest batch x context
that fits in a memory limit. Introduced in notebook 05; ``mkv bench`` is the command line.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

KINDS = ("compressed", "dynamic", "quanto")


class QuantoUnavailable(RuntimeError):
    """optimum-quanto is not installed, so transformers' quantized cache cannot be built."""


@dataclass
class BenchConfig:
    """One benchmark point. ``budget`` in (0, 1]; ``allocation`` 'uniform' or 'adaptive' (greedy-search ranks)."""
    projections: str = "pca"
    budget: float = 0.5
    allocation: str = "uniform"
    context: int = 1024
    batch: int = 4
    new_tokens: int = 16
    prefill_chunk: int = 512
    repeats: int = 3
    baselines: tuple[str, ...] = ("dynamic", "quanto")
    memory: bool = True
    synthetic_prefix: bool = False
    model: str | None = None
    corpus: str | None = None

    def __post_init__(self):
        if not 0 < float(self.budget) <= 1:
            raise ValueError(f"budget must be in (0, 1] (e.g. 0.5 for 50%), not {self.budget!r}")
        if self.allocation not in ("uniform", "adaptive"):
            raise ValueError(f"allocation must be 'uniform' or 'adaptive', not {self.allocation!r}")
        for name in ("context", "batch", "new_tokens", "prefill_chunk", "repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        self.baselines = tuple(self.baselines)
        unknown = set(self.baselines) - set(KINDS[1:])
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}: choose from {KINDS[1:]}")

    @classmethod
    def fast(cls, **kw) -> "BenchConfig":
        """A CI-sized point: batch 2 x 512 tokens, 8 new tokens, one round."""
        return cls(**{**dict(context=512, batch=2, new_tokens=8, repeats=1), **kw})


# --- caches and their bytes ------------------------------------------------------------------------------------
def resolve_bench_ranks(model, projections, budget: float, allocation: str):
    """Ranks for a budget: uniform (a float budget) or the shipped greedy-search allocation."""
    if allocation == "adaptive":
        from . import search  # the rank-search module, imported only when asked for

        return search.adaptive_ranks(model, projections, budget)
    return float(budget)


def make_cache(kind: str, model, projections=None, ranks=None, reserve: int = 0):
    """A fresh empty cache of ``kind``: 'compressed' (needs projections and ranks), 'dynamic' or 'quanto'."""
    from transformers import DynamicCache, QuantizedCache

    if kind == "compressed":
        from .cache import CompressedCache

        return CompressedCache(model, projections, ranks, reserve=reserve)
    if kind == "dynamic":
        return DynamicCache(config=model.config)
    if kind == "quanto":
        try:
            return QuantizedCache(backend="quanto", config=model.config, nbits=4)
        except ImportError as err:
            raise QuantoUnavailable(f"the quantized baseline needs optimum-quanto: pip install optimum-quanto "
                                    f"({err})") from None
    raise ValueError(f"unknown cache kind {kind!r}: choose from {KINDS}")


def tensor_bytes(t) -> int:
    """Bytes of a tensor, including the inner tensors of a tensor subclass (a quanto QTensor: data, scales)."""
    if t is None:
        return 0
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.nelement() * t.element_size()


def cache_bytes(cache) -> int:
    """The sum of the bytes of the tensors a cache holds (for the compressed cache: the filled reduced tensors)."""
    if hasattr(cache, "stored_bytes"):
        return cache.stored_bytes()
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values", "_quantized_keys", "_quantized_values"):
            total += tensor_bytes(getattr(layer, name, None))
    return total


# --- running the model ---------------------------------------------------------------------------------------
def prompt_ids(tokenizer, batch: int, context: int, corpus: str | None = None) -> torch.Tensor:
    """(batch, context) token ids from a corpus; rows repeat if the corpus is shorter than batch x context."""
    from .corpora import default_corpus, token_blocks

    blocks = token_blocks(tokenizer, corpus or default_corpus("eval"), context, batch * context)
    return blocks.repeat((batch + len(blocks) - 1) // len(blocks), 1)[:batch]


@torch.no_grad()
def prefill(model, ids: torch.Tensor, cache, chunk: int) -> torch.Tensor:
    """Run the prompt (B, S) through the model ``chunk`` tokens at a time; returns the greedy next ids (B, 1)."""
    for start in range(0, ids.shape[1], chunk):
        logits = model(ids[:, start:start + chunk], past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    return logits[:, -1:].argmax(-1)


@torch.no_grad()
def decode(model, next_ids: torch.Tensor, cache, steps: int) -> torch.Tensor:
    """``steps`` greedy decode steps from ``next_ids`` (B, 1); returns the generated ids (B, steps)."""
    out = []
    for _ in range(steps):
        next_ids = model(next_ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        out.append(next_ids)
    return torch.cat(out, 1)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fill_from(cache, source) -> None:
    """Fill an empty cache with the keys and values held by a DynamicCache ``source`` (what its prefill stores)."""
    for layer_idx, layer in enumerate(source.layers):
        cache.update(layer.keys, layer.values, layer_idx)


def synthetic_source(model, batch: int, context: int, seed: int = 0):
    """A DynamicCache filled with random post-RoPE keys and values (batch, G, context, d) of the model's dtype.

    Decode cost does not depend on the cached values, so this stands in for a long real prefill when only decode
    speed is measured on a slow CPU (``BenchConfig.synthetic_prefix``).
    """
    from .geometry import KVGeometry

    geom, param = KVGeometry.of(model), next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    source = make_cache("dynamic", model)
    for layer in range(geom.layers):
        k, v = (torch.randn(batch, geom.kv_heads, context, geom.head_dim, generator=gen) for _ in range(2))
        source.update(k.to(param.device, param.dtype), v.to(param.device, param.dtype), layer)
    return source


def decode_speeds(model, ids: torch.Tensor, factories: dict, new_tokens: int, repeats: int, chunk: int,
                  synthetic: bool = False) -> dict:
    """Decode tokens/s of each cache kind from one shared prefill, interleaved over ``repeats`` rounds.

    ``factories``: name -> () -> empty cache. Returns name -> list of tokens/s (wall clock), name + '_cpu' ->
    list of tokens per CPU-second of this process (less sensitive to other processes on a shared CPU), and
    '_prefill_s' (DynamicCache).
    """
    device = ids.device
    _sync(device)
    start = time.perf_counter()
    if synthetic:
        source, next_ids = synthetic_source(model, *ids.shape), ids[:, -1:]
    else:
        source = make_cache("dynamic", model)
        next_ids = prefill(model, ids, source, chunk)
    _sync(device)
    speeds = {key: [] for name in factories for key in (name, name + "_cpu")}
    speeds["_prefill_s"] = time.perf_counter() - start
    for _ in range(repeats):
        for name, factory in factories.items():
            cache = factory()
            fill_from(cache, source)
            _sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            decode(model, next_ids, cache, new_tokens)
            _sync(device)
            speeds[name].append(ids.shape[0] * new_tokens / (time.perf_counter() - start))
            speeds[name + "_cpu"].append(ids.shape[0] * new_tokens / (time.process_time() - cpu))
            del cache
    return speeds


# --- peak memory in a fresh process ----------------------------------------------------------------------------
def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM, the peak resident set size
        return True
    except OSError:
        return False


def run_variant(kind: str, config: BenchConfig, ranks=None) -> dict:
    """Load the model, then prefill and decode with one cache kind, measuring time and peak memory growth.

    Meant for a fresh process (:func:`measure_in_subprocess`): the peak RSS growth is only clean there.
    """
    from .models import load_model
    from .projections import resolve_projections

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = load_model(config.model)
    device = next(model.parameters()).device
    proj = resolve_projections(config.projections, model) if kind == "compressed" else None
    if kind == "compressed" and ranks is None:
        ranks = resolve_bench_ranks(model, proj, config.budget, config.allocation)
    ids = prompt_ids(tokenizer, config.batch, config.context, config.corpus).to(device)
    reserve = config.context + config.new_tokens
    prefill(model, ids[:1, :8], make_cache(kind, model, proj, ranks), config.prefill_chunk)  # warm-up
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        clean = _reset_peak_rss()
        before = _rss_bytes("VmRSS")
    cache = make_cache(kind, model, proj, ranks, reserve=reserve)
    start = time.perf_counter()
    next_ids = prefill(model, ids, cache, config.prefill_chunk)
    _sync(device)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    decode(model, next_ids, cache, config.new_tokens)
    _sync(device)
    decode_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_bytes("VmHWM")
    result = dict(kind=kind, batch=config.batch, context=config.context, new_tokens=config.new_tokens,
                  budget=config.budget if kind == "compressed" else None, prefill_s=prefill_s, decode_tokens_per_s=config.batch * config.new_tokens / decode_s,
                  cache_bytes=cache_bytes(cache), peak_memory_bytes=peak - before,
                  model_memory_bytes=before, memory_measure="cuda_max_allocated" if cuda else "peak_rss_growth")
    if not cuda and not clean:
        result["memory_measure"] = "peak_rss_growth (peak not resettable: includes model loading)"
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


# --- the whole benchmark ---------------------------------------------------------------------------------------
def run_bench(config: BenchConfig, model=None, tokenizer=None, progress: bool = False) -> dict:
    """Compressed cache against the baselines at one (budget, context, batch) point; a flat result dict."""
    from .models import load_model
    from .projections import resolve_projections

    if model is None:
        model, tokenizer = load_model(config.model)
    proj = resolve_projections(config.projections, model)
    ranks = resolve_bench_ranks(model, proj, config.budget, config.allocation)
    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, config.batch, config.context, config.corpus).to(device)
    reserve = config.context + config.new_tokens
    factories = {"compressed": lambda: make_cache("compressed", model, proj, ranks, reserve=reserve)}
    skipped = {}
    for kind in config.baselines:
        try:
            make_cache(kind, model)
            factories[kind] = (lambda k=kind: make_cache(k, model))
        except QuantoUnavailable as err:
            skipped[kind] = str(err)
    speeds = decode_speeds(model, ids, factories, config.new_tokens, config.repeats, config.prefill_chunk,
                           synthetic=config.synthetic_prefix)
    probe = factories["compressed"]()
    fill_from(probe, _tiny_source(model, config))
    result = dict(model=getattr(model, "mkv_name", "?"), projections=config.projections,
                  fingerprint=proj.fingerprint(), budget=config.budget, allocation=config.allocation,
                  context=config.context, batch=config.batch, new_tokens=config.new_tokens, device=str(device),
                  dtype=str(next(model.parameters()).dtype).replace("torch.", ""), repeats=config.repeats,
                  prefix="synthetic" if config.synthetic_prefix else "real",
                  projection_bytes=probe.projection_bytes(), kv_fraction=_kv_fraction(probe))
    tokens = config.batch * (config.context + config.new_tokens)
    for name in factories:
        prefix = "" if name == "compressed" else ("baseline_" if name == "dynamic" else "quantized_")
        result[f"{prefix}decode_tokens_per_s"] = statistics.median(speeds[name])
        result[f"{prefix}decode_tokens_per_s_runs"] = speeds[name]
        result[f"{prefix}decode_tokens_per_cpu_s"] = statistics.median(speeds[name + "_cpu"])
    if config.memory:
        for name in factories:
            if progress:
                print(f"measuring {name} in a fresh process ...", file=sys.stderr)
            prefix = "" if name == "compressed" else ("baseline_" if name == "dynamic" else "quantized_")
            run = measure_in_subprocess(name, config, ranks if name == "compressed" else None)
            result[f"{prefix}cache_bytes"] = run["cache_bytes"]
            result[f"{prefix}peak_memory_bytes"] = run["peak_memory_bytes"]
            result[f"{prefix}prefill_s"] = run["prefill_s"]
            result["model_memory_bytes"] = run["model_memory_bytes"]
            result["memory_measure"] = run["memory_measure"]
    elif not config.synthetic_prefix:  # bytes from the exact formula: tokens x bytes per token
        result["baseline_prefill_s"] = speeds["_prefill_s"]
    per_token = _bytes_per_token(model, probe)
    result.setdefault("cache_bytes", per_token["compressed"] * tokens)
    result.setdefault("baseline_cache_bytes", per_token["dynamic"] * tokens)
    result["cache_fraction"] = result["cache_bytes"] / result["baseline_cache_bytes"]
    result["decode_speedup"] = result["decode_tokens_per_s"] / result["baseline_decode_tokens_per_s"]
    result["decode_speedup_cpu"] = result["decode_tokens_per_cpu_s"] / result["baseline_decode_tokens_per_cpu_s"]
    if "quantized_decode_tokens_per_s" in result:
        result["quantized_speedup"] = result["quantized_decode_tokens_per_s"] / result["baseline_decode_tokens_per_s"]
    if skipped:
        result["skipped"] = skipped
    return result


def budget_sweep(config: BenchConfig, budgets, model=None, tokenizer=None) -> list[dict]:
    """Decode tokens/s and cache bytes of the compressed cache at several budgets against DynamicCache, from one
    shared prefix, all interleaved (no fresh-process memory runs). One row per budget."""
    from .models import load_model
    from .projections import resolve_projections

    if model is None:
        model, tokenizer = load_model(config.model)
    proj = resolve_projections(config.projections, model)
    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, config.batch, config.context, config.corpus).to(device)
    reserve = config.context + config.new_tokens
    ranks = {b: resolve_bench_ranks(model, proj, b, config.allocation) for b in budgets}
    factories = {f"b{b}": (lambda r=ranks[b]: make_cache("compressed", model, proj, r, reserve=reserve))
                 for b in budgets}
    factories["dynamic"] = lambda: make_cache("dynamic", model)
    for kind in config.baselines:
        if kind != "dynamic":
            try:
                make_cache(kind, model)
                factories[kind] = (lambda k=kind: make_cache(k, model))
            except QuantoUnavailable:
                pass
    speeds = decode_speeds(model, ids, factories, config.new_tokens, config.repeats, config.prefill_chunk,
                           synthetic=config.synthetic_prefix)
    tokens = config.batch * (config.context + config.new_tokens)
    base = statistics.median(speeds["dynamic"])
    base_cpu = statistics.median(speeds["dynamic_cpu"])
    rows = []
    for name in factories:
        probe = factories[name]() if name.startswith("b") else None
        per_token = _bytes_per_token(model, probe)["compressed"] if probe is not None else None
        row = dict(cache=name if probe is None else "compressed", budget=float(name[1:]) if probe else None,
                   context=config.context, batch=config.batch, new_tokens=config.new_tokens,
                   prefix="synthetic" if config.synthetic_prefix else "real",
                   decode_tokens_per_s=statistics.median(speeds[name]), decode_tokens_per_s_runs=speeds[name],
                   decode_tokens_per_cpu_s=statistics.median(speeds[name + "_cpu"]),
                   speedup=statistics.median(speeds[name]) / base,
                   speedup_cpu=statistics.median(speeds[name + "_cpu"]) / base_cpu)
        if probe is not None:
            row.update(cache_bytes=per_token * tokens, projection_bytes=probe.projection_bytes())
        rows.append(row)
    return rows


def _tiny_source(model, config):
    """A one-token DynamicCache, to build a compressed cache whose bytes per token can be read off."""
    source = make_cache("dynamic", model)
    prefill(model, torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device), source, 1)
    return source


def _kv_fraction(cache) -> float:
    from .geometry import kv_fraction

    return kv_fraction(cache.ranks, cache.geometry.head_dim)


def _bytes_per_token(model, compressed) -> dict:
    """Bytes per token (one sequence) of the compressed cache and of DynamicCache, from the geometry and dtype."""
    from .geometry import KVGeometry

    geom = KVGeometry.of(model)
    size = next(model.parameters()).element_size()
    return {"compressed": None if compressed is None else int(compressed.ranks.sum()) * size, "dynamic": 2 * geom.layers * geom.kv_heads * geom.head_dim * size}


def capacity(bytes_per_token: float, fixed_bytes: float, limit_bytes: float, context: int,
             per_sequence_bytes: float = 0.0) -> dict:
    """Largest batch at ``context`` (and batch x context tokens) whose peak memory fits in ``limit_bytes``.

    Peak = fixed_bytes + batch x (per_sequence_bytes + context x bytes_per_token): ``fixed_bytes`` the model and
    runtime, ``per_sequence_bytes`` the transient activations of one row of a prefill chunk, ``bytes_per_token``
    the cache bytes per token of one sequence; all three measured by :func:`memory_model`.
    """
    if bytes_per_token <= 0 or context < 1:
        raise ValueError("bytes_per_token and context must be positive")
    batch = max(0, int((limit_bytes - fixed_bytes) // (per_sequence_bytes + context * bytes_per_token)))
    return {"max_batch": batch, "max_tokens": batch * context, "context": context, "limit_bytes": int(limit_bytes)}


def memory_model(run: dict) -> dict:
    """Fixed bytes, transient bytes per sequence and cache bytes per token from one fresh-process run.

    fixed = the process's resident memory before the run (weights, runtime); per sequence = the peak growth not
    explained by the cache, divided by the batch (one row of a prefill chunk's activations); bytes per token =
    cache bytes / (batch x (context + new tokens)).
    """
    tokens = run["batch"] * (run["context"] + run.get("new_tokens", 0))
    return {"fixed_bytes": run["model_memory_bytes"],
            "per_sequence_bytes": (run["peak_memory_bytes"] - run["cache_bytes"]) / run["batch"],
            "bytes_per_token": run["cache_bytes"] / tokens}


def predicted_peak(model: dict, batch: int, tokens: int) -> float:
    """Peak resident bytes the :func:`memory_model` predicts for ``batch`` sequences of ``tokens`` cached tokens."""
    return model["fixed_bytes"] + batch * (model["per_sequence_bytes"] + tokens * model["bytes_per_token"])


if __name__ == "__main__":  # the fresh process of measure_in_subprocess
    args = json.loads(sys.argv[1])
    cfg = BenchConfig(**{**args["config"], "baselines": tuple(args["config"]["baselines"])})
    ranks = args["ranks"]
    out = run_variant(args["kind"], cfg, None if ranks is None else torch.tensor(ranks))
    print(json.dumps(out))


# --- checks and figures for notebook 05 ---------------------------------------------------------------------------
@torch.no_grad()
def simulated_gap(model, projections, ranks, ids: torch.Tensor, split: int) -> float:
    """Max |logit difference| between the compressed cache (prefill ``split`` tokens, then one token a step) and
    the simulated path of :func:`mkvlib.compress.attach` on the same ids (B, T)."""
    from .cache import CompressedCache
    from .compress import attach

    with attach(model, projections, ranks):
        expected = model(ids).logits
    past = CompressedCache(model, projections, ranks)
    got = [model(ids[:, :split], past_key_values=past).logits]
    got += [model(ids[:, t:t + 1], past_key_values=past).logits for t in range(split, ids.shape[1])]
    return float((torch.cat(got, 1) - expected).abs().max())


def plot_decode_speedup(rows: list[dict], title: str = ""):
    """Decode tokens/s of the compressed cache over DynamicCache's, per budget (one line per context)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for context in sorted({r["context"] for r in rows}):
        pts = sorted((r["budget"], r["speedup"]) for r in rows if r["context"] == context and r["budget"])
        ax.plot([100 * b for b, _ in pts], [s for _, s in pts], marker="o", label=f"context {context}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("KV budget (%)")
    ax.set_ylabel("decode tokens/s vs DynamicCache")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.set_title(title or "real compressed cache: decode speed-up")
    fig.tight_layout()
    return fig


def plot_capacity(capacities: dict, title: str = ""):
    """Bar chart of the largest number of cached tokens (batch x context) within a memory limit, per cache."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = list(capacities)
    ax.bar(names, [capacities[n]["max_tokens"] for n in names], color=["#888", "#3a7", "#37a", "#a73"][:len(names)])
    ax.set_ylabel("max batch x context tokens")
    ax.set_title(title or f"within {capacities[names[0]]['limit_bytes'] / 2**30:.1f} GiB")
    fig.tight_layout()
    return fig

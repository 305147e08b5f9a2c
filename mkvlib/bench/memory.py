"""From measured bytes to capacity: a linear memory model fitted to one run, its predicted peak, and the largest
batch x context that fits in a memory limit."""
from __future__ import annotations


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

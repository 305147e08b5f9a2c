"""The caches compared and their bytes: empty caches of each kind, filling one from another, bytes held."""
from __future__ import annotations

import torch

from .config import KINDS, QuantoUnavailable

LADDER_TRAJECTORY = "results/ladder_trajectory.json"     # under the shipped data folder


def make_cache(kind: str, model, projections=None, ranks=None, reserve: int = 0):
    """A fresh empty cache of ``kind``: 'compressed' (needs projections and ranks), 'dynamic', 'quanto' or 'ladder'
    (a :class:`~mkvlib.ladder.LadderCache`: ``ranks`` is its :class:`~mkvlib.ladder.Ladder`, or bits per element
    of the shipped ladder trajectory for ``projections``, see :func:`shipped_ladder`)."""
    from transformers import DynamicCache, QuantizedCache

    if kind == "compressed":
        from ..core.cache import CompressedCache

        return CompressedCache(model, projections, ranks, reserve=reserve)
    if kind == "ladder":
        from ..ladder import Ladder, LadderCache

        layout = ranks if isinstance(ranks, Ladder) else shipped_ladder(model, projections, ranks)
        return LadderCache(model, projections, layout)
    if kind == "dynamic":
        return DynamicCache(config=model.config)
    if kind == "quanto":
        try:
            return QuantizedCache(backend="quanto", config=model.config, nbits=4)
        except ImportError as err:
            raise QuantoUnavailable(f"the quantized baseline needs optimum-quanto: pip install optimum-quanto "
                                    f"({err})") from None
    raise ValueError(f"unknown cache kind {kind!r}: choose from {KINDS}")


def shipped_ladder(model, projections, bits):
    """The layout of the shipped ladder trajectory (data/results/ladder_trajectory.json) at ``bits`` per element
    (scales included), checked to have been searched for ``projections``."""
    from ..ladder import LadderTrajectory
    from ..core.projections import resolve_projections
    from ..core.env import shipped_data_dir

    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or bits <= 0:
        raise ValueError(f"a ladder cache takes a Ladder or bits per element (a positive number), not {bits!r}")
    if projections is None:
        raise ValueError("a ladder cache needs the projections its trajectory was searched for ('trained')")
    proj = resolve_projections(projections, model)
    traj = LadderTrajectory.load(shipped_data_dir() / LADDER_TRAJECTORY)
    if traj.fingerprint != proj.fingerprint():
        raise ValueError(f"the shipped ladder trajectory was searched for projections {traj.fingerprint}, not "
                         f"these ({proj.fingerprint()}): use --projections trained")
    return traj.at(float(bits))


def baseline_factories(model, kinds) -> tuple[dict, dict]:
    """name -> () -> empty cache for each baseline kind that can be built here, and name -> why for the others
    (quanto without optimum-quanto installed)."""
    factories, skipped = {}, {}
    for kind in kinds:
        try:
            make_cache(kind, model)
            factories[kind] = (lambda k=kind: make_cache(k, model))
        except QuantoUnavailable as err:
            skipped[kind] = str(err)
    return factories, skipped


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


def fill_from(cache, source) -> None:
    """Fill an empty cache with the keys and values held by a DynamicCache ``source`` (what its prefill stores)."""
    for layer_idx, layer in enumerate(source.layers):
        cache.update(layer.keys, layer.values, layer_idx)


def synthetic_source(model, batch: int, context: int, seed: int = 0):
    """A DynamicCache filled by :func:`synthetic_fill`.

    Decode cost does not depend on the cached values, so this stands in for a long real prefill when only decode
    speed is measured on a slow CPU (``BenchConfig.synthetic_prefix``).
    """
    source = make_cache("dynamic", model)
    synthetic_fill(source, model, batch, context, seed)
    return source


def synthetic_fill(cache, model, batch: int, context: int, seed: int = 0, chunk: int = 1024) -> None:
    """Fill ``cache`` with random post-RoPE keys and values (batch, G, context, d) of the model's dtype, made on its
    device ``chunk`` tokens at a time (bounding the transient memory of the fill)."""
    from ..core.geometry import KVGeometry

    geom, param = KVGeometry.of(model), next(model.parameters())
    gen = torch.Generator(device=param.device).manual_seed(seed)
    for start in range(0, context, chunk):
        n = min(chunk, context - start)
        for layer in range(geom.layers):
            k, v = (torch.randn(batch, geom.kv_heads, n, geom.head_dim, generator=gen, device=param.device,
                                dtype=param.dtype) for _ in range(2))
            cache.update(k, v, layer)


def kv_fraction(cache) -> float:
    """The share of the full keys and values a compressed cache keeps (its ranks over the head dimension)."""
    from ..core.ranks import kv_fraction as fraction

    return fraction(cache.ranks, cache.geometry.head_dim)


def bytes_per_token(model, compressed) -> dict:
    """Bytes per token (one sequence) of the compressed cache and of DynamicCache, from the geometry and dtype."""
    from ..core.geometry import KVGeometry

    geom = KVGeometry.of(model)
    size = next(model.parameters()).element_size()
    return {"compressed": None if compressed is None else int(compressed.ranks.sum()) * size,
            "dynamic": 2 * geom.layers * geom.kv_heads * geom.head_dim * size}

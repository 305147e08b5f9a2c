"""A layer-wise warm start: each layer's key and value rotations fitted to that layer's attention output alone.

The uncompressed model runs once over training text (:func:`capture_layer_inputs`); each layer keeps what its
attention needs, the post-RoPE query (N, H, T, d) and key and value (N, G, T, d) exactly as the attention hook
sees them, in float16 (or bfloat16). Then every layer is fitted on its own (:func:`fit_layer`): trainable Cayley
rotations A_K, A_V (G, d, d) on top of an initial basis (PCA or query-aware), U = U_init cayley(skew(A)), and

    loss = ||W_o (o_c - o)||^2 / ||W_o o||^2

where o is the layer's causal attention output (query heads concatenated, before ``o_proj``), o_c the same with
keys P_K k and values P_V (v - mu) + mu (exactly what :class:`mkvlib.core.compress.Compression` does; query and the
model's scaling unchanged; each query head uses its KV head), W_o the ``o_proj`` weight, and P the rank-r prefix
projectors at ranks drawn per step by the :class:`~mkvlib.core.sampler.RankSampler` (independent per KV head
and K/V), as the end-to-end trainer draws them. No gradient crosses layers, so layers fit in any order, any
subset, and resumably: :func:`fit_layerwise` writes each finished layer atomically to a folder and skips the
layers it finds there. The result is a :class:`~mkvlib.core.projections.Projections` the end-to-end KD training
(:class:`~mkvlib.training.trainer.Trainer`) can start from. ``mkv warmstart`` is the command line.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core import attention
from ..core.compress import cayley, project_kv, projectors, skew
from ..core.geometry import KVGeometry
from ..core.positions import block_offsets, shifted
from ..core.io import atomic_path, read_safetensors
from ..models import model_identity
from ..core.projections import Projections
from ..core.sampler import RankSampler, default_schedule
from ..core.checks import check_schedule
from .config import check_counts, require
from .trainer import blocks_fingerprint, cosine_with_warmup

CAPTURE_FORMAT = "mkv-layer-inputs/1"
LAYER_FORMAT = "mkv-layerwise-layer/1"


class CaptureMismatchError(ValueError):
    """A capture of layer inputs was made with another model (or geometry, or weights) than the one given."""


# --- capture -----------------------------------------------------------------------------------------------

@dataclass
class LayerInputs:
    """One layer's attention inputs over N captured sequences: query (N, H, T, d), key and value (N, G, T, d)."""
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor


@dataclass
class Capture:
    """Attention inputs of some layers of one model over token blocks; ``identity`` says which model."""
    layers: dict[int, LayerInputs]
    identity: dict
    info: dict = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(self.info["seq_len"])

    @property
    def tokens(self) -> int:
        return int(self.info["tokens"])

    def check_model(self, model) -> None:
        """Raise :class:`CaptureMismatchError` unless this capture came from ``model`` (name, geometry, weights)."""
        theirs = model_identity(model)
        differ = [k for k in ("model", "geometry", "attention_hash") if self.identity.get(k) != theirs[k]]
        if differ:
            where = f" ({self.info['path']})" if self.info.get("path") else ""
            raise CaptureMismatchError(
                f"the captured layer inputs{where} come from another model: {', '.join(differ)} differ "
                f"(capture: {', '.join(f'{k}={self.identity.get(k)!r}' for k in differ)}; this model: "
                f"{', '.join(f'{k}={theirs[k]!r}' for k in differ)}). Capture again with this model.")

    def save(self, path: str | Path) -> Path:
        """Write atomically as safetensors; the identity and info go into the header."""
        from safetensors.torch import save_file

        tensors = {}
        for layer, x in self.layers.items():
            for name in ("query", "key", "value"):
                tensors[f"layer{layer}.{name}"] = getattr(x, name).contiguous()
        meta = {"format": CAPTURE_FORMAT, "identity": self.identity,
                "info": {k: v for k, v in self.info.items() if k != "path"}, "layers": sorted(self.layers)}
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"mkv": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> "Capture":
        """Read a capture written by :meth:`save`; checked against ``model`` when given."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no capture of layer inputs at {path}")
        header, tensors = read_safetensors(path)
        meta = json.loads(header.get("mkv", "{}"))
        if meta.get("format") != CAPTURE_FORMAT:
            raise ValueError(f"{path} is not a capture of layer inputs (format {meta.get('format')!r}, "
                             f"expected {CAPTURE_FORMAT!r})")
        layers = {int(l): LayerInputs(tensors[f"layer{l}.query"], tensors[f"layer{l}.key"],
                                      tensors[f"layer{l}.value"]) for l in meta["layers"]}
        capture = cls(layers, meta["identity"], dict(meta["info"], path=str(path)))
        if model is not None:
            capture.check_model(model)
        return capture

    def stats(self):
        """:class:`~mkvlib.core.stats.KVStats` (keys, values and grouped queries; no pre-RoPE keys) of the captured
        layers, computed from the stored tensors; layers not captured have no tokens."""
        from ..core.stats import KVStats

        geom = KVGeometry(**self.identity["geometry"])
        stats = KVStats.zeros(geom, with_queries=True, model=self.identity["model"], **self.info)
        for layer, x in self.layers.items():
            for start in range(0, x.key.shape[0], 8):
                stats.keys.update(layer, x.key[start:start + 8])
                stats.values.update(layer, x.value[start:start + 8])
                stats.queries.update_grouped(layer, x.query[start:start + 8])
        return stats


class _Enough(Exception):
    """Raised inside the forward pass once the last layer wanted has been captured."""


def parse_layers(spec, n_layers: int) -> list[int]:
    """'0-9,12' (or a list of ints, or None for all) as a sorted list of layer indices, checked against L."""
    if spec is None:
        return list(range(n_layers))
    if isinstance(spec, str):
        out = set()
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            try:
                if "-" in part:
                    lo, hi = (int(x) for x in part.split("-", 1))
                    if hi < lo:
                        raise ValueError
                    out.update(range(lo, hi + 1))
                else:
                    out.add(int(part))
            except ValueError:
                raise ValueError(f"layers must look like 0-9,12 (ranges and single layers), not {spec!r}") from None
        spec = out
    layers = sorted({int(l) for l in spec})
    if not layers:
        raise ValueError("no layers given: name at least one (e.g. 0-9,12)")
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist: this model has layers 0-{n_layers - 1}")
    return layers


@torch.no_grad()
def capture_layer_inputs(model, blocks: torch.Tensor, layers=None, batch_size: int = 4,
                         dtype: torch.dtype = torch.float16, progress=None, positions: str = "spread",
                         **info) -> Capture:
    """Run the uncompressed ``model`` once over ``blocks`` (N, T) and keep the attention inputs of ``layers``.

    Blocks are full-length sequences without padding (plain causal attention). Tensors are stored in ``dtype``
    (float16 by default: about 2 (H + 2G) d bytes per token and layer) on the CPU; a value outside float16's
    range is an error that names bfloat16. The forward pass stops after the last layer wanted. ``progress``: a
    callable given a line of text, or None. ``positions``: 'spread' (each block at a seeded random offset over
    the context window, so post-RoPE keys show every angle; :mod:`mkvlib.core.positions`) or 'start'.
    """
    geom = KVGeometry.of(model)
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be (N, T) token ids with T >= 2, not {tuple(blocks.shape)}")
    N, T = blocks.shape
    info = dict(info, tokens=int(N * T), seq_len=int(T), data=blocks_fingerprint(blocks), dtype=str(dtype),
                positions=positions)
    offsets = block_offsets(positions, N, T, model)
    if layers is not None and not isinstance(layers, str) and len(list(layers)) == 0:   # nothing left to capture
        return Capture({}, model_identity(model), dict(info, wall_time_s=0.0))
    layers = parse_layers(layers, geom.layers)
    store = {l: LayerInputs(torch.empty(N, geom.heads, T, geom.head_dim, dtype=dtype),
                            torch.empty(N, geom.kv_heads, T, geom.head_dim, dtype=dtype),
                            torch.empty(N, geom.kv_heads, T, geom.head_dim, dtype=dtype)) for l in layers}
    wanted, last = set(layers), max(layers)
    rows = slice(0, 0)

    def keep(module, query, key, value):
        layer = module.layer_idx
        if layer in wanted:
            for name, x in (("query", query), ("key", key), ("value", value)):
                y = x.detach().to("cpu", dtype)
                if not torch.isfinite(y).all():
                    raise ValueError(f"layer {layer}'s {name} does not fit in {dtype} (values up to "
                                     f"{float(x.abs().max()):.3g}): capture with dtype=torch.bfloat16")
                getattr(store[layer], name)[rows] = y
            if layer == last:
                raise _Enough
        return query, key, value

    device = next(model.parameters()).device
    t0 = time.perf_counter()
    with attention.install(model, hook=keep):
        for start in range(0, N, batch_size):
            rows = slice(start, min(N, start + batch_size))
            try:
                with shifted(model, None if offsets is None else offsets[rows]):
                    model(blocks[rows].to(device), use_cache=False)
            except _Enough:
                pass
            if progress is not None and (rows.stop == N or (start // batch_size) % 8 == 7):
                progress(f"captured {rows.stop}/{N} sequences ({time.perf_counter() - t0:.0f}s)")
    return Capture(store, model_identity(model), dict(info, wall_time_s=round(time.perf_counter() - t0, 1)))


# --- one layer's objective ---------------------------------------------------------------------------------

@dataclass
class LayerAttention:
    """What one layer's attention does beyond its inputs: scale, masks, logit soft-capping and ``o_proj``."""
    o_weight: torch.Tensor               # (hidden, H * d)
    scaling: float
    sliding_window: int | None = None
    softcap: float | None = None

    @classmethod
    def of(cls, model, layer: int) -> "LayerAttention":
        module = attention.attention_modules(model)[layer]
        geom = KVGeometry.of(model)
        window = (module.sliding_window if hasattr(module, "sliding_window")
                  else getattr(module.config, "sliding_window", None))
        scaling = getattr(module, "scaling", None)
        return cls(module.o_proj.weight.detach().float(), float(scaling if scaling is not None
                                                                 else geom.head_dim ** -0.5),
                   int(window) if window else None, getattr(module, "attn_logit_softcapping", None))

    def output(self, query, key, value, positions=None) -> torch.Tensor:
        """``o_proj`` (without bias) of the causal attention output, (B, Tq, hidden), for queries (B, H, Tq, d)
        at ``positions`` (Tq,) (default 0..T-1) over keys and values (B, G, S, d); head h uses KV head h // (H/G)."""
        B, H, Tq, d = query.shape
        G, S = key.shape[1], key.shape[2]
        q = query.reshape(B, G, H // G, Tq, d)
        scores = torch.einsum("bgrtd,bgsd->bgrts", q, key) * self.scaling
        if self.softcap:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        pos = torch.arange(Tq, device=key.device) if positions is None else positions.to(key.device)
        kpos = torch.arange(S, device=key.device)
        allowed = kpos[None, :] <= pos[:, None]
        if self.sliding_window:
            allowed &= kpos[None, :] > pos[:, None] - self.sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.einsum("bgrts,bgsd->bgrtd", torch.softmax(scores, dim=-1), value)
        return F.linear(out.reshape(B, H, Tq, d).transpose(1, 2).reshape(B, Tq, H * d), self.o_weight)


def compress_kv(key, value, uk, uv, value_mean, ranks):
    """Keys P_K k and values P_V (v - mu) + mu per KV head by :class:`~mkvlib.core.compress.Compression`'s own
    operators, for bases (G, d, d), means (G, d) and ranks (G, 2); an entry at full rank d passes through unchanged
    (exact)."""
    k, v = project_kv(key, value, *projectors(uk, uv, ranks), value_mean)
    full = (ranks.to(uk.device) >= uk.shape[-1])[None, :, :, None, None]   # (1, G, 2, 1, 1)
    return torch.where(full[:, :, 0], key, k), torch.where(full[:, :, 1], value, v)


def layer_objective(attn: LayerAttention, query, key, value, uk, uv, value_mean, ranks, positions=None,
                    target=None) -> torch.Tensor:
    """||W_o (o_c - o)||^2 / ||W_o o||^2 over the batch: the compressed layer's error relative to its output's
    energy (o at ``positions`` of the query; ``target`` = the uncompressed W_o o when already computed)."""
    q = query.index_select(2, positions) if positions is not None else query
    if target is None:
        with torch.no_grad():
            target = attn.output(q, key, value, positions)
    k, v = compress_kv(key, value, uk, uv, value_mean, ranks)
    out = attn.output(q, k, v, positions)
    return (out - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-30)


# --- fitting -----------------------------------------------------------------------------------------------

@dataclass
class LayerwiseConfig:
    """Settings of the per-layer fits.

    steps: AdamW steps per layer; lr / warmup_steps / min_lr_ratio: linear warm-up then cosine decay to
    ``lr * min_lr_ratio``; batch_size: captured sequences per step; queries: query positions drawn per sequence
    and step (None: all; the keys and values of the whole sequence are always used); rank_samples: rank draws
    averaged per step; schedule: ranks sampled (default {d/8, ..., d}); eval_sequences: sequences of the capture
    on which the objective at a 50% uniform budget is reported before and after each fit.
    """
    steps: int = 200
    lr: float = 5e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 2
    queries: int | None = 128
    rank_samples: int = 1
    schedule: tuple | None = None
    seed: int = 0
    eval_sequences: int = 2

    def __post_init__(self):
        def need(cond, msg):
            require("LayerwiseConfig", cond, msg)

        check_counts("LayerwiseConfig", self, ("steps", "batch_size", "rank_samples", "eval_sequences"), minimum=1)
        check_counts("LayerwiseConfig", self, ("warmup_steps",), minimum=0)
        need(self.queries is None or (isinstance(self.queries, int) and self.queries >= 1),
             f"queries must be a positive integer or None, not {self.queries!r}")
        need(self.lr > 0, f"lr must be positive, not {self.lr}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], not {self.min_lr_ratio}")
        need(self.weight_decay >= 0 and self.grad_clip >= 0, "weight_decay and grad_clip must be >= 0")
        if self.schedule is not None:
            check_schedule(self.schedule)          # and against head_dim before the fits
            self.schedule = tuple(self.schedule)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class LayerFit:
    """One fitted layer: bases (G, d, d), objective at 50% uniform before / after, per-step losses, seconds."""
    layer: int
    keys: torch.Tensor
    values: torch.Tensor
    before: float
    after: float
    history: list
    wall_time: float


def _layer_seed(seed: int, layer: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (layer + 1)) % (2 ** 63)


def _rows(inputs: LayerInputs, rows, device) -> list[torch.Tensor]:
    """query (n, H, T, d), key and value (n, G, T, d) of the captured sequences ``rows``, float32 on ``device``."""
    return [getattr(inputs, n)[rows].to(device, torch.float32) for n in ("query", "key", "value")]


def _draw_batch(inputs: LayerInputs, c: LayerwiseConfig, gen: torch.Generator, device):
    """A training batch: (q, k, v) of ``c.batch_size`` random captured sequences, and ``c.queries`` sorted random
    query positions (None: all)."""
    N, _, T, _ = inputs.key.shape
    rows = torch.randint(N, (c.batch_size,), generator=gen)
    q, k, v = _rows(inputs, rows, device)
    positions = None
    if c.queries is not None and c.queries < T:
        positions = torch.randperm(T, generator=gen)[:c.queries].sort().values.to(device)
    return q, k, v, positions


def _batch_loss(attn: LayerAttention, batch, uk, uv, mu, sampler: RankSampler, rank_samples: int) -> torch.Tensor:
    """The layer objective on one batch, averaged over ``rank_samples`` sampled ranks."""
    q, k, v, positions = batch
    with torch.no_grad():
        target = attn.output(q.index_select(2, positions) if positions is not None else q, k, v, positions)
    return sum(layer_objective(attn, q, k, v, uk, uv, mu, sampler.sample()[0], positions, target)
               for _ in range(rank_samples)) / rank_samples


CHECKS_PER_FIT = 10     # held-out objective checks per layer fit; the best rotation seen (or the start) is kept


def fit_layer(inputs: LayerInputs, attn: LayerAttention, init_keys: torch.Tensor, init_values: torch.Tensor,
              value_mean: torch.Tensor, config: LayerwiseConfig | None = None, layer: int = 0,
              device=None) -> LayerFit:
    """Fit one layer's rotations (see the module docstring); deterministic given ``config.seed`` and ``layer``.

    The objective at 50% is checked on the evaluation sequences :data:`CHECKS_PER_FIT` times along the fit, and
    the best rotation seen is returned: the starting bases when no check beat them, so ``after <= before``."""
    c = config or LayerwiseConfig()
    t0 = time.perf_counter()
    device = torch.device(device or "cpu")
    N, G, T, d = inputs.key.shape
    sampler = RankSampler(KVGeometry(1, inputs.query.shape[1], G, d), c.schedule, seed=_layer_seed(c.seed, layer))
    gen = torch.Generator().manual_seed(_layer_seed(c.seed, layer) + 1)
    uk0, uv0 = init_keys.float().to(device), init_values.float().to(device)
    mu = value_mean.float().to(device)
    attn = LayerAttention(attn.o_weight.to(device), attn.scaling, attn.sliding_window, attn.softcap)
    a_k = torch.nn.Parameter(torch.zeros(G, d, d, device=device))
    a_v = torch.nn.Parameter(torch.zeros(G, d, d, device=device))
    opt = torch.optim.AdamW([a_k, a_v], lr=c.lr, weight_decay=c.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(c.warmup_steps, c.steps, c.min_lr_ratio))

    def bases():
        return uk0 @ cayley(skew(a_k)), uv0 @ cayley(skew(a_v))

    half = torch.full((G, 2), max(1, round(d / 2)), dtype=torch.long)
    ev = _rows(inputs, slice(0, min(N, c.eval_sequences)), device)
    with torch.no_grad():
        ev_target = attn.output(*ev)

    def evaluate():
        with torch.no_grad():
            return float(layer_objective(attn, *ev, *bases(), mu, half, target=ev_target))

    before = evaluate()
    best, best_bases = before, (uk0, uv0)          # the start counts: a fit never leaves a layer worse
    check_every = max(1, c.steps // CHECKS_PER_FIT)
    history = []
    for step in range(1, c.steps + 1):
        batch = _draw_batch(inputs, c, gen, device)
        loss = _batch_loss(attn, batch, *bases(), mu, sampler, c.rank_samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([a_k, a_v], c.grad_clip)
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if step % check_every == 0 or step == c.steps:
            now = evaluate()
            if now < best:
                with torch.no_grad():
                    best, best_bases = now, tuple(b.detach().clone() for b in bases())
    uk, uv = best_bases
    return LayerFit(layer, uk.cpu(), uv.cpu(), before, best, history, time.perf_counter() - t0)


def _layer_path(folder: Path, layer: int) -> Path:
    return Path(folder) / f"layer{layer:03d}.safetensors"


def _write_layer(folder: Path, fit: LayerFit, stamp: dict) -> Path:
    from safetensors.torch import save_file

    meta = dict(stamp, format=LAYER_FORMAT, layer=fit.layer, before=fit.before, after=fit.after,
                wall_time_s=round(fit.wall_time, 2), history=[round(x, 6) for x in fit.history])
    path = _layer_path(folder, fit.layer)
    with atomic_path(path) as tmp:
        save_file({"keys": fit.keys.contiguous(), "values": fit.values.contiguous()}, str(tmp),
                  metadata={"mkv": json.dumps(meta)})
    return path


def _read_layer(path: Path, stamp: dict) -> LayerFit:
    header, tensors = read_safetensors(path, "delete it to fit that layer again")
    meta = json.loads(header.get("mkv", "{}"))
    if meta.get("format") != LAYER_FORMAT:
        raise ValueError(f"{path} is not a layer-wise fit (format {meta.get('format')!r})")
    differ = [k for k in stamp if meta.get(k) != stamp[k]]
    if differ:
        raise ValueError(f"{path} was fitted with other {', '.join(differ)} "
                         f"({ {k: meta.get(k) for k in differ} }, here { {k: stamp[k] for k in differ} }): "
                         "resume with the same settings, or use another folder")
    return LayerFit(int(meta["layer"]), tensors["keys"], tensors["values"], float(meta["before"]),
                    float(meta["after"]), list(meta.get("history", [])), float(meta.get("wall_time_s", 0.0)))


def _layers_to_fit(model, capture: Capture, init: Projections, c: LayerwiseConfig, layers, folder) -> list[int]:
    """The layers to fit, after checking that the capture, the init and the schedule suit ``model`` and that the
    capture holds every layer ``folder`` does not already hold."""
    capture.check_model(model)
    init.check_model(model)
    geom = KVGeometry.of(model)
    check_schedule(default_schedule(geom.head_dim) if c.schedule is None else c.schedule, geom.head_dim)
    layers = parse_layers(sorted(capture.layers) if layers is None else layers, geom.layers)
    done = set(finished_layers(folder)) if folder is not None else set()
    missing = [l for l in layers if l not in capture.layers and l not in done]
    if missing:
        raise ValueError(f"layers {missing} are not in the capture (it holds {sorted(capture.layers)}): "
                         "capture them too")
    return layers


def _layerwise_record(init_name, init: Projections, stamp: dict, layers: list[int], resumed: list[int],
                      c: LayerwiseConfig, capture: Capture, fits: dict) -> dict:
    """The ``layerwise`` record of the result's meta: what was fitted from what, and the objective per layer."""
    return {
        "init": init_name, "init_fingerprint": stamp["init"], "init_kind": init.meta.get("kind"),
        "layers": layers, "resumed_layers": resumed, "steps_per_layer": c.steps, "config": c.to_dict(),
        "tokens": capture.tokens, "seq_len": capture.seq_len, "data_fingerprint": capture.info.get("data"),
        "corpus": capture.info.get("corpus"), "capture_wall_time_s": capture.info.get("wall_time_s"),
        "fit_wall_time_s": round(sum(f.wall_time for f in fits.values()), 1),
        "objective_at_50": {str(l): [round(f.before, 6), round(f.after, 6)] for l, f in fits.items()},
    }


def fit_layerwise(model, capture: Capture, init: Projections, config: LayerwiseConfig | None = None,
                  layers=None, folder=None, log=None, device=None, **meta) -> Projections:
    """Fit the rotations of ``layers`` (default: every captured layer) one layer at a time; return Projections.

    The capture must hold every layer to fit that ``folder`` does not already hold. Layers not fitted keep
    ``init``'s bases. With ``folder``, each finished layer is written there atomically and
    layers already there (fitted with the same init, data and settings; anything else is an error) are read back
    instead of fitted again: an interrupted run resumes where it stopped and ends with the same result.
    ``log``: a callable given one line per layer. ``init_name`` (how the init was named, e.g. "pca") goes into
    the record; other ``meta`` into the result's meta (e.g. corpus=...).
    """
    c = config or LayerwiseConfig()
    layers = _layers_to_fit(model, capture, init, c, layers, folder)
    device = device or next(model.parameters()).device
    stamp = {"init": init.fingerprint(), "data": capture.info.get("data"),
             "attention_hash": capture.identity["attention_hash"], "config": c.to_dict()}
    keys, values = init.keys.detach().float().clone(), init.values.detach().float().clone()
    fits, resumed = {}, []
    for i, layer in enumerate(layers):
        path = _layer_path(folder, layer) if folder is not None else None
        if path is not None and path.exists():
            fit = _read_layer(path, stamp)
            resumed.append(layer)
        else:
            fit = fit_layer(capture.layers[layer], LayerAttention.of(model, layer), init.keys[layer],
                            init.values[layer], init.value_mean[layer], c, layer, device)
            if path is not None:
                _write_layer(folder, fit, stamp)
        keys[layer], values[layer] = fit.keys, fit.values
        fits[layer] = fit
        if log is not None:
            log(f"layer {layer:>2} ({i + 1}/{len(layers)}): objective at 50% {fit.before:.4f} -> {fit.after:.4f} "
                f"({len(fit.history)} steps, {fit.wall_time:.1f}s{', resumed' if layer in resumed else ''})")
    record = _layerwise_record(meta.pop("init_name", None), init, stamp, layers, resumed, c, capture, fits)
    out_meta = dict(init.meta, kind="layerwise", model=init.meta.get("model") or capture.identity["model"],
                    layerwise=record, **meta)
    out_meta.pop("fingerprint", None)
    out_meta.pop("format", None)
    return Projections(keys, values, init.value_mean.detach().float().clone(), init.key_spectrum,
                       init.value_spectrum, out_meta)


def finished_layers(folder) -> list[int]:
    """Layers with a finished file in ``folder`` (none when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(p.stem[5:]) for p in folder.glob("layer[0-9][0-9][0-9].safetensors"))


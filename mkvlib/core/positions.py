"""Where in the context window a block of text sits: rotary positions shifted by an offset.

Keys are projected **after** RoPE, so what a key basis sees depends on the absolute positions of the text it is
fitted on. A block of 256 or 2,048 tokens fed from position 0 shows the slowly rotating RoPE pairs at a narrow
range of angles only; a basis fitted there collapses them onto one direction, and at position 4,000 the same
keys point elsewhere. The uncompressed model cannot tell: RoPE makes q.k depend on relative positions only,
so shifting a whole block changes nothing for it (up to rounding), while a post-RoPE projection sees new angles.

``spread`` positions put each block at a random offset in ``[0, max_positions - T]`` (seeded per block), so
statistics and training cover every angle the model can meet; ``shifted(model, offsets)`` does the shifting for
any forward pass (training, statistics, evaluation, generation) without changing the call sites.
Introduced in notebook 02.
"""
from __future__ import annotations

import contextlib

import torch

POSITION_MODES = ("start", "spread")


def check_mode(mode: str) -> str:
    if mode not in POSITION_MODES:
        raise ValueError(f"positions must be one of {', '.join(POSITION_MODES)}, not {mode!r}: 'start' feeds every "
                         f"block from position 0, 'spread' at a random offset over the model's context window")
    return mode


def max_positions(model) -> int:
    """The model's context window (``max_position_embeddings``)."""
    n = getattr(model.config, "max_position_embeddings", None)
    if not n:
        raise ValueError("the model's config has no max_position_embeddings: pass max_positions explicitly")
    return int(n)


def spread_offsets(n: int, seq_len: int, max_positions: int, seed: int = 0) -> torch.Tensor:
    """``n`` offsets (int64) uniform in ``[0, max_positions - seq_len]``, deterministic for ``seed``."""
    room = max_positions - seq_len
    if room < 0:
        raise ValueError(f"blocks of {seq_len} tokens do not fit in a context window of {max_positions}")
    return torch.randint(0, room + 1, (n,), generator=torch.Generator().manual_seed(seed))


def block_offsets(mode: str, n: int, seq_len: int, model, seed: int = 0) -> torch.Tensor | None:
    """Offsets for ``n`` blocks of ``seq_len`` tokens: None for 'start', :func:`spread_offsets` for 'spread'."""
    if check_mode(mode) == "start":
        return None
    return spread_offsets(n, seq_len, max_positions(model), seed)


@contextlib.contextmanager
def shifted(model, offsets):
    """Inside, every forward pass of ``model`` sees its position ids plus ``offsets``: one int for all rows, or a
    (B,) tensor, one per row of the batch. ``None`` or 0 changes nothing."""
    if offsets is None or (isinstance(offsets, int) and offsets == 0):
        yield
        return
    mods = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no rotary embedding module to shift positions in")
    off = offsets if isinstance(offsets, torch.Tensor) else torch.tensor([int(offsets)])
    off = off.long().reshape(-1, 1)

    def pre(_module, args, kwargs):
        if "position_ids" in kwargs:
            pos = kwargs["position_ids"]
            kwargs = dict(kwargs, position_ids=pos + off.to(pos.device))
        else:
            pos = args[1]
            args = (args[0], pos + off.to(pos.device), *args[2:])
        if off.shape[0] not in (1, pos.shape[0]) and pos.shape[0] != 1:
            raise ValueError(f"{off.shape[0]} offsets for a batch of {pos.shape[0]}")
        return args, kwargs

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in mods]
    try:
        yield
    finally:
        for h in handles:
            h.remove()

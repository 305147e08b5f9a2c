"""Test helpers: random orthogonal projections for any tiny model, and the skip mark for tests of the embedded model."""
import pytest
import torch

from mkvlib.core.geometry import KVGeometry
from mkvlib.core.projections import Projections


def random_projections(model, seed: int = 0, value_mean: bool = False) -> Projections:
    """Random orthonormal bases (L, G, d, d) from QR, tagged with the model's name."""
    geom = KVGeometry.of(model)
    g = torch.Generator().manual_seed(seed)
    shape = (geom.layers, geom.kv_heads, geom.head_dim, geom.head_dim)
    keys = torch.linalg.qr(torch.randn(shape, generator=g, dtype=torch.float64))[0].float()
    values = torch.linalg.qr(torch.randn(shape, generator=g, dtype=torch.float64))[0].float()
    mean = torch.randn(shape[:3], generator=g) if value_mean else torch.zeros(shape[:3])
    return Projections(keys, values, mean, meta={"model": model.mkv_name, "kind": "random"})


def embedded_available() -> bool:
    """Whether the embedded model's package is installed (tests of the real model skip without it)."""
    try:
        from mkvlib.models import embedded_gguf

        embedded_gguf()
        return True
    except Exception:  # noqa: BLE001
        return False


needs_model = pytest.mark.skipif(not embedded_available(), reason="embedded model package not installed")


class CharTok:
    """One token per character (code point mod 128, so a tiny model can read it); no chat template."""

    pad_token_id = 0

    def __call__(self, text, **kw):
        return {"input_ids": [ord(c) % 128 for c in text]}

    def decode(self, ids, **kw):
        return "".join(chr(i) for i in ids)


def random_ladder(model, seed: int, segment: int = 8, group: int = 16):
    """A ladder with widths drawn from every rung, sorted non-increasing along each basis, first segment kept."""
    from mkvlib import ladder as lad

    geom = KVGeometry.of(model)
    rungs = torch.tensor(lad.widths(32))
    shape = (geom.layers, geom.kv_heads, 2, geom.head_dim // segment)
    idx = torch.randint(0, len(rungs), shape, generator=torch.Generator().manual_seed(seed)).sort(-1).values
    bits = rungs[idx]
    bits[..., 0] = bits[..., 0].clamp_min(2)
    return lad.Ladder(bits, segment, group, 32)

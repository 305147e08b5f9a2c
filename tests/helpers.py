"""Test helpers: random orthogonal projections for any tiny model."""
import torch

from mkvlib.geometry import KVGeometry
from mkvlib.projections import Projections


def random_projections(model, seed: int = 0, value_mean: bool = False) -> Projections:
    """Random orthonormal bases (L, G, d, d) from QR, tagged with the model's name."""
    geom = KVGeometry.of(model)
    g = torch.Generator().manual_seed(seed)
    shape = (geom.layers, geom.kv_heads, geom.head_dim, geom.head_dim)
    keys = torch.linalg.qr(torch.randn(shape, generator=g, dtype=torch.float64))[0].float()
    values = torch.linalg.qr(torch.randn(shape, generator=g, dtype=torch.float64))[0].float()
    mean = torch.randn(shape[:3], generator=g) if value_mean else torch.zeros(shape[:3])
    return Projections(keys, values, mean, meta={"model": model.mkv_name, "kind": "random"})

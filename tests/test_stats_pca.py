"""KV statistics against brute force over stored tensors; PCA against numpy's SVD; projection files."""
import numpy as np
import pytest
import torch

from helpers import random_projections
from mkvlib.core import attention
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model
from mkvlib.core.pca import energy_rank, fit_pca
from mkvlib.core.projections import ProjectionMismatchError, Projections, resolve_projections
from mkvlib.core.positions import block_offsets, shifted
from mkvlib.core.stats import KVStats, collect_kv_stats


def test_streaming_statistics_equal_brute_force(any_model):
    blocks = torch.randint(0, 128, (5, 12), generator=torch.Generator().manual_seed(2))
    stats = collect_kv_stats(any_model, blocks, batch_size=2, progress=False)
    stored = {"keys": {}, "values": {}, "pre": {}}

    def keep(module, q, k, v):
        stored["keys"].setdefault(module.layer_idx, []).append(k.double())
        stored["values"].setdefault(module.layer_idx, []).append(v.double())
        return q, k, v

    geom = KVGeometry.of(any_model)
    hooks = []
    for m in attention.attention_modules(any_model):
        src = getattr(m, "k_norm", None) or m.k_proj
        if src is m.k_proj:  # (B, S, G*d)
            hooks.append(src.register_forward_hook(
                lambda mod, i, out, l=m.layer_idx: stored["pre"].setdefault(l, []).append(
                    out.double().reshape(out.shape[0], out.shape[1], geom.kv_heads, geom.head_dim).transpose(1, 2))))
        else:  # a key norm: recompute it from k_proj's output in the (B, G, S, d) layout
            hooks.append(m.k_proj.register_forward_hook(
                lambda mod, i, out, l=m.layer_idx, norm=src: stored["pre"].setdefault(l, []).append(norm(
                    out.reshape(out.shape[0], out.shape[1], geom.kv_heads, geom.head_dim)).double().transpose(1, 2))))
    # the statistics' blocks sit at seeded offsets over the context window ('spread' positions): the same here
    offsets = block_offsets("spread", len(blocks), blocks.shape[1], any_model)
    assert stats.info["positions"] == "spread" and offsets.unique().numel() > 1
    with torch.no_grad(), attention.install(any_model, hook=keep), shifted(any_model, offsets):
        any_model(blocks, use_cache=False)
    for h in hooks:
        h.remove()
    for name, moments in (("keys", stats.keys), ("values", stats.values), ("pre", stats.keys_pre_rope)):
        for layer in range(geom.layers):
            x = torch.cat(stored[name][layer], 0).permute(1, 0, 2, 3).reshape(geom.kv_heads, -1, geom.head_dim)
            n = x.shape[1]
            assert moments.count[layer] == n
            assert torch.allclose(moments.mean()[layer], x.mean(1), atol=1e-9)
            assert torch.allclose(moments.second_moment()[layer], x.transpose(1, 2) @ x / n, atol=1e-9)
    # RoPE moves keys: post- and pre-RoPE statistics differ
    assert not torch.allclose(stats.keys.second_moment(), stats.keys_pre_rope.second_moment())


def _stats_from_matrix(x: np.ndarray) -> KVStats:
    """KVStats for one layer and one KV head whose tokens are the rows of x (n, d)."""
    from mkvlib.core.geometry import KVGeometry as G

    stats = KVStats.zeros(G(1, 1, 1, x.shape[1]))
    t = torch.from_numpy(x)[None, None]              # (1, 1, n, d)
    for moments in (stats.keys, stats.keys_pre_rope, stats.values):
        moments.update(0, t[:, :, :7])
        moments.update(0, t[:, :, 7:])
    return stats


def _same_subspaces(a: np.ndarray, b: np.ndarray, ks) -> bool:
    return all(np.allclose(a[:, :k] @ a[:, :k].T, b[:, :k] @ b[:, :k].T, atol=1e-6) for k in ks)


def test_pca_agrees_with_numpy_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ np.diag([5, 3, 2, 1, 0.5, 0.1]) @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
    x = x + rng.normal(size=6) * 2                      # a mean, so centred and uncentred bases differ
    proj = fit_pca(_stats_from_matrix(x), center_keys=True, center_values=False)
    # keys: centred (covariance) PCA
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    assert np.allclose(proj.key_spectrum[0, 0].numpy(), s ** 2 / len(x), rtol=1e-5)
    assert _same_subspaces(proj.keys[0, 0].double().numpy(), vt.T, range(1, 6))
    # values: uncentred second moment
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    assert np.allclose(proj.value_spectrum[0, 0].numpy(), s ** 2 / len(x), rtol=1e-5)
    assert _same_subspaces(proj.values[0, 0].double().numpy(), vt.T, range(1, 6))
    assert torch.all(proj.value_mean == 0)


def test_pca_bases_are_orthonormal_and_sorted(any_model):
    blocks = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    proj = fit_pca(collect_kv_stats(any_model, blocks, progress=False), model_name=any_model.mkv_name)
    assert proj.orthogonality_error() <= 1e-5
    for spec in (proj.key_spectrum, proj.value_spectrum):
        assert torch.all(spec[..., :-1] >= spec[..., 1:])


def test_energy_rank():
    spec = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert energy_rank(spec, 0.4).item() == 1
    assert energy_rank(spec, 0.7).item() == 2
    assert energy_rank(spec, 1.0).item() == 4


def test_projection_file_round_trip_and_errors(llama, tmp_path):
    proj = random_projections(llama, value_mean=True)
    path = proj.save(tmp_path / "p.safetensors")
    back = Projections.load(path)
    assert torch.equal(back.keys, proj.keys) and torch.equal(back.value_mean, proj.value_mean)
    assert back.meta["model"] == llama.mkv_name and back.fingerprint() == proj.fingerprint()
    assert resolve_projections(str(path), llama).fingerprint() == proj.fingerprint()
    # another model: clear error
    other = tiny_model("qwen2", heads=4, kv_heads=1)
    with pytest.raises(ProjectionMismatchError, match="made for"):
        resolve_projections(str(path), other)
    # truncated file: clear error
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated|not a readable"):
        Projections.load(bad)
    with pytest.raises(FileNotFoundError):
        Projections.load(tmp_path / "missing.safetensors")
    # no partial file left by an interrupted write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors", "truncated.safetensors"]

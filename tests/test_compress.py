"""Simulated compression: exactness at full rank, agreement with an independent reduced-width oracle,
clean detach, generate(), and validation of ranks and projections."""
import math

import pytest
import torch

from helpers import random_projections
from mkvlib.core import attention
from mkvlib.compat import cache_kwargs
from mkvlib.core.compress import Projector, attach, cayley, skew
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model
from mkvlib.core.projections import ProjectionMismatchError


@torch.no_grad()
def test_full_rank_reproduces_base_logits(any_model, ids):
    base = any_model(ids).logits
    geom = KVGeometry.of(any_model)
    with attach(any_model, random_projections(any_model, value_mean=True), geom.head_dim):
        full = any_model(ids).logits
    assert (full - base).abs().max() <= 1e-4


@torch.no_grad()
def test_compression_changes_logits_below_full_rank(any_model, ids):
    base = any_model(ids).logits
    with attach(any_model, random_projections(any_model), 0.5):
        half = any_model(ids).logits
    assert (half - base).abs().max() > 1e-3


@torch.no_grad()
def test_detach_restores_model_exactly(any_model, ids):
    before = any_model(ids).logits
    impl = any_model.config._attn_implementation
    keys = set(any_model.state_dict())
    comp = attach(any_model, random_projections(any_model), 0.25)
    assert any_model.config._attn_implementation == attention.ATTN_NAME
    comp.detach()
    assert any_model.config._attn_implementation == impl
    assert set(any_model.state_dict()) == keys
    assert torch.equal(any_model(ids).logits, before)
    assert not any("_mkv_hooks" in m.__dict__ for m in any_model.modules())


def _oracle_attention(q, k, v, uk, uv, mu, ranks, scaling):
    """Reduced-width attention written out per query head: q U_K[:, :r], k U_K[:, :r], o~ U_V[:, :r]^T + mu."""
    B, H, T, d = q.shape
    G = k.shape[1]
    out = torch.zeros(B, H, T, d, dtype=torch.float64)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for h in range(H):
        g = h // (H // G)
        rk, rv = int(ranks[g, 0]), int(ranks[g, 1])
        qt, kt = q[:, h] @ uk[g, :, :rk], k[:, g] @ uk[g, :, :rk]
        vt = (v[:, g] - mu[g]) @ uv[g, :, :rv]
        scores = (qt @ kt.transpose(-1, -2)) * scaling
        weights = scores.masked_fill(~causal, -math.inf).softmax(-1)
        out[:, h] = (weights @ vt) @ uv[g, :, :rv].T + mu[g]
    return out


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_matches_reduced_width_oracle(heads, kv_heads):
    model = tiny_model("llama", heads=heads, kv_heads=kv_heads)
    proj = random_projections(model, seed=3, value_mean=True)
    g = torch.Generator().manual_seed(0)
    ranks = torch.randint(0, 17, (2, kv_heads, 2), generator=g)
    comp = attach(model, proj, ranks)
    module = attention.attention_modules(model)[0]
    q = torch.randn(2, heads, 7, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, kv_heads, 7, 16, generator=g, dtype=torch.float64)
    v = torch.randn(2, kv_heads, 7, 16, generator=g, dtype=torch.float64)
    out, _ = attention.mkv_attention(module, q.float(), k.float(), v.float(), None, scaling=module.scaling)
    expected = _oracle_attention(q, k, v, proj.keys[0].double(), proj.values[0].double(),
                                 proj.value_mean[0].double(), ranks[0], module.scaling)
    comp.detach()
    assert (out.double() - expected.transpose(1, 2)).abs().max() < 1e-4


@torch.no_grad()
def test_generate_while_attached_matches_plain_at_full_rank(llama):
    prompt = torch.tensor([[1, 5, 9, 2, 7]])
    plain = llama.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with attach(llama, random_projections(llama), 16):
        same = llama.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with attach(llama, random_projections(llama), 4):
        squeezed = llama.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(plain, same)
    assert squeezed.shape == plain.shape


@torch.no_grad()
def test_enabled_flag_gives_the_uncompressed_teacher(llama, ids):
    base = llama(ids).logits
    with attach(llama, random_projections(llama), 0.25) as comp:
        comp.enabled = False
        assert torch.equal(llama(ids).logits, base)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, -1, 17, torch.zeros(3, 2, 2, dtype=torch.long)])
def test_bad_ranks_are_clear_errors_and_change_nothing(llama, ids, bad):
    impl = llama.config._attn_implementation
    with pytest.raises(ValueError, match="budget|rank"):
        attach(llama, random_projections(llama), bad)
    assert llama.config._attn_implementation == impl
    with attach(llama, random_projections(llama), 8) as comp:
        before = comp.ranks.clone()
        with pytest.raises(ValueError):
            comp.set_ranks(bad)
        assert torch.equal(comp.ranks, before)


def test_projections_for_another_model_are_rejected(llama):
    other = tiny_model("llama", heads=4, kv_heads=1)
    impl = llama.config._attn_implementation
    with pytest.raises(ProjectionMismatchError, match="kv_heads"):
        attach(llama, random_projections(other), 0.5)
    renamed = random_projections(llama)
    renamed.meta["model"] = "some-other-model"
    with pytest.raises(ProjectionMismatchError, match="some-other-model"):
        attach(llama, renamed, 0.5)
    assert llama.config._attn_implementation == impl


def test_cayley_is_orthogonal_and_identity_at_zero():
    g = torch.Generator().manual_seed(0)
    a = skew(torch.randn(3, 8, 8, generator=g))
    q = cayley(a)
    assert (q.transpose(-1, -2) @ q - torch.eye(8)).abs().max() < 1e-5
    assert torch.equal(cayley(torch.zeros(2, 4, 4)), torch.eye(4).expand(2, 4, 4))


def test_trainable_projector_starts_at_init_and_gets_gradients(llama, ids):
    proj = random_projections(llama)
    projector = Projector(proj, trainable=True)
    uk, uv = projector.bases(0)
    assert torch.allclose(uk, proj.keys[0]) and torch.allclose(uv, proj.values[0])
    with attach(llama, projector, 6):
        llama(ids).logits.sum().backward()
    assert projector.key_rotation.grad is not None and projector.key_rotation.grad.abs().sum() > 0
    assert projector.value_rotation.grad.abs().sum() > 0


@torch.no_grad()
def test_recent_tokens_kept_whole_leave_early_positions_exact(any_model, ids):
    """With the last ``recent`` tokens whole, a query at position i < recent reads only whole tokens: exact; the
    first position that reads a compressed token (i = recent) is not."""
    base = any_model(ids).logits
    recent = 5
    with attach(any_model, random_projections(any_model), 0.25, keep_recent=recent):
        windowed = any_model(ids).logits
    assert (windowed[:, :recent] - base[:, :recent]).abs().max() <= 1e-4
    assert (windowed[:, recent] - base[:, recent]).abs().max() > 1e-3


@torch.no_grad()
def test_whole_tokens_everywhere_is_exact_and_none_is_plain_compression(llama, ids):
    base = llama(ids).logits
    with attach(llama, random_projections(llama), 0.25) as comp:
        plain = llama(ids).logits
        comp.keep_whole(first=ids.shape[1])
        assert (llama(ids).logits - base).abs().max() <= 1e-4
        comp.keep_whole(first=2, recent=3)
        mixed = llama(ids).logits
        comp.keep_whole()
        assert torch.equal(llama(ids).logits, plain)
    assert (mixed - base).abs().max() > 1e-3 and (mixed - plain).abs().max() > 1e-3
    assert torch.equal(llama(ids).logits, base)


@torch.no_grad()
def test_whole_tokens_decode_step_by_step_as_in_one_pass(llama, ids):
    """The same window read by a decoding query (T=1 over a cache) and by the one-pass forward."""
    with attach(llama, random_projections(llama), 0.25, keep_first=2, keep_recent=4):
        one_pass = llama(ids).logits[:, -1]
        out = llama(ids[:, :-1], use_cache=True)
        stepped = llama(ids[:, -1:], **cache_kwargs(out.past_key_values), use_cache=True).logits[:, -1]
    assert (one_pass - stepped).abs().max() <= 1e-4


def test_whole_token_bytes_and_bad_counts():
    from mkvlib.core.ranks import budget_for_bytes, stored_fraction

    assert stored_fraction(0.5, 512, 4, 28) == pytest.approx(0.5 + 32 / 512)
    assert stored_fraction(0.25, 16, 8, 20) == pytest.approx(0.25 + 24 / 16)
    budget = budget_for_bytes(0.5, 512, 4, 28)
    assert stored_fraction(budget, 512, 4, 28) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cannot hold"):
        budget_for_bytes(0.05, 512, 4, 28)
    with pytest.raises(ValueError, match="keep_recent must be a whole number"):
        stored_fraction(0.5, 512, 0, -1)

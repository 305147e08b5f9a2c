"""Rotary positions shifted by an offset: exact against explicit position ids, invisible to the uncompressed model,
visible to a post-RoPE projection, and used by training, statistics and layer capture."""
import pytest
import torch

from mkvlib.core import attention
from mkvlib.core.compress import attach
from mkvlib.models import tiny_model
from mkvlib.core.positions import block_offsets, check_mode, max_positions, shifted, spread_offsets
from mkvlib.training import TrainConfig, Trainer
from mkvlib.training.layerwise import capture_layer_inputs

from helpers import random_projections

torch.set_num_threads(2)


def _blocks(n=4, t=16, seed=0):
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model():
    return tiny_model("llama", heads=4, kv_heads=2)


@torch.no_grad()
def test_shift_equals_explicit_position_ids_and_none_changes_nothing(model):
    ids = _blocks(3, 12)
    off = torch.tensor([0, 7, 300])
    with shifted(model, off):
        a = model(ids).logits
    b = model(ids, position_ids=torch.arange(12)[None] + off[:, None]).logits
    assert torch.equal(a, b)
    plain = model(ids).logits
    with shifted(model, None), shifted(model, 0):
        assert torch.equal(model(ids).logits, plain)
    with shifted(model, 300):   # one int for every row
        assert torch.allclose(model(ids).logits[2], a[2], atol=1e-6)
    assert torch.equal(model(ids).logits, plain)   # the hook is gone on exit


@torch.no_grad()
def test_uncompressed_model_cannot_tell_but_a_post_rope_projection_can(model):
    ids = _blocks(2, 16)
    far = max_positions(model) - 16
    base = model(ids).logits
    with shifted(model, far):
        assert torch.allclose(model(ids).logits, base, atol=1e-4)   # RoPE: q.k depends on relative positions only
    with attach(model, random_projections(model), 0.5):
        near = model(ids).logits
        with shifted(model, far):
            moved = model(ids).logits
    assert (near - moved).abs().max() > 1e-3


def test_spread_offsets_are_seeded_and_inside_the_window(model):
    a = spread_offsets(64, 100, 1000, seed=3)
    assert torch.equal(a, spread_offsets(64, 100, 1000, seed=3)) and not torch.equal(a, spread_offsets(64, 100, 1000, 4))
    assert int(a.min()) >= 0 and int(a.max()) <= 900 and a.unique().numel() > 32
    assert block_offsets("start", 4, 16, model) is None
    assert block_offsets("spread", 4, 16, model).shape == (4,)
    with pytest.raises(ValueError, match="do not fit"):
        spread_offsets(2, 2000, 1000)
    with pytest.raises(ValueError, match="spread"):
        check_mode("middle")
    with pytest.raises(ValueError, match="positions"):
        TrainConfig.fast(positions="middle")


def _seen_positions(model):
    """Record the position ids every rotary embedding is called with."""
    seen = []
    mods = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]

    def hook(_m, args, kwargs, out):
        seen.append((kwargs.get("position_ids", args[1] if len(args) > 1 else None)).clone())
    return seen, [m.register_forward_hook(hook, with_kwargs=True) for m in mods]


def test_trainer_feeds_each_block_at_its_offset_teacher_and_student_alike(model):
    blocks = _blocks(8, 16)
    trainer = Trainer(model, random_projections(model), blocks, TrainConfig.fast(steps=2, batch_size=2))
    offsets = trainer.micro_offsets(0)
    assert offsets.shape == (2,) and torch.equal(offsets, trainer.micro_offsets(0))
    assert not torch.equal(trainer.micro_offsets(0), trainer.micro_offsets(4))   # a new epoch, new offsets
    seen, handles = _seen_positions(model)
    trainer.train_step()
    for h in handles:
        h.remove()
    expect = torch.arange(16)[None] + offsets[:, None]
    assert len(seen) == 2 and all(torch.equal(s.expand_as(expect), expect) for s in seen)   # teacher, student
    start = Trainer(model, random_projections(model), blocks, TrainConfig.fast(steps=2, batch_size=2,
                                                                               positions="start"))
    assert start.micro_offsets(0) is None


def test_capture_and_statistics_record_their_positions(model):
    from mkvlib.core.stats import collect_kv_stats

    blocks = _blocks(4, 16)
    spread = capture_layer_inputs(model, blocks, [0], dtype=torch.float32)
    start = capture_layer_inputs(model, blocks, [0], dtype=torch.float32, positions="start")
    assert spread.info["positions"] == "spread" and start.info["positions"] == "start"
    assert torch.equal(spread.layers[0].value, start.layers[0].value)        # values carry no position
    assert not torch.allclose(spread.layers[0].key, start.layers[0].key)     # post-RoPE keys do
    assert collect_kv_stats(model, blocks, progress=False, positions="start").info["positions"] == "start"


def test_layer_inputs_are_the_hook_inputs_at_the_same_offsets(model):
    blocks = _blocks(2, 16)
    cap = capture_layer_inputs(model, blocks, [1], dtype=torch.float32)
    got = {}

    def keep(module, q, k, v):
        if module.layer_idx == 1:
            got["k"] = k
        return q, k, v
    with torch.no_grad(), attention.install(model, hook=keep), shifted(model, block_offsets("spread", 2, 16, model)):
        model(blocks)
    assert torch.allclose(got["k"], cap.layers[1].key, atol=1e-6)

"""Shared fixtures: tiny random models over architectures and head layouts (MHA, GQA, MQA)."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mkvlib.models import tiny_model  # noqa: E402

# (architecture, query heads, KV heads): MHA, GQA and MQA across the four supported architectures
LAYOUTS = [("llama", 4, 4), ("llama", 4, 2), ("mistral", 4, 1), ("qwen2", 4, 2), ("gemma3", 4, 2), ("gemma3", 2, 1)]
LAYOUT_IDS = [f"{a}-h{h}-g{g}" for a, h, g in LAYOUTS]


@pytest.fixture(params=LAYOUTS, ids=LAYOUT_IDS)
def any_model(request):
    arch, heads, kv = request.param
    return tiny_model(arch, heads=heads, kv_heads=kv)


@pytest.fixture
def llama():
    return tiny_model("llama", heads=4, kv_heads=2)


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (3, 24), generator=g)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread avoids spin-waiting on a busy CPU (30x faster there); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

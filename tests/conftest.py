"""Shared fixtures: tiny random models over architectures and head layouts (MHA, GQA, MQA), and the data folder.

Tests never use the network: Hugging Face is offline here (set before ``mkvlib`` is imported, so no Hub probe runs).
Tests that need the data folder (``MKV_DATA_DIR``) carry ``@pytest.mark.needs_data`` or take the ``data_folder``
fixture, and are skipped with the reason below when it is absent.
"""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mkvlib.corpora import data_dir  # noqa: E402
from mkvlib.models import tiny_model  # noqa: E402

NO_DATA = ("needs the data folder: set MKV_DATA_DIR to a folder laid out like the project's shared data folder "
           "(wikitext2/, piqa/, arc_easy/, hellaswag/)")


def data_folder_present() -> bool:
    """True when ``MKV_DATA_DIR`` names an existing folder (unset or empty: no data folder)."""
    root = data_dir()
    return root is not None and root.is_dir()


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_data: needs the data folder (MKV_DATA_DIR); skipped without it")


def pytest_collection_modifyitems(config, items):
    if data_folder_present():
        return
    skip = pytest.mark.skip(reason=NO_DATA)
    for item in items:
        if "needs_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_folder():
    """The data folder (a Path), or skip the test with a clear reason."""
    if not data_folder_present():
        pytest.skip(NO_DATA)
    return data_dir()

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


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """A tiny random model with a byte tokenizer saved as a folder (what --model takes), and PCA for it
    (pca.safetensors inside). Read it, never write into it: it is shared by the whole session."""
    from mkvlib.fullrun.tiny import tiny_pair
    from mkvlib.core.pca import fit_pca
    from mkvlib.core.stats import collect_kv_stats

    folder = tmp_path_factory.mktemp("models") / "tinymodel"
    model, tokenizer = tiny_pair(seed=3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    blocks = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    fit_pca(collect_kv_stats(model, blocks, progress=False), model_name="tinymodel").save(folder / "pca.safetensors")
    return folder

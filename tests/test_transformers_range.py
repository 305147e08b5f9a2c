"""The transformers range of pyproject.toml: the installed version is inside it, the cache keyword fits the version,
and generate/forward with a CompressedCache print no deprecation of ``past_key_values``.

``.ci/transformers-ends`` runs this file (with test_cache.py and test_compress.py) against the range's lower end;
the project's environment holds the upper end.
"""
import re
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from packaging.requirements import Requirement
from packaging.version import Version
from transformers import DynamicCache

from mkvlib.core.cache import CompressedCache
from mkvlib.compat import cache_argument, cache_kwargs
from mkvlib.core.compress import attach
from mkvlib.core.geometry import KVGeometry
from mkvlib.models import tiny_model
from mkvlib.core.projections import Projections

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
CACHE_RENAMED_IN = Version("5.24.0.dev0")  # the first release whose generate/forward take `cache=`


def transformers_requirement() -> Requirement:
    """The ``transformers`` entry of pyproject.toml's dependencies."""
    text = PYPROJECT.read_text()
    found = re.findall(r'^\s*"(transformers[^"]*)"', text, flags=re.M)
    assert len(found) == 1, f"pyproject.toml should list transformers once among the dependencies, found {found}"
    return Requirement(found[0])


def test_installed_transformers_is_inside_the_declared_range():
    spec = transformers_requirement().specifier
    assert spec, "pyproject.toml should bound transformers below and above"
    assert any(s.operator == ">=" for s in spec) and any(s.operator == "<" for s in spec), str(spec)
    assert spec.contains(transformers.__version__, prereleases=True), \
        f"transformers {transformers.__version__} is outside pyproject.toml's range {spec}"


def test_lower_end_of_the_ci_script_is_the_declared_lower_end():
    script = (PYPROJECT.parent / ".ci" / "transformers-ends").read_text()
    pinned = re.search(r"transformers==([0-9.]+)", script)
    assert pinned, ".ci/transformers-ends should pin the lower-end transformers"
    lower = next(s.version for s in transformers_requirement().specifier if s.operator == ">=")
    assert Version(pinned.group(1)) == Version(lower), (pinned.group(1), lower)


def test_cache_keyword_follows_the_version():
    expected = "cache" if Version(transformers.__version__) >= CACHE_RENAMED_IN else "past_key_values"
    assert cache_argument() == expected
    marker = object()
    assert cache_kwargs(marker) == {expected: marker}


def random_projections(model, seed=0):
    g = KVGeometry.of(model)
    gen = torch.Generator().manual_seed(seed)
    shape = (g.layers, g.kv_heads, g.head_dim, g.head_dim)
    keys, values = (torch.linalg.qr(torch.randn(shape, generator=gen))[0] for _ in range(2))
    return Projections(keys, values, torch.randn(shape[:3], generator=gen) * 0.3, meta={"model": model.mkv_name})


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_generate_and_forward_with_compressed_cache_warn_nothing_about_past_key_values(arch):
    model = tiny_model(arch, heads=4, kv_heads=2)
    proj, ranks = random_projections(model), 0.5
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5, do_sample=False,
              pad_token_id=0)
    cache = CompressedCache(model, proj, ranks)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        # other libraries' deprecations (torch.jit, ...) are not this test's subject
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="(?!.*past_key_values)")
        warnings.filterwarnings("ignore", category=FutureWarning, message="(?!.*past_key_values)")
        got = model.generate(ids, **cache_kwargs(cache), **kw)
        with torch.no_grad():
            step = CompressedCache(model, proj, ranks)
            model(ids, **cache_kwargs(step), use_cache=True)
            model(ids[:, :1], attention_mask=torch.ones(2, 8, dtype=torch.long), **cache_kwargs(step), use_cache=True)
    assert got.shape == (2, 12)
    assert cache.get_seq_length() == 11 and step.get_seq_length() == 8   # the last new token is not cached
    with attach(model, proj, ranks):
        expected = model.generate(ids, **cache_kwargs(DynamicCache(config=model.config)), **kw)
    assert torch.equal(got, expected)


def test_the_old_keyword_does_warn_on_new_transformers():
    """The check above can fail: on 5.24+ the old keyword prints the FutureWarning it guards against."""
    if cache_argument() != "cache":
        pytest.skip(f"transformers {transformers.__version__} knows only past_key_values")
    model = tiny_model("llama", heads=4, kv_heads=2)
    ids = torch.randint(3, 100, (1, 5))
    with pytest.warns(FutureWarning, match="past_key_values"), torch.no_grad():
        model(ids, past_key_values=DynamicCache(config=model.config), use_cache=True)


"""The one place that knows which keyword hands a KV cache to a transformers model.

transformers 5.24 renamed the argument ``past_key_values`` of ``generate`` and of every model's ``forward`` to
``cache``; the old name still works there but prints a FutureWarning (``forward`` drops it in 5.40, ``generate``
in 6.0), while 5.23 and older know only ``past_key_values``. Every call in mkvlib that passes a cache goes
through :func:`cache_kwargs`:

    model(ids, **cache_kwargs(cache), use_cache=True)
    model.generate(ids, **cache_kwargs(cache), max_new_tokens=8)

The choice is made once, from the signature of ``GenerationMixin.prepare_inputs_for_generation`` (what
``generate`` passes to ``forward``), not from a version number, so development builds are judged by what they do.
"""
from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=1)
def cache_argument() -> str:
    """``"cache"`` when this transformers takes the cache under that name (5.24 and later), else
    ``"past_key_values"``."""
    from transformers.generation.utils import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(cache) -> dict:
    """``{name: cache}`` with the name this transformers expects, for ``model(...)`` and ``model.generate(...)``."""
    return {cache_argument(): cache}

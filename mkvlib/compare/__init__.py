"""The comparison bench: MatryoshkaKV against the other ways to shrink a KV cache, at matched real bytes.

:mod:`mkvlib.compare.base` defines the interface (methods, settings, byte reports, runners);
:mod:`mkvlib.compare.methods` holds the methods, one module each, all registered in :data:`REGISTRY` on import:
``uncompressed``, ``pca``, ``matryoshka``, ``svd``, ``think``, ``quant``, ``streaming``, ``snapkv``,
``matryoshka+quant``, ``streaming+matryoshka``.
"""
from . import methods  # noqa: F401  (importing the methods registers them)
from .base import REGISTRY, BytesUnreachableError, Runner, at_bytes, full_bytes_per_token, get_method  # noqa: F401

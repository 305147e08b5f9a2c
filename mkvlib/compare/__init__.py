"""The comparison bench: MatryoshkaKV against the other ways to shrink a KV cache, at matched real bytes.

:mod:`mkvlib.compare.base` defines the interface (methods, settings, byte reports, runners);
:mod:`mkvlib.compare.methods` holds the methods, one module each, all registered in :data:`REGISTRY` on import.
"""
from .base import (REGISTRY, ByteReport, BytesUnreachableError, KVMethod, Runner, Setting, at_bytes,
                   full_bytes_per_token, get_method, register)
from .methods import PCA, Matryoshka, ProjectionMethod

__all__ = ["REGISTRY", "ByteReport", "BytesUnreachableError", "KVMethod", "Runner", "Setting", "at_bytes",
           "full_bytes_per_token", "get_method", "register", "PCA", "Matryoshka", "ProjectionMethod"]

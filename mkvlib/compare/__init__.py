"""The comparison bench: MatryoshkaKV against the other ways to shrink a KV cache, at matched real bytes.

:mod:`mkvlib.compare.base` defines the interface (methods, settings, byte reports, runners).
"""
from .base import (REGISTRY, ByteReport, BytesUnreachableError, KVMethod, Runner, Setting, at_bytes,
                   full_bytes_per_token, get_method, register)

__all__ = ["REGISTRY", "ByteReport", "BytesUnreachableError", "KVMethod", "Runner", "Setting", "at_bytes",
           "full_bytes_per_token", "get_method", "register"]

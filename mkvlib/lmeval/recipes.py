"""Readable names for the set-ups in accuracy tables: how the projections were made and how ranks were chosen.

A results row records its projections by fingerprint and its adaptive ranks by a digest; a reader wants the
recipe. Projections shipped under ``data/projections/`` are named from their own file ("PCA", "MatryoshkaKV
trained"); projections that have left the tree are named below by how they were made, as their records said when
they were committed (git history keeps the files). Used by notebooks 04 and 06 and by the generated docs.
"""
from __future__ import annotations

import json
import struct

from ..projections import SHIPPED, shipped_path
from ..results_store import BASELINE

SHIPPED_NAMES = {"pca": "PCA", "trained": "MatryoshkaKV trained"}

# fingerprint -> recipe, for projections no longer in data/projections/ whose rows remain in data/results/
EARLIER = {
    "6cc7201ebcc3d7c3": "trained 180 steps on WikiText + Wikipedia",
    "d409a853eb79f6fc": "trained 480 steps on WikiText, Wikipedia, C4",
    "37338d89d46168ec": "trained 980 steps on WikiText, Wikipedia, C4",
    "216e18ec88005d87": "trained from position 0 on diverse text",
    "52190afbf18f313e": "trained on spread positions, without recall blocks",
}
# how each earlier recipe was trained, in full (for the generated docs)
EARLIER_DETAILS = {
    "6cc7201ebcc3d7c3": "from PCA, 180 steps of 2 x 256 tokens of WikiText-2 validation and Wikipedia, "
                        "KD : LM = 3 : 1, every block from position 0",
    "d409a853eb79f6fc": "the 180-step projections, then 300 KD-only steps of 2 x 256 tokens of C4, Wikipedia and "
                        "WikiText-2 validation",
    "37338d89d46168ec": "the 480-step projections, then 500 more KD-only steps on the same three corpora",
    "216e18ec88005d87": "layer-wise warm start from the query-aware basis, then KD-only steps on 2,048-token blocks "
                        "of the diverse mixture, every block from position 0",
    "52190afbf18f313e": "layer-wise warm start, then 120 KD-only steps on 2,048-token blocks of the diverse mixture "
                        "at spread positions",
}
UNCOMPRESSED = ("none", BASELINE, "")   # how a row without projections names them


def _header_fingerprint(path) -> str | None:
    """The fingerprint in a projections file's header (read without loading its tensors)."""
    with open(path, "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(size))
    meta = (header.get("__metadata__") or {}).get("mkv")
    return json.loads(meta).get("fingerprint") if meta else None


def shipped_kind(fingerprint: str, model: str = "SmolLM2-135M-Instruct") -> str | None:
    """'pca' or 'trained' when ``fingerprint`` is that of the projections shipped for ``model``, else None."""
    for kind in SHIPPED:
        path = shipped_path(kind, model)
        if path.is_file() and _header_fingerprint(path) == fingerprint:
            return kind
    return None


def recipe(fingerprint: str, model: str = "SmolLM2-135M-Instruct") -> str:
    """How the projections with ``fingerprint`` were made, in words: 'PCA', 'MatryoshkaKV trained' (the shipped
    ones), or an earlier recipe; 'uncompressed' for no projections. Unknown projections are a KeyError."""
    if fingerprint in UNCOMPRESSED:
        return "uncompressed"
    kind = shipped_kind(fingerprint, model)
    if kind is not None:
        return SHIPPED_NAMES[kind]
    if fingerprint in EARLIER:
        return EARLIER[fingerprint]
    raise KeyError(f"projections {fingerprint} are neither shipped for {model} nor among the earlier recipes "
                   f"of mkvlib.lmeval.recipes: add how they were made to EARLIER")


def ranks_words(allocation: str) -> str:
    """'uniform ranks' or 'searched ranks' (adaptive: from a greedy-search trajectory)."""
    if allocation in UNCOMPRESSED or allocation == "full":
        return ""
    return "searched ranks" if str(allocation).startswith("adaptive") else "uniform ranks"


def setup_name(fingerprint: str, allocation: str, model: str = "SmolLM2-135M-Instruct") -> str:
    """'<recipe>, <uniform | searched> ranks', or 'uncompressed'."""
    name = recipe(fingerprint, model)
    return name if name == "uncompressed" else f"{name}, {ranks_words(allocation)}"


def shipped_fingerprint(kind: str = "trained", model: str = "SmolLM2-135M-Instruct") -> str | None:
    """The fingerprint of the projections shipped as ``kind`` ('pca' or 'trained') for ``model`` (None: none)."""
    path = shipped_path(kind, model)
    return _header_fingerprint(path) if path.is_file() else None

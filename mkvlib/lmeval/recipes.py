"""Readable names for the set-ups in accuracy tables: how the projections were made and how ranks were chosen.

A results row records its projections by fingerprint and its adaptive ranks by a digest; a reader wants the
recipe. Projections shipped under ``data/projections/`` are named from their own file ("PCA", "MatryoshkaKV
trained"); projections that have left the tree are named below by how they were made, as their records said when
they were committed (git history keeps the files), and so are the variants an experiment made and measured without
committing them (the training routes of ``ood_routes.json``, the position variants of ``positions.json``), as
their results files record them. Used by notebooks 04 and 06, by the generated docs and by
tests/test_result_labels.py, which checks that every fingerprint in data/results/ is named.
"""
from __future__ import annotations

import json
import struct

from ..core.projections import SHIPPED, shipped_path
from ..results_store import BASELINE

SHIPPED_NAMES = {"pca": "PCA", "trained": "MatryoshkaKV trained"}

# fingerprint -> recipe, for projections not in data/projections/ whose rows remain in data/results/: shipped once,
# or made for one experiment and never committed
UNSHIPPED = {
    "6cc7201ebcc3d7c3": "trained 180 steps on WikiText + Wikipedia",
    "d409a853eb79f6fc": "trained 480 steps on WikiText, Wikipedia, C4",
    "37338d89d46168ec": "trained 980 steps on WikiText, Wikipedia, C4",
    "216e18ec88005d87": "trained from position 0 on diverse text",
    "52190afbf18f313e": "trained on spread positions, without recall blocks",
    # training routes (data/results/ood_routes.json)
    "ec535adfc4dd1ea9": "query-aware key basis, closed form",
    "fd6d9f0ca6aeb977": "layer-wise from PCA, 250 steps per layer",
    "42a617b688a4d81c": "layer-wise from the query-aware basis, 250 steps per layer",
    "2501cd0369080489": "40 KD-only steps from PCA on diverse text",
    "105df69a052d2548": "40 steps from PCA on diverse text, KD : LM = 3 : 1",
    "bcbbef748bf41bb1": "40 steps from PCA on diverse text, KD : LM = 1 : 3",
    # position variants (data/results/positions.json)
    "5ebfa7c58d72f1cc": "PCA on spread positions",
    "d8350504de10facb": "trained from position 0, then 90 KD steps on spread positions",
    # a second architecture, Gemma 3 270M (data/results/gemma3_270m_suite.json)
    "200778aaf0cdf8ae": "Gemma 3 270M: PCA",
    "54cbf840d261c46f": "Gemma 3 270M: layer-wise from PCA, 100 steps per layer",
    "76ea0acc286b14c0": "Gemma 3 270M: layer-wise start, then 48 KD-only steps",
    # the longer climb (data/results/climb.json, climb_suite.json)
    "6616f5c9fbd765af": "the shipped projections, then 260 KD steps on two CPU processes (the longer climb)",
    # training at the whole window (data/results/long8k_passkey_8k.json, long8k_suite.json)
    "00d459a0aedf4ba7": "the shipped projections, then 48 KD steps on 8,192-token recall blocks",
    # trained for a cache that keeps tokens whole (data/results/whole_trained_suite.json, whole_trained_8k.json)
    "755818b886d2b49e": "the shipped projections, then 48 KD steps with the first 4 and latest 32 tokens read whole",
}
# how each unshipped recipe was made, in full (for the generated docs)
UNSHIPPED_DETAILS = {
    "6cc7201ebcc3d7c3": "from PCA, 180 steps of 2 x 256 tokens of WikiText-2 validation and Wikipedia, "
                        "KD : LM = 3 : 1, every block from position 0",
    "d409a853eb79f6fc": "the 180-step projections, then 300 KD-only steps of 2 x 256 tokens of C4, Wikipedia and "
                        "WikiText-2 validation",
    "37338d89d46168ec": "the 480-step projections, then 500 more KD-only steps on the same three corpora",
    "216e18ec88005d87": "layer-wise warm start from the query-aware basis, then KD-only steps on 2,048-token blocks "
                        "of the diverse mixture, every block from position 0",
    "52190afbf18f313e": "layer-wise warm start, then 120 KD-only steps on 2,048-token blocks of the diverse mixture "
                        "at spread positions",
    "ec535adfc4dd1ea9": "PCA of values and a query-aware key basis, fitted in closed form on 16,384 calibration "
                        "tokens in 512-token blocks (mkv fit-pca --query-aware)",
    "fd6d9f0ca6aeb977": "layer-wise warm start from PCA, 250 steps per layer on 16,384 tokens in 512-token blocks, "
                        "lr 5e-3 (mkv warmstart --init pca)",
    "42a617b688a4d81c": "layer-wise warm start from the query-aware basis, 250 steps per layer on 16,384 tokens in "
                        "512-token blocks, lr 5e-3 (mkv warmstart --init query-aware)",
    "2501cd0369080489": "from PCA, 40 steps of 2 x 512 tokens of the diverse mixture (books, StackExchange, "
                        "factbook, PEPs, RFCs, C4, Wikipedia), KD only, lr 2e-3, seed 0",
    "105df69a052d2548": "from PCA, 40 steps of 2 x 512 tokens of the diverse mixture, KD : LM = 3 : 1, lr 2e-3, "
                        "seed 0",
    "bcbbef748bf41bb1": "from PCA, 40 steps of 2 x 512 tokens of the diverse mixture, KD : LM = 1 : 3, lr 2e-3, "
                        "seed 0",
    "5ebfa7c58d72f1cc": "PCA of 65,536 tokens of WikiText-2 validation in 256-token blocks placed at spread "
                        "positions (mkv fit-pca --positions spread)",
    "d8350504de10facb": "the projections trained from position 0, then 30 KD steps at spread positions "
                        "(lr 5e-4) and 60 more (lr 5e-4)",
    "200778aaf0cdf8ae": "PCA of 16,384 tokens of the diverse training mixture in 512-token blocks at spread "
                        "positions (mkv fit-pca --model GEMMA --tokens 16384 --seq-len 512)",
    "54cbf840d261c46f": "layer-wise warm start from that PCA, 100 steps per layer on 8,192 tokens in 512-token blocks, "
                        "lr 5e-3 (mkv warmstart --model GEMMA --init PCA --tokens 8192 --seq-len 512 --steps 100)",
    "76ea0acc286b14c0": "from that layer-wise start, 48 KD-only steps of 2 x 512 tokens of the diverse mixture, lr 1e-3 "
                        "(mkv train --model GEMMA --init LAYERWISE --tokens 49152 --steps 48 --seq-len 512 --batch 2 "
                        "--lr 1e-3 --warmup 4 --kd-weight 1 --lm-weight 0)",
    "6616f5c9fbd765af": "the shipped projections, then 260 KD-only steps of 2 x 2,048 tokens of the diverse mixture "
                        "with recall blocks on spread positions, lr 5e-4, in two accelerate CPU processes (the "
                        "training command in data/results/climb.json)",
    "00d459a0aedf4ba7": "the shipped projections, then 48 KD-only steps of one 8,192-token block of the diverse "
                        "mixture each (393,216 tokens), the last 512 tokens of each block repeating a span from its "
                        "first quarter, lr 3e-4 with a cosine decay, 86 minutes on one CPU core (run from "
                        "`build/long8k/`: `mkv train --device cpu --init trained --corpus "
                        "books,stackexchange,factbook,peps,rfcs,c4,wikipedia --tokens 393216 --steps 48 --seq-len "
                        "8192 --batch 1 --lr 3e-4 --warmup 2 --kd-weight 1 --lm-weight 0 --eval-tokens 0 "
                        "--checkpoint-every 4 --gradient-checkpointing --seed 13 --positions spread --recall-span 512 "
                        "--out long8k.safetensors`)",
    "755818b886d2b49e": "the shipped projections, then 48 KD-only steps of 2 x 2,048 tokens of the diverse mixture "
                        "(196,608 tokens), each block's first 4 tokens and each query's latest 32 read whole, the last "
                        "256 tokens of each block repeating an earlier span, lr 5e-4 with a cosine decay, 30 minutes "
                        "in two accelerate CPU processes (run from `build/whole/`: `OMP_NUM_THREADS=1 accelerate "
                        "launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no "
                        "-m mkvlib train --device cpu --init trained --corpus "
                        "books,stackexchange,factbook,peps,rfcs,c4,wikipedia --tokens 196608 --steps 48 --seq-len 2048 "
                        "--batch 1 --lr 5e-4 --warmup 2 --kd-weight 1 --lm-weight 0 --eval-every 12 --eval-tokens 2048 "
                        "--checkpoint-every 2 --seed 17 --positions spread --recall-span 256 --keep-first 4 "
                        "--keep-recent 32 --out whole.safetensors`)",
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
    if fingerprint in UNSHIPPED:
        return UNSHIPPED[fingerprint]
    raise KeyError(f"projections {fingerprint} are neither shipped for {model} nor among the earlier recipes "
                   f"of mkvlib.lmeval.recipes: add how they were made to UNSHIPPED")


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

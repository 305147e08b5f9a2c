"""Bytes of a bundle: chunking files into pieces, grouping pieces into transfers, checking and joining them
(hashes of everything), and the xz copies of text files."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ..core.io import atomic_path, file_sha256
from .base import BundleError, mib


def chunk_ranges(size: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """(offset, length) of the pieces of a file of ``size`` bytes: one piece when it fits in ``chunk_bytes``."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk size must be positive, not {chunk_bytes}")
    if size <= chunk_bytes:
        return [(0, size)]
    return [(off, min(chunk_bytes, size - off)) for off in range(0, size, chunk_bytes)]


def piece_names(stored: str, n: int) -> list[str]:
    if n == 1:
        return [stored]
    width = max(3, len(str(n - 1)))
    return [f"{stored}.part{i:0{width}d}" for i in range(n)]


def copy_range(src: Path, offset: int, length: int, dest: Path) -> str:
    """Copy ``length`` bytes of ``src`` from ``offset`` into ``dest`` (atomically); their sha256."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        fin.seek(offset)
        left = length
        while left:
            block = fin.read(min(left, 1 << 20))
            if not block:
                raise BundleError(f"{src} ended {left} bytes early (changed while packing?)")
            digest.update(block)
            fout.write(block)
            left -= len(block)
    return digest.hexdigest()


def assign_groups(sizes: dict[str, int], capacity: int) -> dict[str, int]:
    """Transfer group (1, 2, ...) of each piece, so that no group's pieces exceed ``capacity`` bytes: first fit,
    largest first (deterministic: ties in name order)."""
    totals: list[int] = []
    group: dict[str, int] = {}
    for name in sorted(sizes, key=lambda k: (-sizes[k], k)):
        size = sizes[name]
        if size > capacity:
            raise BundleError(f"piece {name} ({mib(size)}) is larger than a group can hold ({mib(capacity)}): "
                              "use a smaller --chunk-mb or a larger --group-mb")
        for i, total in enumerate(totals):
            if total + size <= capacity:
                totals[i] += size
                group[name] = i + 1
                break
        else:
            totals.append(size)
            group[name] = len(totals)
    return group


def group_name(i: int) -> str:
    return f"g{i:02d}"


def check_pieces(bundle: str | os.PathLike, manifest: dict) -> list[str]:
    """Problems with the pieces in ``bundle`` (missing, wrong size, wrong sha256): one line each, empty when all
    are present and intact."""
    bundle = Path(bundle)
    problems = []
    n_groups = len(manifest["groups"])
    for entry in manifest["files"]:
        for piece in entry["pieces"]:
            path = bundle / piece["file"]
            where = f"{piece['file']} (group {piece['group']} of {n_groups}, part of {entry['path']})"
            if not path.is_file():
                problems.append(f"missing piece {where}")
            elif path.stat().st_size != piece["size"]:
                problems.append(f"corrupt piece {where}: {path.stat().st_size} bytes, expected {piece['size']}")
            elif file_sha256(path) != piece["sha256"]:
                problems.append(f"corrupt piece {where}: sha256 differs from the manifest")
    return problems


def join_file(bundle: str | os.PathLike, entry: dict, dest: str | os.PathLike) -> Path:
    """Join the pieces of one manifest entry into ``dest``, decompressing if the entry is compressed, and check
    the whole file's size and sha256. Atomic: ``dest`` is the old file or the complete new one, never half."""
    bundle, dest = Path(bundle), Path(dest)
    decompressor = _decompressor(entry.get("encoding"))
    digest, size = hashlib.sha256(), 0
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for piece in entry["pieces"]:
            path = bundle / piece["file"]
            if not path.is_file():
                raise BundleError(f"missing piece {piece['file']} (group {piece['group']}) of {entry['path']}")
            piece_digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    piece_digest.update(block)
                    block = decompressor.decompress(block) if decompressor else block
                    digest.update(block)
                    size += len(block)
                    out.write(block)
            if piece_digest.hexdigest() != piece["sha256"]:
                raise BundleError(f"corrupt piece {piece['file']} (group {piece['group']}) of {entry['path']}: "
                                  "sha256 differs from the manifest")
        if decompressor and not decompressor.eof:
            raise BundleError(f"{entry['path']}: the compressed stream ends early")
        out.flush()
        if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
            raise BundleError(f"{entry['path']}: the joined file's size or sha256 differs from the manifest")
    return dest


def _decompressor(encoding):
    if not encoding:
        return None
    if encoding == "xz":
        import lzma

        return lzma.LZMADecompressor()
    raise BundleError(f"unknown encoding {encoding!r} in the manifest (made by a newer mkvlib?)")


XZ_PRESET = 6


def compress_xz(src: Path, dest: Path) -> None:
    import lzma

    with atomic_path(dest) as tmp, open(src, "rb") as fin, lzma.open(tmp, "wb", preset=XZ_PRESET) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def compressed_copy(src: Path, sha256: str) -> Path:
    """An xz copy of ``src`` (sha256 given), made once and kept in the cache (slow to make: about 1 MB/s)."""
    from ..runtime import cache_dir

    dest = cache_dir() / "offline" / "xz" / f"{sha256}-{XZ_PRESET}.xz"
    if not dest.is_file():
        compress_xz(src, dest)
    return dest

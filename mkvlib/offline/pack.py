"""``pack``: write a bundle (see :mod:`mkvlib.offline`) of the model, wheels and texts into a folder."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..core.io import file_sha256
from .base import (_RESERVE, DEFAULT_CHUNK_MB, DEFAULT_GROUP_MB, DEFAULT_TARGET_HAS, DEFAULT_TEXTS, FORMAT, MANIFEST,
                   MIB, VERSION, BundleError, log, mib, replace_dir, repo_root)
from .pieces import assign_groups, chunk_ranges, compressed_copy, copy_range, group_name, piece_names
from .sources import model_files, text_files
from .target import Target, parse_names, project_requirements
from .wheels import fetch_wheels


def check_out_dir(out: Path) -> None:
    """Refuse a bundle folder inside the checkout unless git ignores it (the bundle must never be committed)."""
    root = repo_root()
    out = out.resolve()
    if not (root / ".git").exists() or not (out == root or root in out.parents):
        return
    if out == root:
        raise BundleError("--out is the checkout itself: name a git-ignored folder such as .offline/")
    probe = (out / MANIFEST).relative_to(root).as_posix()
    proc = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", probe], capture_output=True)
    if proc.returncode != 0:
        raise BundleError(f"--out {out.relative_to(root)} is inside the repository and not git-ignored: add it to "
                          ".gitignore (e.g. '.offline/') or write the bundle outside the checkout")


def pack(out: str | os.PathLike, *, chunk_mb: float = DEFAULT_CHUNK_MB, group_mb: float = DEFAULT_GROUP_MB,
         target: Target | None = None, requirements: list[str] | None = None, texts: str = DEFAULT_TEXTS,
         data_dir: str | os.PathLike | None = None, model: str | None = None, compress: str = "xz",
         fetch=fetch_wheels) -> dict:
    """Write a bundle into ``out`` (see :mod:`mkvlib.offline`); returns the manifest. ``requirements=None``: the
    project's runtime dependencies. ``fetch`` is :func:`fetch_wheels` (injectable for tests)."""
    t0 = time.time()
    out = Path(out)
    target = target or Target(has=parse_names(DEFAULT_TARGET_HAS))
    chunk_bytes, group_bytes = check_pack_settings(out, chunk_mb, group_mb, compress)
    data_dir = Path(data_dir) if data_dir else (Path(os.environ["MKV_DATA_DIR"])
                                                if os.environ.get("MKV_DATA_DIR") else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix="mkv-offline-"))
    timings = {}
    try:
        t = time.time()
        sources, model_record, wheel_summary = model_and_wheel_sources(model, requirements, target, work, fetch)
        if wheel_summary is not None:
            timings["wheels_s"] = round(time.time() - t, 1)
        t = time.time()
        sources += [{"path": f"data/{rel}", "kind": "text", "src": path} for rel, path in text_files(texts, data_dir)]
        prepare_sources(sources, compress)
        timings["hash_compress_s"] = round(time.time() - t, 1)
        t = time.time()
        files, n_groups = write_pieces(sources, stage, chunk_bytes, group_bytes)
        timings["write_s"] = round(time.time() - t, 1)
        manifest = new_manifest(files, n_groups, target, model_record, wheel_summary, chunk_bytes, group_bytes)
        manifest["timings"] = {**timings, "total_s": round(time.time() - t0, 1)}
        write_manifests(manifest, stage, group_bytes, group_mb)
        replace_dir(stage, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return manifest


def check_pack_settings(out: Path, chunk_mb: float, group_mb: float, compress: str) -> tuple[int, int]:
    """(chunk bytes, group bytes) after refusing sizes that cannot work, an output folder that is not ours to
    replace, and an unknown compression."""
    chunk_bytes, group_bytes = int(chunk_mb * MIB), int(group_mb * MIB)
    if chunk_bytes <= 0 or group_bytes <= 0:
        raise BundleError("--chunk-mb and --group-mb must be positive")
    if chunk_bytes > group_bytes - _RESERVE:
        raise BundleError(f"--chunk-mb {chunk_mb:g} leaves no room in a {group_mb:g} MiB group for its copy of the "
                          f"manifest: use --chunk-mb {math.floor((group_bytes - _RESERVE) / MIB)} or less, or a "
                          "larger --group-mb")
    check_out_dir(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BundleError(f"{out} exists and holds files that are not a bundle: name an empty or new folder")
    if compress not in ("xz", "none"):
        raise BundleError(f"--compress must be xz or none, not {compress!r}")
    return chunk_bytes, group_bytes


def model_and_wheel_sources(model, requirements, target: Target, work: Path, fetch) -> tuple[list, dict | None,
                                                                                             dict | None]:
    """(sources: path in the bundle, kind, src; model record; wheel summary or None when no wheels are asked
    for): the model's files, and the wheels the target lacks fetched into ``work``."""
    mfiles, model_record = model_files(model)
    sources = [{"path": p, "kind": "model", "src": s} for p, s in mfiles]
    if requirements is None:
        requirements = project_requirements()
    wheel_summary = None
    if requirements:
        log(f"resolving wheels for Python {target.python_version} ({', '.join(target.platforms)}) ...")
        wheels, wheel_summary = fetch(requirements, target, work / "wheels", work)
        sources += [{"path": f"wheels/{w.name}", "kind": "wheel", "src": w} for w in wheels]
    return sources, model_record, wheel_summary


def prepare_source(s: dict, compress: str) -> None:
    """Size and sha256 of a source, and the file to split: an xz copy of a text file when compressing."""
    s["src"] = Path(s["src"])
    s["size"] = s["src"].stat().st_size
    s["sha256"] = file_sha256(s["src"])
    s["stored"], s["encoding"] = s["src"], None
    if s["kind"] == "text" and compress == "xz":
        s["stored"], s["encoding"] = compressed_copy(s["src"], s["sha256"]), "xz"
    s["stored_size"] = s["stored"].stat().st_size


def prepare_sources(sources: list[dict], compress: str) -> None:
    """:func:`prepare_source` on every source, largest first, in threads (hashlib and lzma release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda s: prepare_source(s, compress),
                      sorted(sources, key=lambda s: -Path(s["src"]).stat().st_size)))


def source_pieces(s: dict, chunk_bytes: int) -> list[tuple[str, int, int]]:
    """(piece name, offset, length) of the pieces a prepared source is split into."""
    stored_name = s["path"] + (".xz" if s["encoding"] else "")
    ranges = chunk_ranges(s["stored_size"], chunk_bytes)
    return [(name, off, length) for name, (off, length) in zip(piece_names(stored_name, len(ranges)), ranges)]


def write_pieces(sources: list[dict], stage: Path, chunk_bytes: int, group_bytes: int) -> tuple[list[dict], int]:
    """Split every prepared source into pieces, assign them to transfer groups and write them under ``stage``;
    (the manifest's file entries, number of groups)."""
    sizes = {name: length for s in sources for name, _, length in source_pieces(s, chunk_bytes)}
    groups = assign_groups(sizes, group_bytes - _RESERVE)
    files = []
    for s in sources:
        entry = {"path": s["path"], "kind": s["kind"], "size": s["size"], "sha256": s["sha256"],
                 "encoding": s["encoding"], "stored_size": s["stored_size"], "pieces": []}
        for name, off, length in source_pieces(s, chunk_bytes):
            g = groups[name]
            rel = f"{group_name(g)}/{name}"
            sha = copy_range(s["stored"], off, length, stage / rel)
            entry["pieces"].append({"file": rel, "group": g, "size": length, "sha256": sha})
        files.append(entry)
    return files, max(groups.values(), default=0)


def new_manifest(files: list[dict], n_groups: int, target: Target, model_record, wheel_summary, chunk_bytes: int,
                 group_bytes: int) -> dict:
    """The manifest of a bundle whose pieces are written: what every file and group is, and the bundle's id."""
    manifest = {"format": FORMAT, "version": VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "chunk_bytes": chunk_bytes, "group_bytes": group_bytes,
                "target": {"python_version": target.python_version, "platforms": list(target.platforms),
                           "has": sorted(target.has), "complete_freeze": target.complete},
                "model": model_record, "packages": wheel_summary,
                "groups": [], "files": files}
    for g in range(1, n_groups + 1):
        members = [p for f in files for p in f["pieces"] if p["group"] == g]
        manifest["groups"].append({"name": group_name(g), "pieces": len(members),
                                   "bytes": sum(p["size"] for p in members)})
    manifest["bundle_id"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return manifest


def write_manifests(manifest: dict, stage: Path, group_bytes: int, group_mb: float) -> None:
    """Write the manifest at the top of ``stage`` and a copy in each group, the group sizes counting that copy."""
    piece_bytes = [g["bytes"] for g in manifest["groups"]]
    text = ""
    for _ in range(10):     # each group carries a copy of the manifest, which states the group sizes
        size = len(text.encode())
        for g, b in zip(manifest["groups"], piece_bytes):
            g["bytes"] = b + size
        text = json.dumps(manifest, indent=1) + "\n"
        if len(text.encode()) == size:
            break
    for g in manifest["groups"]:
        if g["bytes"] > group_bytes:
            raise BundleError(f"group {g['name']} would hold {g['bytes']} bytes, over --group-mb {group_mb:g}: "
                              "the manifest outgrew its reserve; use a smaller --chunk-mb")
        (stage / g["name"] / MANIFEST).write_text(text)
    (stage / MANIFEST).write_text(text)


def pack_summary(manifest: dict, out: Path) -> str:
    lines = [f"bundle {manifest['bundle_id']} in {out}:"]
    kinds: dict[str, list[int]] = {}
    for f in manifest["files"]:
        k = kinds.setdefault(f["kind"], [0, 0, 0])
        k[0] += 1
        k[1] += f["size"]
        k[2] += f["stored_size"]
    for kind, (n, size, stored) in sorted(kinds.items()):
        extra = f" ({mib(size)} unpacked)" if stored != size else ""
        lines.append(f"  {kind:6s} {n:4d} files  {mib(stored)}{extra}")
    total = 0
    for g in manifest["groups"]:
        total += g["bytes"]
        lines.append(f"  {g['name']}: {mib(g['bytes'])} in {g['pieces']} pieces (+ manifest)")
    lines.append(f"  total {mib(total)} in {len(manifest['groups'])} groups of at most "
                 f"{mib(manifest['group_bytes'])}; times {manifest.get('timings')}")
    pk = manifest.get("packages") or {}
    if pk.get("built_from_source"):
        lines.append(f"  built from source (pure Python): {', '.join(pk['built_from_source'])}")
    lines.append(f"carry each gNN/ folder in its own transfer, then on the target: "
                 f"python -m mkvlib.offline unpack {out}")
    return "\n".join(lines)

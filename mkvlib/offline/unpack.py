"""``unpack`` (on the target, offline; standard library and pip only): check every piece, join the files,
install the wheels and write the environment to use."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ..core.io import atomic_path, file_sha256
from .base import FORMAT, MANIFEST, VERSION, BundleError, log, replace_dir, repo_root
from .pieces import check_pieces, group_name, join_file
from .resolve import pip


def read_manifest(bundle: str | os.PathLike) -> dict:
    """The bundle's manifest: ``bundle/manifest.json`` or any group's copy (all copies must agree)."""
    bundle = Path(bundle)
    candidates = [bundle / MANIFEST] + sorted(bundle.glob(f"g*/{MANIFEST}"))
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise BundleError(f"{bundle} holds no {MANIFEST} (neither at the top nor in a gNN/ folder): is it a bundle "
                          "made by `mkv offline pack`?")
    manifests = []
    for p in found:
        try:
            manifests.append((p, json.loads(p.read_text())))
        except ValueError as err:
            raise BundleError(f"{p} is not valid JSON (corrupt?): {err}") from err
    ids = {m.get("bundle_id") for _, m in manifests}
    if len(ids) > 1:
        raise BundleError(f"{bundle} mixes pieces of different bundles ({', '.join(sorted(map(str, ids)))}): "
                          "remove the folders of the older one")
    manifest = manifests[0][1]
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BundleError(f"{found[0]} is not a version-{VERSION} {FORMAT} manifest")
    return manifest


def _site_stamp(manifest: dict) -> str:
    wheels = sorted(f["sha256"] for f in manifest["files"] if f["kind"] == "wheel")
    return hashlib.sha256("\n".join(wheels).encode()).hexdigest()


def install_wheels(wheels: list[Path], site: Path | None, stamp: str) -> str:
    """Install the wheels into folder ``site`` (atomically: a complete folder or none), or with ``site=None``
    into the running environment; pip offline (``--no-index``), or by unpacking them when pip is absent."""
    if not wheels:
        return "no wheels"
    have_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if site is None:
        if not have_pip:
            raise BundleError("installing into the environment needs pip; leave out --into-env to install into a "
                              "folder")
        pip("install", "--no-index", "--find-links", str(wheels[0].parent), *map(str, wheels))
        return "installed into the running environment"
    if (site / ".mkv-offline-stamp").is_file() and (site / ".mkv-offline-stamp").read_text() == stamp:
        return f"already installed in {site}"
    site.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{site.name}.", dir=site.parent))
    try:
        if have_pip:
            pip("install", "--no-index", "--no-deps", "--no-compile", "--target", str(tmp), *map(str, wheels))
        else:
            for w in wheels:
                _unzip_wheel(w, tmp)
        (tmp / ".mkv-offline-stamp").write_text(stamp)
        replace_dir(tmp, site)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return f"installed {len(wheels)} wheels into {site}" + ("" if have_pip else " (unzipped: no pip here)")


def _unzip_wheel(wheel: Path, site: Path) -> None:
    """A wheel's files into ``site`` as ``pip install --target`` puts them (purelib/platlib data merged; scripts
    and headers left out)."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if len(parts) > 2 and parts[0].endswith(".data"):
                if parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            dest = site.joinpath(*parts)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fin, open(dest, "wb") as fout:
                shutil.copyfileobj(fin, fout)


def unpack(bundle: str | os.PathLike, into: str | os.PathLike | None = None, into_env: bool = False,
           check_only: bool = False, install=install_wheels) -> dict:
    """Check every piece, join the files into ``into`` (default ``bundle/unpacked``), install the wheels and
    write ``env.sh``; returns {"env": {variable: value}, "model": path or None, ...}. Nothing is written before
    every piece checks out."""
    t0 = time.time()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    check_bundle(bundle, manifest)
    result = {"bundle_id": manifest["bundle_id"], "checked_pieces": sum(len(f["pieces"]) for f in manifest["files"])}
    if check_only:
        result["check_s"] = round(time.time() - t0, 1)
        return result
    into = Path(into) if into else bundle / "unpacked"
    joined, skipped = join_files(bundle, manifest, into)
    result.update(joined=joined, already_there=skipped)
    wheels = [into / f["path"] for f in manifest["files"] if f["kind"] == "wheel"]
    warn_other_python(manifest["target"]["python_version"], wheels)
    site = None if into_env else into / "site"
    result["wheels"] = install(wheels, site, _site_stamp(manifest)) if wheels else "no wheels in the bundle"
    env, model_path = environment(manifest, into, site if wheels else None)
    lines = write_env_script(into / "env.sh", env, model_path)
    result.update(env=env, env_lines=lines, env_file=str((into / "env.sh").resolve()),
                  model=str(model_path) if model_path else None, into=str(into.resolve()),
                  unpack_s=round(time.time() - t0, 1))
    return result


def check_bundle(bundle: Path, manifest: dict) -> None:
    """Refuse a bundle with a missing or corrupt piece, naming the pieces and the groups to bring again."""
    problems = check_pieces(bundle, manifest)
    if problems:
        groups = sorted({int(m.group(1)) for m in (re.search(r"group (\d+)", p) for p in problems) if m})
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise BundleError(f"{len(problems)} of the bundle's pieces are missing or corrupt (nothing was written); "
                          f"bring group(s) {', '.join(group_name(g) for g in groups)} again:\n  {shown}")


def join_files(bundle: Path, manifest: dict, into: Path) -> tuple[int, int]:
    """Join every file of the manifest under ``into``, skipping those already there intact; (joined, skipped)."""
    joined = skipped = 0
    for entry in manifest["files"]:
        dest = into / entry["path"]
        if dest.is_file() and dest.stat().st_size == entry["size"] and file_sha256(dest) == entry["sha256"]:
            skipped += 1
            continue
        join_file(bundle, entry, dest)
        joined += 1
    return joined, skipped


def warn_other_python(target_py: str, wheels: list) -> None:
    """Say so when the wheels were made for another Python than this one."""
    here_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wheels and not target_py.startswith(here_py) and not here_py.startswith(target_py):
        log(f"warning: the wheels are for Python {target_py}, this is Python {here_py}; pip may refuse them")


def environment(manifest: dict, into: Path, site: Path | None) -> tuple[dict, Path | None]:
    """({variable: value} to run with the unpacked bundle, the model's path or None). ``site``: the folder the
    wheels went into (None: none, or the running environment)."""
    env = {}
    if site is not None:
        env["PYTHONPATH"] = f"{site.resolve()}:{repo_root()}"
    if any(f["kind"] == "text" for f in manifest["files"]):
        env["MKV_DATA_DIR"] = str((into / "data").resolve())
    model = manifest.get("model")
    model_path = None
    if model:
        model_path = (into / model["path"]).resolve()
        if model.get("embedded") and model_path.suffix == ".gguf":
            env["MKV_EMBEDDED_GGUF"] = str(model_path)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    return env, model_path


def write_env_script(path: Path, env: dict, model_path: Path | None) -> list[str]:
    """Write ``env.sh`` (atomically) exporting ``env``; its export lines."""
    lines = [f"export {k}={v}" + ("${PYTHONPATH:+:$PYTHONPATH}" if k == "PYTHONPATH" else "")
             for k, v in env.items()]
    script = "# written by mkv offline unpack: source it before running mkv\n" + "\n".join(lines) + "\n"
    if model_path:
        script += f"# the model: --model {model_path}" + (" (or no --model: MKV_EMBEDDED_GGUF makes it the default)"
                                                            if "MKV_EMBEDDED_GGUF" in env else "") + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(script)
    return lines

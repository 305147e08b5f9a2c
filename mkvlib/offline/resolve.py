"""pip for the target machine: running pip, reading its errors, stub wheels for what the target has, its
resolution (``pip install --dry-run --report``), building pure-Python wheels from source, and downloads."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from .base import BundleError, Unresolvable, canonical
from .target import Target, _packaging


def pip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode:
        raise BundleError(f"pip failed ({' '.join(cmd[3:6])} ...):\n{_pip_errors(proc)}")
    return proc


_PIP_NOISE = re.compile(r"^\s*(Collecting|Downloading|Using cached|Processing|Requirement already|Obtaining|"
                        r"Would install|Looking in|Saved|Building|Created wheel|Stored in|Successfully|File was)|"
                        r"━|is ignored: it is neither a file nor a directory")


def _pip_errors(proc) -> str:
    lines = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip() and not _PIP_NOISE.search(ln)]
    return "\n".join(lines[-40:])


_NO_VERSION = re.compile(r"satisfies the requirement (\S+).*\(from versions: none\)")
_NO_DISTRIBUTIONS = re.compile(r"no matching distributions available for your environment:\n((?:[ \t]+\S+\n?)+)")


def unresolvable_requirements(errors: str) -> list[str]:
    """The requirements pip found no distribution of at all (with ``--only-binary``: published only as source),
    from its error text; empty when the failure is something else (a real version conflict)."""
    found = [m.group(1) for m in _NO_VERSION.finditer(errors)]
    for block in _NO_DISTRIBUTIONS.finditer(errors):
        found += block.group(1).split()
    return list(dict.fromkeys(found))


STUB = "mkvstub"


def stub_wheel(folder: Path, name: str, version: str) -> Path:
    """An empty wheel standing for a distribution the target has (no files, no dependencies), at version
    ``<version>+mkvstub`` so that pip resolves against it instead of fetching the real one's metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = canonical(name).replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: mkvlib.offline\nRoot-Is-Purelib: true\n"
                                     "Tag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", f"{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def stub_versions(target: Target) -> dict[str, str]:
    """{name: stub version} for the versioned entries of a complete freeze (the target's exact versions)."""
    if not target.complete:
        return {}
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        from pip._vendor.packaging.version import InvalidVersion, Version
    out = {}
    for name, version in target.has.items():
        if version:
            try:
                out[name] = str(Version(f"{Version(version).public}+{STUB}"))
            except InvalidVersion:
                continue
    return out


def pip_resolve(requirements: list[str], target: Target, find_links: list[Path], workdir: Path) -> list[dict]:
    """pip's resolution of ``requirements`` for the target (``pip install --dry-run --report``, nothing
    installed), constrained to the versions the target has; the report's ``install`` items."""
    workdir.mkdir(parents=True, exist_ok=True)
    report, constraints = workdir / "report.json", workdir / "constraints.txt"
    # A full freeze: every versioned package it lists resolves to an empty stub at exactly that version, so pip
    # neither fetches (say) torch's metadata nor needs the target's own builds (+cu128) to be on the index. A stub
    # has no extras, so a package that something requires with extras (fsspec[http]) is pinned to its real release
    # instead, and the extras' dependencies are resolved (and brought, where the target lacks them).
    stubs, real = stub_versions(target), set()
    while True:
        stub_dir = workdir / f"stubs-{len(real)}"
        use = {n: v for n, v in stubs.items() if n not in real}
        for name, version in use.items():
            stub_wheel(stub_dir, name, version)
        pins = [f"{n}=={v}" for n, v in sorted(use.items())] if stubs else target.constraints()
        pins += [f"{n}=={stubs[n].split('+')[0]}" for n in sorted(real)]
        constraints.write_text("\n".join(pins) + "\n")
        args = ["install", "--dry-run", "--ignore-installed", "--report", str(report),
                "--target", str(workdir / "never-written"), *target.pip_args(), "-c", str(constraints)]
        for folder in ([stub_dir] if use else []) + list(find_links):
            args += ["--find-links", str(folder)]
        proc = pip(*args, *requirements, check=False)
        if proc.returncode:
            errors = _pip_errors(proc)
            missing = [r for r in unresolvable_requirements(errors)
                       if canonical(_packaging()(r).name) not in target.has]
            if missing:
                raise Unresolvable(missing, errors)   # published only as source (or not at all)
            raise BundleError(f"pip could not resolve the wheels for Python {target.python_version} "
                              f"({', '.join(target.platforms)}):\n{errors}")
        items = json.loads(report.read_text())["install"]
        with_extras = stubbed_with_extras(items, set(use)) - real
        if not with_extras:
            return items
        real |= with_extras


def stubbed_with_extras(items: list[dict], stubbed: set) -> set:
    """Stubbed distributions that some resolved item requires with extras."""
    Requirement = _packaging()
    out = set()
    for it in items:
        for r in it["metadata"].get("requires_dist") or []:
            try:
                req = Requirement(r)
            except Exception:  # noqa: BLE001 - reported by plan_wheels
                continue
            if req.extras and canonical(req.name) in stubbed:
                out.add(canonical(req.name))
    return out


def pip_build_wheel(requirement: str, dest: Path) -> Path:
    """Build a wheel for a package published only as source (here, with this machine's Python); it must be pure
    Python (``none-any``) to serve the target."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest), requirement)
    built = sorted(set(dest.glob("*.whl")) - before)
    if not built:
        raise BundleError(f"pip built no wheel for {requirement}")
    wheel = built[-1]
    if not wheel.name.endswith("-none-any.whl"):
        raise BundleError(f"{requirement} has no wheel for the target and builds only a platform wheel here "
                          f"({wheel.name}): install it on the target another way, or leave it out with --packages")
    return wheel


def _item_file(item: dict) -> str:
    return unquote(Path(urlparse(item["download_info"]["url"]).path).name)


def _item_sha256(item: dict) -> str | None:
    info = item["download_info"].get("archive_info", {})
    if "hashes" in info and "sha256" in info["hashes"]:
        return info["hashes"]["sha256"]
    if info.get("hash", "").startswith("sha256="):
        return info["hash"].split("=", 1)[1]
    return None


def pip_download(items: list[dict], dest: Path, target: Target) -> dict[str, Path]:
    """The wheel of each report item in ``dest`` (``pip download --no-deps`` for the target; local files, the
    wheels built from source, are copied); {canonical name: path}."""
    dest.mkdir(parents=True, exist_ok=True)
    remote = [it for it in items if urlparse(it["download_info"]["url"]).scheme != "file"]
    out = {}
    for it in items:
        url = urlparse(it["download_info"]["url"])
        if url.scheme == "file":
            src = Path(unquote(url.path))
            shutil.copyfile(src, dest / src.name)
            out[canonical(it["metadata"]["name"])] = dest / src.name
    if remote:
        pins = [f"{it['metadata']['name']}=={it['metadata']['version']}" for it in remote]
        pip("download", "--no-deps", "--quiet", "--dest", str(dest), *target.pip_args(), *pins)
        for it in remote:
            path = dest / _item_file(it)
            if not path.is_file():   # pip chose another file of the same release
                stem = f"{canonical(it['metadata']['name']).replace('-', '_')}-{it['metadata']['version']}-"
                matches = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem.lower())]
                path = matches[0] if matches else path
            out[canonical(it["metadata"]["name"])] = path
    return out

"""An offline bundle for a machine without network: the model, the wheels the target Python lacks, and the text
a run needs, in pieces small enough for size-limited transfers, with hashes of everything.

``pack`` (here, online) writes into a folder::

    manifest.json              what every piece is: sha256 and size of each whole file and each piece, groups
    g01/ g02/ ...              the transfer groups, each at most --group-mb with its own copy of manifest.json
      model/<name>.gguf[.partNNN]     the model's GGUF (the embedded one by default), split at --chunk-mb
      wheels/<wheel>[.partNNN]        wheels for the target's Python and platform
      data/<relative path>.xz[.partNNN]  data-folder text files (MKV_DATA_DIR layout), xz-compressed

``unpack`` (on the target, offline; standard library and pip only) checks every hash before it writes anything,
joins the pieces atomically, installs the wheels into a local folder (or the active environment), and prints the
environment lines to use. Run it as ``mkv offline unpack DIR`` or ``python -m mkvlib.offline unpack DIR`` from
the checkout. Each group folder can travel in a separate transfer; unpack names any piece that is missing or
corrupt, and the group that brings it.

Wheels: the packages to bring are the project's runtime requirements (``pyproject.toml``) minus what the target
has (a ``pip freeze`` of it, or names, whose own dependencies then count as present too); pip resolves their
closure for the target's Python and platform without installing (``pip install --dry-run --report``), packages
published only as source are built here into pure-Python wheels, and torch, triton and nvidia-* never travel.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from .io import atomic_path

FORMAT = "mkv-offline-bundle"
VERSION = 1
MIB = 1 << 20
DEFAULT_CHUNK_MB = 39.0
DEFAULT_GROUP_MB = 40.0
MANIFEST = "manifest.json"
# what the target machine of issue 21 has (names; their dependencies count as present too)
DEFAULT_TARGET_HAS = "torch,transformers,peft,accelerate,pandas,matplotlib,seaborn"
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")
NEVER_DOWNLOAD = ("torch", "triton", "nvidia-*")      # on every GPU target with torch; far too large to carry
DEFAULT_TEXTS = "run"                                 # the data files the project's corpora and local tasks read
_RESERVE = 256 * 1024                                 # room kept in each group for its copy of the manifest


class BundleError(RuntimeError):
    """A bundle cannot be made or unpacked; the message says which piece or package and what to do."""


class Unresolvable(BundleError):
    """pip found no wheel for some requirements (for the target's Python and platform)."""

    def __init__(self, requirements: list[str], message: str):
        super().__init__(message)
        self.requirements = list(requirements)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def canonical(name: str) -> str:
    """A distribution's normalised name (PEP 503): case, '-', '_' and '.' do not matter."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def never_download(name: str) -> bool:
    name = canonical(name)
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in NEVER_DOWNLOAD)


def mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


# --- hashing, chunking, joining ------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
            elif sha256_file(path) != piece["sha256"]:
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
    from .runtime import cache_dir

    dest = cache_dir() / "offline" / "xz" / f"{sha256}-{XZ_PRESET}.xz"
    if not dest.is_file():
        compress_xz(src, dest)
    return dest


# --- the target: freeze, names, platforms --------------------------------------------------------------------

_REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(?:(===?)\s*([^\s;#]+))?")


def parse_freeze(text: str) -> dict[str, str | None]:
    """``pip freeze`` (or requirements) text -> {canonical name: version or None}. Options, editable lines and
    comments are skipped; ``name @ url`` has no version."""
    out: dict[str, str | None] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = _REQ_LINE.match(line)
        if m:
            out[canonical(m.group(1))] = m.group(4) if m.group(3) else None
    return out


def parse_names(text: str) -> dict[str, None]:
    return {canonical(n): None for n in re.split(r"[,\s]+", text or "") if n.strip()}


def expand_platforms(platforms) -> list[str]:
    """Platform tags for pip: each ``manylinux_2_N_arch`` also brings every older glibc (down to 2.17, which
    manylinux2014 names; pip itself adds manylinux2010 and manylinux1 to that)."""
    out: list[str] = []
    for p in platforms:
        m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", p)
        tags = [f"manylinux_2_{g}_{m.group(2)}" for g in range(int(m.group(1)), 16, -1)] if m else [p]
        if m:
            tags.append(f"manylinux2014_{m.group(2)}")
        out.extend(t for t in tags if t not in out)
    return out


@dataclass
class Target:
    """The Python the wheels are for, and the distributions it has (canonical name -> version or None)."""
    python_version: str = "3.12"
    platforms: tuple = DEFAULT_PLATFORMS
    has: dict = field(default_factory=dict)
    complete: bool = False          # a full `pip freeze`: everything it lacks is missing

    @property
    def abi(self) -> str:
        return "cp" + "".join(self.python_version.split(".")[:2])

    def pip_args(self) -> list[str]:
        args = ["--only-binary=:all:", "--python-version", self.python_version, "--implementation", "cp",
                "--abi", self.abi]
        for p in expand_platforms(self.platforms):
            args += ["--platform", p]
        return args

    def constraints(self) -> list[str]:
        """``name==version`` for the versions the target has (local labels such as +cu128 dropped)."""
        return [f"{n}=={v.split('+')[0]}" for n, v in sorted(self.has.items()) if v and not never_download(n)]

    def marker_environment(self) -> dict:
        major_minor = ".".join(self.python_version.split(".")[:2])
        full = self.python_version if self.python_version.count(".") >= 2 else major_minor + ".0"
        machine = "aarch64" if any("aarch64" in p for p in self.platforms) else "x86_64"
        return {"implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
                "platform_machine": machine, "platform_python_implementation": "CPython", "platform_release": "",
                "platform_system": "Linux", "platform_version": "", "python_full_version": full,
                "python_version": major_minor, "sys_platform": "linux"}


def _packaging():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def project_requirements(pyproject: str | os.PathLike | None = None) -> list[str]:
    """The ``[project] dependencies`` of the checkout's pyproject.toml."""
    path = Path(pyproject) if pyproject else Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    try:
        return list(tomllib.loads(path.read_text())["project"]["dependencies"])
    except (OSError, KeyError) as err:
        raise BundleError(f"cannot read the project's dependencies from {path}: {err}") from err


# --- which wheels: a pip report, filtered by what the target has ---------------------------------------------

@dataclass
class WheelPlan:
    download: list[dict]        # report items to bring
    provided: list[str]         # resolved distributions the target has (or that never travel)
    unneeded: list[str]         # in pip's resolution only for this machine's Python (markers)
    warnings: list[str]


def plan_wheels(items: list[dict], roots: list[str], target: Target) -> WheelPlan:
    """Which of pip's resolved ``items`` (``pip install --report``'s ``install`` list) the target lacks.

    A distribution the target has provides its own dependencies too (its closure, markers evaluated for the
    target's Python); torch, triton and nvidia-* count as provided. Walking from ``roots`` (with extras), every
    distribution reached that is not provided is brought."""
    Requirement = _packaging()
    env = target.marker_environment()
    by_name = {canonical(it["metadata"]["name"]): it for it in items}
    warnings: list[str] = []
    requires: dict[str, list] = {}
    for n, it in by_name.items():
        requires[n] = []
        for r in it["metadata"].get("requires_dist") or []:
            try:
                requires[n].append(Requirement(r))
            except Exception:  # noqa: BLE001 - a malformed requirement in old metadata: say so, go on
                warnings.append(f"{n}: cannot parse its requirement {r!r}; ignored")

    def children(name: str, extra: str, warn: bool):
        for req in requires.get(name, []):
            if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
                child = canonical(req.name)
                if child not in by_name:
                    if warn and not (child in target.has or never_download(child)):
                        warnings.append(f"{name} needs {req} on Python {target.python_version}, which pip did not "
                                        "resolve (it evaluates markers for this machine's Python): bring it yourself")
                    continue
                yield child, ("", *sorted(req.extras))

    def walk(starts, skip_base, warn):
        seen, queue = set(), list(starts)
        while queue:
            name, extra = queue.pop()
            if (name, extra) in seen or (extra == "" and name in skip_base):
                continue
            seen.add((name, extra))
            for child, extras in children(name, extra, warn):
                queue.extend((child, e) for e in extras)
        return {n for n, _ in seen}

    has = {n for n in by_name if n in target.has or never_download(n)}
    provided = walk([(n, "") for n in has], skip_base=set(), warn=False)
    starts = []
    for r in roots:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            if canonical(req.name) in by_name:
                starts += [(canonical(req.name), e) for e in ("", *sorted(req.extras))]
    reached = walk(starts, skip_base=provided, warn=True)
    download = [by_name[n] for n in sorted(reached - provided)]
    unneeded = sorted(set(by_name) - reached - provided)
    return WheelPlan(download, sorted(provided), unneeded, sorted(set(warnings)))


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


def resolve_wheels(requirements: list[str], target: Target, workdir: Path, resolve=pip_resolve,
                   build=pip_build_wheel, max_builds: int = 30) -> tuple[list[dict], list[str]]:
    """pip's resolution for the target, building pure-Python wheels for packages published only as source as
    they come up; (report items, requirements built from source)."""
    built_dir, built = workdir / "built", []
    for _ in range(max_builds + 1):
        try:
            return resolve(requirements, target, [built_dir] if built else [], workdir), built
        except Unresolvable as err:
            again = [r for r in err.requirements if r in built]
            if again:
                raise BundleError(f"no usable wheel for {', '.join(again)} even after building one:\n{err}") from err
            for requirement in err.requirements:
                log(f"  {requirement}: no wheel for the target; building a pure-Python wheel from source")
                build(requirement, built_dir)
                built.append(requirement)
    raise BundleError(f"gave up after building {max_builds} wheels from source: {built}")


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


def fetch_wheels(requirements: list[str], target: Target, dest: Path, workdir: Path, resolve=pip_resolve,
                 download=pip_download, build=pip_build_wheel) -> tuple[list[Path], dict]:
    """Resolve, plan and download the wheels the target lacks into ``dest``; (wheel paths, summary)."""
    roots = list(requirements)
    if not target.complete:     # the closure of what the target has counts as present: resolve it too
        roots += [n for n in sorted(target.has) if not never_download(n)
                  and n not in {canonical(_packaging()(r).name) for r in requirements}]
    items, built = resolve_wheels(roots, target, workdir, resolve=resolve, build=build)
    plan = plan_wheels(items, requirements, target)
    for w in plan.warnings:
        log(f"  warning: {w}")
    files = download(plan.download, dest, target)
    wheels = []
    for item in plan.download:
        name = canonical(item["metadata"]["name"])
        path = Path(files.get(name, dest / _item_file(item)))
        if not path.is_file():
            raise BundleError(f"the wheel of {name} {item['metadata']['version']} was not downloaded ({path.name})")
        if not path.name.endswith(".whl"):
            raise BundleError(f"{path.name} is not a wheel")
        expected = _item_sha256(item) if path.name == _item_file(item) else None
        if expected and urlparse(item["download_info"]["url"]).scheme != "file" and sha256_file(path) != expected:
            raise BundleError(f"{path.name}: sha256 differs from the index's")
        wheels.append(path)
    summary = {"requirements": requirements, "wheels": [{"name": it["metadata"]["name"],
                                                         "version": it["metadata"]["version"], "file": p.name}
                                                        for it, p in zip(plan.download, wheels)],
               "provided_by_target": plan.provided, "not_needed_on_target": plan.unneeded,
               "built_from_source": built, "warnings": plan.warnings}
    return wheels, summary


# --- texts and model ------------------------------------------------------------------------------------------

def run_texts() -> list[str]:
    """Data-folder files (relative paths) the project's named corpora and local lm-eval tasks read."""
    from .corpora import CORPORA
    from .lmeval.tasks import LOCAL_TASKS

    paths = {s.data_path for s in CORPORA.values() if s.data_path}
    for task in LOCAL_TASKS.values():
        paths.update(task.files.values())
    return sorted(paths)


def text_files(spec: str, data_dir: Path | None) -> list[tuple[str, Path]]:
    """(relative path, file) of the texts to bring: ``run`` (default: what the run reads, missing ones
    skipped), ``none``, or comma-separated paths relative to the data folder (files or folders; must exist)."""
    spec = (spec or "").strip()
    if spec in ("", "none"):
        return []
    if data_dir is None:
        raise BundleError("texts come from the data folder: set MKV_DATA_DIR (or pass --texts none)")
    if not data_dir.is_dir():
        raise BundleError(f"MKV_DATA_DIR={data_dir} is not a folder")
    out: dict[str, Path] = {}
    if spec == DEFAULT_TEXTS:
        for rel in run_texts():
            if (data_dir / rel).is_file():
                out[rel] = data_dir / rel
            else:
                log(f"  note: {rel} is not in {data_dir}; left out")
        return sorted(out.items())
    for rel in (r.strip() for r in spec.split(",")):
        if not rel:
            continue
        path = data_dir / rel
        if path.is_dir():
            out.update({p.relative_to(data_dir).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()})
        elif path.is_file():
            out[Path(rel).as_posix()] = path
        else:
            raise BundleError(f"--texts: {rel} is not in the data folder {data_dir}")
    return sorted(out.items())


def model_files(spec: str | None) -> tuple[list[tuple[str, Path]], dict | None]:
    """([(path in the bundle, file)], model record) for --model: the embedded model's GGUF (default), a .gguf
    file, a local model folder, a Hugging Face id already in the local cache, or ``none``."""
    from . import models

    if spec and spec.lower() == "none":
        return [], None
    if spec is None or spec.lower() in models.EMBEDDED_ALIASES:
        gguf = models.embedded_gguf()
        return [(f"model/{gguf.name}", gguf)], {"path": f"model/{gguf.name}", "name": models.EMBEDDED,
                                                "embedded": True}
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise BundleError(f"--model {spec}: a file must be a .gguf model")
        return [(f"model/{path.name}", path)], {"path": f"model/{path.name}", "name": path.stem,
                                                "embedded": models.gguf_name(path) == models.EMBEDDED}
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(spec, local_files_only=True))
        except Exception as err:  # noqa: BLE001 - any failure means: not in the local cache
            raise BundleError(f"--model {spec}: not a .gguf file, a folder, or a Hugging Face id in the local "
                              f"cache ({type(err).__name__})") from err
    name = path.resolve().name if path.resolve().parent.name != "snapshots" else spec.replace("/", "--")
    files = [(f"model/{name}/{p.relative_to(path).as_posix()}", p.resolve()) for p in sorted(path.rglob("*"))
             if p.is_file() and ".git" not in p.relative_to(path).parts]
    return files, {"path": f"model/{name}", "name": name, "embedded": False}


# --- pack -----------------------------------------------------------------------------------------------------

def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


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
    """Write a bundle into ``out`` (see the module's docstring); returns the manifest. ``requirements=None``: the
    project's runtime dependencies. ``fetch`` is :func:`fetch_wheels` (injectable for tests)."""
    t0 = time.time()
    out = Path(out)
    target = target or Target(has=parse_names(DEFAULT_TARGET_HAS))
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
    data_dir = Path(data_dir) if data_dir else (Path(os.environ["MKV_DATA_DIR"])
                                                if os.environ.get("MKV_DATA_DIR") else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work = Path(tempfile.mkdtemp(prefix="mkv-offline-"))
    timings = {}
    try:
        sources: list[dict] = []          # path (in the bundle), kind, src, stored (file to split), encoding
        t = time.time()
        mfiles, model_record = model_files(model)
        sources += [{"path": p, "kind": "model", "src": s} for p, s in mfiles]
        if requirements is None:
            requirements = project_requirements()
        wheel_summary = None
        if requirements:
            log(f"resolving wheels for Python {target.python_version} ({', '.join(target.platforms)}) ...")
            wheels, wheel_summary = fetch(requirements, target, work / "wheels", work)
            sources += [{"path": f"wheels/{w.name}", "kind": "wheel", "src": w} for w in wheels]
            timings["wheels_s"] = round(time.time() - t, 1)
        t = time.time()
        for rel, path in text_files(texts, data_dir):
            sources.append({"path": f"data/{rel}", "kind": "text", "src": path})
        def prepare(s):
            s["src"] = Path(s["src"])
            s["size"] = s["src"].stat().st_size
            s["sha256"] = sha256_file(s["src"])
            s["stored"], s["encoding"] = s["src"], None
            if s["kind"] == "text" and compress == "xz":
                s["stored"], s["encoding"] = compressed_copy(s["src"], s["sha256"]), "xz"
            s["stored_size"] = s["stored"].stat().st_size

        from concurrent.futures import ThreadPoolExecutor   # hashlib and lzma release the GIL

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(prepare, sorted(sources, key=lambda s: -Path(s["src"]).stat().st_size)))
        timings["hash_compress_s"] = round(time.time() - t, 1)
        t = time.time()
        pieces: dict[str, tuple[dict, int, int]] = {}
        for s in sources:
            stored_name = s["path"] + (".xz" if s["encoding"] else "")
            ranges = chunk_ranges(s["stored_size"], chunk_bytes)
            for name, (off, length) in zip(piece_names(stored_name, len(ranges)), ranges):
                pieces[name] = (s, off, length)
        groups = assign_groups({k: v[2] for k, v in pieces.items()}, group_bytes - _RESERVE)
        files = []
        for s in sources:
            stored_name = s["path"] + (".xz" if s["encoding"] else "")
            ranges = chunk_ranges(s["stored_size"], chunk_bytes)
            entry = {"path": s["path"], "kind": s["kind"], "size": s["size"], "sha256": s["sha256"],
                     "encoding": s["encoding"], "stored_size": s["stored_size"], "pieces": []}
            for name, (off, length) in zip(piece_names(stored_name, len(ranges)), ranges):
                g = groups[name]
                rel = f"{group_name(g)}/{name}"
                sha = copy_range(s["stored"], off, length, stage / rel)
                entry["pieces"].append({"file": rel, "group": g, "size": length, "sha256": sha})
            files.append(entry)
        timings["write_s"] = round(time.time() - t, 1)
        n_groups = max(groups.values(), default=0)
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
        manifest["timings"] = {**timings, "total_s": round(time.time() - t0, 1)}
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
        _replace_dir(stage, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _replace_dir(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest``, replacing an earlier bundle there (renames, so never a mix of two)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


# --- unpack ---------------------------------------------------------------------------------------------------

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
        _replace_dir(tmp, site)
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
    problems = check_pieces(bundle, manifest)
    if problems:
        groups = sorted({int(m.group(1)) for m in (re.search(r"group (\d+)", p) for p in problems) if m})
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise BundleError(f"{len(problems)} of the bundle's pieces are missing or corrupt (nothing was written); "
                          f"bring group(s) {', '.join(group_name(g) for g in groups)} again:\n  {shown}")
    result = {"bundle_id": manifest["bundle_id"], "checked_pieces": sum(len(f["pieces"]) for f in manifest["files"])}
    if check_only:
        result["check_s"] = round(time.time() - t0, 1)
        return result
    into = Path(into) if into else bundle / "unpacked"
    joined = skipped = 0
    for entry in manifest["files"]:
        dest = into / entry["path"]
        if dest.is_file() and dest.stat().st_size == entry["size"] and sha256_file(dest) == entry["sha256"]:
            skipped += 1
            continue
        join_file(bundle, entry, dest)
        joined += 1
    result.update(joined=joined, already_there=skipped)
    target_py = manifest["target"]["python_version"]
    here_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = [into / f["path"] for f in manifest["files"] if f["kind"] == "wheel"]
    if wheels and not target_py.startswith(here_py) and not here_py.startswith(target_py):
        log(f"warning: the wheels are for Python {target_py}, this is Python {here_py}; pip may refuse them")
    site = None if into_env else into / "site"
    result["wheels"] = install(wheels, site, _site_stamp(manifest)) if wheels else "no wheels in the bundle"
    env = {}
    if site is not None and wheels:
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
    lines = [f"export {k}={v}" + ("${PYTHONPATH:+:$PYTHONPATH}" if k == "PYTHONPATH" else "")
             for k, v in env.items()]
    script = "# written by mkv offline unpack: source it before running mkv\n" + "\n".join(lines) + "\n"
    if model_path:
        script += f"# the model: --model {model_path}" + (" (or no --model: MKV_EMBEDDED_GGUF makes it the default)"
                                                            if "MKV_EMBEDDED_GGUF" in env else "") + "\n"
    with atomic_path(into / "env.sh") as tmp:
        tmp.write_text(script)
    result.update(env=env, env_lines=lines, env_file=str((into / "env.sh").resolve()),
                  model=str(model_path) if model_path else None, into=str(into.resolve()),
                  unpack_s=round(time.time() - t0, 1))
    return result


# --- command line ---------------------------------------------------------------------------------------------

def add_subcommands(sub) -> None:
    """``pack`` and ``unpack`` parsers (shared by ``mkv offline`` and ``python -m mkvlib.offline``)."""
    p = sub.add_parser("pack", help="write a bundle for a machine without network (run here, online)",
                       description="Write the model's GGUF, wheels the target lacks and the run's text files, in "
                       "chunks grouped for size-limited transfers, with sha256 of everything.")
    p.add_argument("--out", required=True, help="bundle folder (outside the checkout, or git-ignored like .offline/)")
    p.add_argument("--chunk-mb", type=float, default=DEFAULT_CHUNK_MB,
                   help=f"split files larger than this many MiB (default {DEFAULT_CHUNK_MB:g})")
    p.add_argument("--group-mb", type=float, default=DEFAULT_GROUP_MB,
                   help=f"at most this many MiB per transfer group gNN/, manifest included "
                   f"(default {DEFAULT_GROUP_MB:g})")
    has = p.add_mutually_exclusive_group()
    has.add_argument("--target-freeze", metavar="FILE", help="`pip freeze` of the target's Python")
    has.add_argument("--target-has", metavar="PKGS", help="comma-separated distributions the target has (their "
                     f"dependencies count as present; default {DEFAULT_TARGET_HAS})")
    p.add_argument("--python-version", default="3.12", help="the target's Python (default 3.12)")
    p.add_argument("--platform", action="append", default=None,
                   help=f"the target's wheel platform tag, repeatable or comma-separated (default "
                   f"{','.join(DEFAULT_PLATFORMS)}; manylinux_2_N includes older glibc tags)")
    p.add_argument("--packages", default=None, help="requirements to bring, comma-separated (default: the "
                   "project's dependencies from pyproject.toml); 'none' for no wheels")
    p.add_argument("--texts", default=DEFAULT_TEXTS, help="data-folder files or folders (relative to MKV_DATA_DIR), "
                   "comma-separated; 'run' (default): what the corpora and local tasks read; 'none'")
    p.add_argument("--data-dir", default=None, help="the data folder (default MKV_DATA_DIR)")
    p.add_argument("--model", default=None, help="embedded (default), a .gguf file, a model folder, a Hugging Face "
                   "id in the local cache, or none")
    p.add_argument("--compress", default="xz", choices=("xz", "none"), help="compress text files (default xz)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_pack)

    u = sub.add_parser("unpack", help="check, join and install a bundle (run on the target, offline)",
                       description="Check every piece's sha256, join the chunks atomically, install the wheels "
                       "offline into FOLDER/site (or the active environment) and print the environment to use.")
    u.add_argument("bundle", metavar="DIR", help="the bundle folder (manifest.json and gNN/ folders)")
    u.add_argument("--into", metavar="FOLDER", default=None, help="where to unpack (default DIR/unpacked)")
    u.add_argument("--into-env", action="store_true", help="install the wheels into the running Python's environment "
                   "instead of FOLDER/site")
    u.add_argument("--check", action="store_true", help="only check that every piece is present and intact")
    u.add_argument("--json", action="store_true", help="print the result as JSON")
    u.add_argument("--debug", action="store_true", help="show tracebacks")
    u.set_defaults(func=run_unpack)


def target_from_args(args) -> Target:
    platforms = tuple(p.strip() for arg in (args.platform or [",".join(DEFAULT_PLATFORMS)])
                      for p in arg.split(",") if p.strip())
    if args.target_freeze:
        path = Path(args.target_freeze)
        if not path.is_file():
            raise BundleError(f"--target-freeze {path}: no such file")
        return Target(args.python_version, platforms, parse_freeze(path.read_text()), complete=True)
    return Target(args.python_version, platforms, parse_names(args.target_has or DEFAULT_TARGET_HAS))


def run_pack(args) -> int:
    requirements = None
    if args.packages is not None:
        requirements = [] if args.packages.strip() == "none" else \
            [r.strip() for r in args.packages.split(",") if r.strip()]
    manifest = pack(args.out, chunk_mb=args.chunk_mb, group_mb=args.group_mb, target=target_from_args(args),
                    requirements=requirements, texts=args.texts, data_dir=args.data_dir, model=args.model,
                    compress=args.compress)
    print(json.dumps(manifest, indent=1) if args.json else pack_summary(manifest, Path(args.out)))
    return 0


def run_unpack(args) -> int:
    result = unpack(args.bundle, into=args.into, into_env=args.into_env, check_only=args.check)
    if args.json:
        print(json.dumps(result, indent=1))
    elif args.check:
        print(f"bundle {result['bundle_id']}: all {result['checked_pieces']} pieces present and intact")
    else:
        log(f"bundle {result['bundle_id']}: {result['checked_pieces']} pieces checked, {result['joined']} files "
            f"joined ({result['already_there']} already there), {result['wheels']}; {result['unpack_s']} s")
        if result["model"]:
            log(f"model: --model {result['model']}")
        log(f"environment (also in {result['env_file']}):")
        print("\n".join(result["env_lines"]))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mkvlib.offline", description=__doc__.split("\n\n")[0])
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (BundleError, OSError, ValueError) as err:
        if args.debug:
            raise
        print(f"mkv offline {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

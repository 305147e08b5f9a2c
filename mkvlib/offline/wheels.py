"""Which wheels travel: pip's resolution for the target, filtered by what the target has (its own
dependencies count as present; torch, triton and nvidia-* never travel), downloaded and checked."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..core.io import file_sha256
from .base import BundleError, Unresolvable, canonical, log, never_download
from .resolve import _item_file, _item_sha256, pip_build_wheel, pip_download, pip_resolve
from .target import Target, _packaging


@dataclass
class WheelPlan:
    download: list[dict]        # report items to bring
    provided: list[str]         # resolved distributions the target has (or that never travel)
    unneeded: list[str]         # in pip's resolution only for this machine's Python (markers)
    warnings: list[str]


class Requirements:
    """The requirements of pip's resolved ``items`` as a graph over (distribution, extra), with markers evaluated
    for the target's Python; ``warnings`` collects what cannot be parsed or was not resolved."""

    def __init__(self, items: list[dict], target: Target):
        Requirement = _packaging()
        self.target, self.env = target, target.marker_environment()
        self.by_name = {canonical(it["metadata"]["name"]): it for it in items}
        self.warnings: list[str] = []
        self.requires: dict[str, list] = {}
        for n, it in self.by_name.items():
            self.requires[n] = []
            for r in it["metadata"].get("requires_dist") or []:
                try:
                    self.requires[n].append(Requirement(r))
                except Exception:  # noqa: BLE001 - a malformed requirement in old metadata: say so, go on
                    self.warnings.append(f"{n}: cannot parse its requirement {r!r}; ignored")

    def applies(self, req, extra: str) -> bool:
        return req.marker is None or req.marker.evaluate({**self.env, "extra": extra})

    def children(self, name: str, extra: str, warn: bool):
        """(child, its extras with '') for each requirement of ``name[extra]`` on the target."""
        target = self.target
        for req in self.requires.get(name, []):
            if self.applies(req, extra):
                child = canonical(req.name)
                if child not in self.by_name:
                    if warn and not (child in target.has or never_download(child)):
                        self.warnings.append(f"{name} needs {req} on Python {target.python_version}, which pip did "
                                             "not resolve (it evaluates markers for this machine's Python): bring it "
                                             "yourself")
                    continue
                yield child, ("", *sorted(req.extras))

    def walk(self, starts, skip_base, warn: bool) -> set:
        """The distributions reached from ``starts`` [(name, extra)], not entering ``skip_base`` without extras."""
        seen, queue = set(), list(starts)
        while queue:
            name, extra = queue.pop()
            if (name, extra) in seen or (extra == "" and name in skip_base):
                continue
            seen.add((name, extra))
            for child, extras in self.children(name, extra, warn):
                queue.extend((child, e) for e in extras)
        return {n for n, _ in seen}

    def starts(self, roots: list[str]) -> list[tuple[str, str]]:
        """(name, extra) to walk from for the requirements ``roots`` that apply on the target and were resolved."""
        Requirement = _packaging()
        out = []
        for r in roots:
            req = Requirement(r)
            if self.applies(req, "") and canonical(req.name) in self.by_name:
                out += [(canonical(req.name), e) for e in ("", *sorted(req.extras))]
        return out


def plan_wheels(items: list[dict], roots: list[str], target: Target) -> WheelPlan:
    """Which of pip's resolved ``items`` (``pip install --report``'s ``install`` list) the target lacks.

    A distribution the target has provides its own dependencies too (its closure, markers evaluated for the
    target's Python); torch, triton and nvidia-* count as provided. Walking from ``roots`` (with extras), every
    distribution reached that is not provided is brought."""
    graph = Requirements(items, target)
    has = {n for n in graph.by_name if n in target.has or never_download(n)}
    provided = graph.walk([(n, "") for n in has], skip_base=set(), warn=False)
    reached = graph.walk(graph.starts(roots), skip_base=provided, warn=True)
    download = [graph.by_name[n] for n in sorted(reached - provided)]
    unneeded = sorted(set(graph.by_name) - reached - provided)
    return WheelPlan(download, sorted(provided), unneeded, sorted(set(graph.warnings)))


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
        if expected and urlparse(item["download_info"]["url"]).scheme != "file" and file_sha256(path) != expected:
            raise BundleError(f"{path.name}: sha256 differs from the index's")
        wheels.append(path)
    summary = {"requirements": requirements, "wheels": [{"name": it["metadata"]["name"],
                                                         "version": it["metadata"]["version"], "file": p.name}
                                                        for it, p in zip(plan.download, wheels)],
               "provided_by_target": plan.provided, "not_needed_on_target": plan.unneeded,
               "built_from_source": built, "warnings": plan.warnings}
    return wheels, summary

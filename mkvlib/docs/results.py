"""docs/results.md: every measured table, generated from the files under ``data/`` (never typed by hand).

Each table is one function registered with :func:`section` (in :mod:`.ood`, :mod:`.accuracy`, :mod:`.runs` and
:mod:`.compare`), shown in the order registered, each inside ``<!-- generated: NAME -->`` markers so that README.md
and other documents can embed it by NAME. A new results source is one function::

    @section("ood-suite", "Out-of-domain perplexity and KL", result="ood_suite.json")
    def ood_suite(data: Data, path, rec) -> str:      # left out until data/results/ood_suite.json exists
        return paragraphs(prose("ood-suite"), table(headers, rows))    # framed by its source and its command

Further glob patterns (relative to ``data/``) after the title name other files it reads: a results file no section
reads is listed under "Other result files". Say where a table comes from (:func:`source_line`) and which command
made it (:func:`commands_line`); fixed explanations live in prose.md (:func:`prose`); format numbers with
:mod:`.markdown` and sort rows explicitly, so that the same data gives the same bytes. Then
``python -m mkvlib.docs --write``.
"""
from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .markdown import code, paragraphs
from .records import Data


@dataclass(frozen=True)
class Section:
    name: str                           # the marker name: <!-- generated: NAME -->
    title: str                          # the heading in docs/results.md
    sources: tuple[str, ...]            # glob patterns under data/ that it reads
    render: Callable[[Data], str | None]  # the Markdown body, or None when its files are absent

    def reads(self, relpath: str) -> bool:
        """Whether this section reads ``relpath`` (relative to data/)."""
        return any(fnmatch.fnmatch(relpath, p) for p in self.sources)


SECTIONS: list[Section] = []


def section(name: str, title: str, *sources: str, result: str | None = None):
    """Register ``fn(data) -> str | None`` as one table of docs/results.md. With ``result`` (a JSON file in
    data/results/, a source too) ``fn(data, path, record)`` gives the body between that file's source line and the
    commands it records; the section is left out while the file is absent (or the body is None)."""
    def register(fn):
        if any(s.name == name for s in SECTIONS):
            raise ValueError(f"a results section named {name!r} is already registered")

        def render(data: Data) -> str | None:
            path, rec = data.result(result)
            body = None if rec is None else fn(data, path, rec)
            return body and paragraphs(source_line(data, path), body,
                                       commands_line([rec.get("command"), *rec.get("commands", [])]))
        SECTIONS.append(Section(name, title, (f"results/{result}",) * bool(result) + sources, render if result else fn))
        return fn
    return register


@functools.cache
def _prose() -> dict[str, str]:
    parts = re.split(r"^## (\S+)\n", Path(__file__).with_name("prose.md").read_text(), flags=re.M)
    return {key: text.strip() for key, text in zip(parts[1::2], parts[2::2])}


def prose(key: str, **fields) -> str:
    """The fixed text ``key`` of prose.md (a section's explanation), its ``{fields}`` filled in."""
    return _prose()[key].format(**fields)


def source_line(data: Data, *paths, note: str = "") -> str:
    return f"Source: {', '.join(code(data.rel(p)) for p in paths)}." + (f" {note}" if note else "")


def commands_line(commands, what: str = "Command") -> str:
    """The commands that made a table, one per line; or the statement that none is recorded."""
    commands = [c for c in dict.fromkeys(commands) if c]
    if len(commands) == 1:
        return f"{what}: {code(commands[0])}"
    if commands:
        return f"{what}s:\n\n" + "\n".join(f"- {code(c)}" for c in commands)
    return f"{what}: not recorded in the file."


def readout_text(ev: dict) -> str:
    """What a trajectory's readout was measured on: the out-of-domain suite's mean over its domains, or one
    corpus."""
    from ..core.trajectory import SUITE_CORPUS

    if ev.get("corpus") != SUITE_CORPUS:
        return f"{ev.get('corpus')}, {ev.get('tokens'):,} tokens in blocks of {ev.get('seq_len')}"
    domains = ev.get("domains") or []
    return (f"the out-of-domain suite, mean over its {len(domains)} domains ({', '.join(domains)}; "
            f"{ev.get('tokens', 0) // max(1, len(domains)):,} tokens each in blocks of {ev.get('seq_len')}; "
            "perplexity: the geometric mean)")


def other_results(data: Data) -> str | None:
    """The closing part of docs/results.md: results files that no table reads (None when there are none)."""
    rels = [p.relative_to(data.dir).as_posix() for p in data.files if data.results in p.parents]
    unread = [r for r in rels if not any(s.reads(r) for s in SECTIONS)]
    if not unread:
        return None
    return ("No table reads these files yet; register one in `mkvlib/docs/results.py` (see its docstring):\n\n" +
            "\n".join(f"- {code('data/' + r)}" for r in unread))

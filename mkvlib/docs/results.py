"""docs/results.md: every measured table, generated from the files under ``data/`` (never typed by hand).

Each table is one function registered with :func:`section` (in :mod:`.ood`, :mod:`.accuracy`, :mod:`.runs` and
:mod:`.compare`), shown in the order registered inside ``<!-- generated: NAME -->`` markers, so that README.md can
embed it by NAME. A new results source is one function::

    @section("ood-suite", "Out-of-domain perplexity and KL", result="ood_suite.json")
    def ood_suite(data: Data, path, rec) -> str:      # left out until data/results/ood_suite.json exists
        return paragraphs(prose("ood-suite"), table(headers, rows))    # framed by its source and its command

Further glob patterns (relative to ``data/``) name other files it reads (an item store in results/items/ is read
with its summary); a results file no section reads is listed under "Other result files". Fixed explanations live
in prose.md (:func:`prose`); sort rows explicitly, so that the same data gives the same bytes. Then
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
from .records import Data, register


@dataclass(frozen=True)
class Section:
    name: str                           # the marker name: <!-- generated: NAME -->
    title: str                          # the heading in docs/results.md
    sources: tuple[str, ...]            # glob patterns under data/ that it reads
    render: Callable[[Data], str | None]  # the Markdown body, or None when its files are absent

    def reads(self, relpath: str) -> bool:
        """Whether this section reads ``relpath`` (relative to data/); an item store with its summary."""
        summary = re.sub(r"^results/items/(.+)_items\.csv$", r"results/\1.json", relpath)
        return any(fnmatch.fnmatch(p, s) for s in self.sources for p in {relpath, summary})


SECTIONS: list[Section] = []


def section(name: str, title: str, *sources: str, result: str | None = None):
    """Register ``fn(data) -> str | None`` as one table of docs/results.md. With ``result`` (a JSON file in
    data/results/, a source too) ``fn(data, path, record)`` gives the body between that file's source line and the
    commands it records; the section is left out while the file is absent (or the body is None)."""
    def framed(fn):
        def render(data: Data) -> str | None:
            path, rec = data.result(result)
            body = None if rec is None else fn(data, path, rec)
            return body and paragraphs(source_line(data, path), body,
                                       commands_line([rec.get("command"), *rec.get("commands", [])]))
        return register(SECTIONS, name, Section(name, title, (f"results/{result}",) * bool(result) + sources,
                                                render if result else fn), fn)
    return framed


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
    if len(commands) > 1:
        return f"{what}s:\n\n" + "\n".join(f"- {code(c)}" for c in commands)
    return f"{what}: {code(commands[0])}" if commands else f"{what}: not recorded in the file."


def commands_list(named: dict, where: str) -> str:
    """'Commands (from <where>):' then '- `name`: `command`' per entry (unrecorded: 'command not recorded')."""
    return "\n".join([f"Commands (from {where}):", ""] + [
        f"- {code(n)}: " + (code(c) if c else "command not recorded") for n, c in named.items()])


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
    unread = [r for p in data.files if data.results in p.parents
              for r in [p.relative_to(data.dir).as_posix()] if not any(s.reads(r) for s in SECTIONS)]
    return ("No table reads these files yet; register one in `mkvlib/docs/results.py` (see its docstring):\n\n" +
            "\n".join(f"- {code('data/' + r)}" for r in unread)) if unread else None

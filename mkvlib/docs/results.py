"""docs/results.md: the registry of its sections (a new table is one function registered with :func:`section`, as
the package's docstring shows), the fixed text of prose.md, and the lines that frame a table."""
from __future__ import annotations

import fnmatch
import functools
import re
from collections import ChainMap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.trajectory import SUITE_CORPUS
from .markdown import code, paragraphs
from .records import Data, register


@dataclass(frozen=True)
class Section:
    name: str                               # the marker name: <!-- generated: NAME -->
    title: str                              # the heading in docs/results.md
    sources: tuple[str, ...]                # glob patterns under data/ that it reads
    render: Callable[[Data], str | None]    # the Markdown body, or None when its files are absent

    def reads(self, relpath: str) -> bool:
        """Whether this section reads ``relpath`` (under data/); an item store counts as its summary."""
        summary = re.sub(r"^results/items/(.+)_items\.csv$", r"results/\1.json", relpath)
        return any(fnmatch.fnmatch(p, s) for s in self.sources for p in {relpath, summary})


SECTIONS: dict[str, Section] = {}


def section(name: str, title: str, *sources: str, result: str | None = None):
    """Register ``fn(data) -> str | None`` as a section; with ``result`` (a JSON file of data/results/, then a source
    too) ``fn(data, path, record)`` gives the body between the file's source line and its commands."""
    def framed(fn, data: Data) -> str | None:
        path, rec = data.result(result)
        body = None if rec is None else fn(data, path, rec)
        return body and paragraphs(source_line(data, path), body,
                                   commands_line([rec.get("command"), *rec.get("commands", [])]))

    def add(fn):
        register(SECTIONS, name, Section(name, title, (f"results/{result}",) * bool(result) + sources,
                                         functools.partial(framed, fn) if result else fn))
        return fn
    return add


@functools.cache
def _prose() -> dict[str, str]:
    parts = re.split(r"^## (\S+)\n", Path(__file__).with_name("prose.md").read_text(), flags=re.M)
    return {key: text.strip() for key, text in zip(parts[1::2], parts[2::2])}


def prose(key: str, *records: dict, **fields) -> str:
    """The fixed text ``key`` of prose.md, its ``{fields}`` taken from ``fields``, then from the records."""
    return _prose()[key].format_map(ChainMap(fields, *records))


def source_line(data: Data, *paths, note: str = "") -> str:
    return f"Source: {', '.join(code(data.rel(p)) for p in paths)}." + (f" {note}" if note else "")


def commands_line(commands) -> str:
    """The commands that made a table, one per line; or the statement that none is recorded."""
    commands = [c for c in dict.fromkeys(commands) if c]
    if len(commands) > 1:
        return "Commands:\n\n" + "\n".join(f"- {code(c)}" for c in commands)
    return f"Command: {code(commands[0])}" if commands else "Command: not recorded in the file."


def commands_list(named: dict, where: str) -> str:
    return "\n".join([f"Commands (from {where}):", ""] + [
        f"- {code(n)}: " + (code(c) if c else "command not recorded") for n, c in named.items()])


def readout_text(ev: dict) -> str:
    """What a trajectory's readout was measured on: the out-of-domain suite (its mean over domains) or one corpus."""
    if ev.get("corpus") != SUITE_CORPUS:
        return f"{ev.get('corpus')}, {ev.get('tokens'):,} tokens in blocks of {ev.get('seq_len')}"
    domains = ev.get("domains") or []
    return (f"the out-of-domain suite, mean over its {len(domains)} domains ({', '.join(domains)}; "
            f"{ev.get('tokens', 0) // max(1, len(domains)):,} tokens each in blocks of {ev.get('seq_len')}; "
            "perplexity: the geometric mean)")


def other_results(data: Data) -> str | None:
    """The closing part of docs/results.md: results files that no section reads (None when there are none)."""
    unread = [r for p in data.files if data.results in p.parents
              for r in [p.relative_to(data.dir).as_posix()] if not any(s.reads(r) for s in SECTIONS.values())]
    return ("No table reads these files yet; register one as the docstring of `mkvlib/docs/__init__.py` shows:\n\n" +
            "\n".join(f"- {code('data/' + r)}" for r in unread)) if unread else None

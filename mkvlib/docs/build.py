"""The generated documents, and checking or rewriting them: what ``python -m mkvlib.docs`` runs.

Two kinds of files:

- generated whole (:data:`GENERATED`): docs/results.md (:mod:`.results`) and data/README.md (:mod:`.data_index`);
- hand-written with generated blocks (:data:`MARKED`): README.md and docs/*.md. Between
  ``<!-- generated: NAME -->`` and ``<!-- /generated -->`` the text is a results table (NAME of a section in
  :mod:`.results`) or one number (NAME of a fact in :mod:`.facts`), rewritten from the data.

:func:`check` lists every file whose text differs from what the data gives; :func:`write` rewrites them.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from . import compare, facts, ood, results  # noqa: F401  (ood and compare register their sections)
from .data_index import render_data_index
from .markdown import block, block_names, fill_blocks, slug
from .records import Data

MARKED = ("README.md", "docs/*.md")

HEADER = """# Measured results

Every table here is computed from the files under `data/` (indexed in [data/README.md](../data/README.md)) by
`mkvlib/docs/results.py`; none is typed by hand. Regenerate it with `make docs` (`python -m mkvlib.docs
--write`); `tests/test_docs.py` fails when this file, or a generated block in README.md or docs/, no longer matches
the data. Each table names the file it reads and the command that made it, where that file records one. The
method behind the numbers is in [design.md](design.md).
"""


def render_results(data: Data) -> str:
    """docs/results.md: a contents list, then every section that has data, each inside its markers."""
    parts, contents = [], []
    for s in results.SECTIONS:
        body = s.render(data)
        if body is None:
            continue
        contents.append(f"- [{s.title}](#{slug(s.title)})")
        parts.append(f"## {s.title}\n\n{block(s.name, body)}")
    other = results.other_results(data)
    if other:
        contents.append(f"- [Other result files](#{slug('Other result files')})")
        parts.append(f"## Other result files\n\n{other}")
    return HEADER + "\n## Contents\n\n" + "\n".join(contents) + "\n\n" + "\n\n".join(parts) + "\n"


GENERATED = {"docs/results.md": render_results, "data/README.md": render_data_index}


def render_block(data: Data, name: str) -> str:
    """The text of block ``name``: a results section's table or a fact's number."""
    if name in facts.FACTS:
        return facts.FACTS[name](data)
    for s in results.SECTIONS:
        if s.name == name:
            body = s.render(data)
            if body is None:
                raise KeyError(f"generated block {name!r}: the files it reads ({', '.join(s.sources)}) are missing")
            return body
    known = sorted(facts.FACTS) + [s.name for s in results.SECTIONS]
    raise KeyError(f"unknown generated block {name!r}; known names: {', '.join(known)}")


def marked_files(root: Path) -> list[Path]:
    """README.md and docs/*.md that hold at least one generated block (the generated files excepted)."""
    found = {p for pattern in MARKED for p in Path(root).glob(pattern) if p.is_file()}
    skip = {Path(root) / g for g in GENERATED}
    return sorted(p for p in found - skip if block_names(p.read_text()))


def expected(root) -> dict[str, str]:
    """{path relative to root: the text it should have} for every generated or marked file."""
    root = Path(root)
    data = Data(root)
    out = {rel: render(data) for rel, render in GENERATED.items()}
    for path in marked_files(root):
        out[path.relative_to(root).as_posix()] = fill_blocks(path.read_text(), lambda n: render_block(data, n))
    return out


def check(root) -> dict[str, str]:
    """{path: unified diff} of every file that differs from what the data gives (empty when all agree)."""
    root = Path(root)
    stale = {}
    for rel, text in expected(root).items():
        path = root / rel
        now = path.read_text() if path.is_file() else ""
        if now != text:
            diff = difflib.unified_diff(now.splitlines(), text.splitlines(), f"{rel} (committed)",
                                        f"{rel} (from the data)", lineterm="", n=1)
            stale[rel] = "\n".join(diff)
    return stale


def write(root) -> list[str]:
    """Rewrite every file that differs from what the data gives; returns their paths."""
    root = Path(root)
    changed = []
    for rel, text in expected(root).items():
        path = root / rel
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(rel)
    return changed

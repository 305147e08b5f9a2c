"""The generated documents, and checking or rewriting them: what ``python -m mkvlib.docs`` runs.

Generated whole (:data:`GENERATED`): docs/results.md and data/README.md. Hand-written with generated blocks
(:data:`MARKED`): README.md and docs/*.md, each block a results section or a fact."""
from __future__ import annotations

import difflib
from pathlib import Path

from . import accuracy, compare, ood, results, runs  # noqa: F401  (the sections register in this order)
from .data_index import render_data_index
from .facts import FACTS
from .markdown import block, block_names, fill_blocks, slug
from .records import Data

MARKED = ("README.md", "docs/*.md")


def render_results(data: Data) -> str:
    """docs/results.md: a contents list, then every section that has data, each inside its markers."""
    done = [(s.title, block(s.name, body)) for s in results.SECTIONS.values() if (body := s.render(data)) is not None]
    done += [("Other result files", other)] if (other := results.other_results(data)) else []
    return (results.prose("results-header") + "\n\n## Contents\n\n" + "\n".join(f"- [{t}](#{slug(t)})" for t, _ in done)
            + "\n\n" + "\n\n".join(f"## {t}\n\n{body}" for t, body in done) + "\n")


GENERATED = {"docs/results.md": render_results, "data/README.md": render_data_index}


def render_block(data: Data, name: str) -> str:
    """The text of block ``name``: a fact's number or a results section's table."""
    sections = results.SECTIONS
    if name in FACTS:
        return FACTS[name](data)
    if name not in sections:
        raise KeyError(f"unknown generated block {name!r}; known names: " + ", ".join(sorted(FACTS) + list(sections)))
    if (body := sections[name].render(data)) is None:
        raise KeyError(f"generated block {name!r}: the files it reads ({', '.join(sections[name].sources)}) "
                       "are missing")
    return body


def differing(root) -> dict[str, tuple[str, str]]:
    """{path under root: (committed text, the text the data gives)} of every generated or marked file that differs."""
    root, data = Path(root), Data(root)
    out = {rel: render(data) for rel, render in GENERATED.items()}
    marked = {p for pattern in MARKED for p in root.glob(pattern) if p.is_file()} - {root / g for g in GENERATED}
    for path in sorted(p for p in marked if block_names(p.read_text())):
        out[path.relative_to(root).as_posix()] = fill_blocks(path.read_text(), lambda n: render_block(data, n))
    now = {rel: (root / rel).read_text() if (root / rel).is_file() else "" for rel in out}
    return {rel: (now[rel], text) for rel, text in out.items() if now[rel] != text}


def check(root) -> dict[str, str]:
    """{path: unified diff} of every file that differs from what the data gives (empty when all agree)."""
    return {rel: "\n".join(difflib.unified_diff(now.splitlines(), text.splitlines(), f"{rel} (committed)",
                                                f"{rel} (from the data)", lineterm="", n=1))
            for rel, (now, text) in differing(root).items()}


def write(root) -> list[str]:
    """Rewrite every file that differs from what the data gives; returns their paths."""
    for rel, (_, text) in (changed := differing(root)).items():
        (Path(root) / rel).parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / rel).write_text(text)
    return list(changed)

"""Markdown for the generated documents: tables (through pandas), number formats, marker blocks.

A block is the text between ``<!-- generated: NAME -->`` and ``<!-- /generated -->`` (not right after a backtick):
:func:`fill_blocks` fills it with ``render(NAME)``, as lines when the opening marker ends its line, else inline."""
from __future__ import annotations

import re

import pandas as pd

from ..retrieval import wilson_interval

MARKER = re.compile(r"(?<!`)<!-- generated: (?P<name>[^\s>]+) -->(?P<body>.*?)<!-- /generated -->", re.DOTALL)
DASH = "–"


def table(headers, rows, align=None) -> str:
    """A Markdown table of preformatted cells; ``align``: 'l'/'r' per column (default: left, then right)."""
    frame = pd.DataFrame([[str(c).replace("|", r"\|") for c in row] for row in rows], columns=list(headers))
    sides = ["right" if a == "r" else "left" for a in align or "l" + "r" * (len(headers) - 1)]
    return frame.to_markdown(index=False, disable_numparse=True, colalign=sides)


def code(text) -> str:
    return f"`` {text} ``" if "`" in str(text) else f"`{text}`"


def num(value, digits: int = 1) -> str:
    return DASH if value is None or value != value else f"{float(value):.{digits}f}"


def pct(fraction, digits: int | None = 1) -> str:
    """0.875 -> '87.5%'; ``digits=None``: trailing zeros dropped (budgets)."""
    return DASH if fraction is None else f"{100 * float(fraction):{'g' if digits is None else f'.{digits}f'}}%"


def mib(n_bytes) -> str:
    return DASH if n_bytes is None else f"{n_bytes / 2 ** 20:.1f} MiB"


def count(correct: int, n: int) -> str:
    """'6/8 (41–93%)': a count of correct answers with its 95% Wilson interval."""
    lo, hi = wilson_interval(int(correct), int(n))
    return f"{correct}/{n} ({100 * lo:.0f}{DASH}{100 * hi:.0f}%)"


def either(fn, value, missing: str = "-") -> str:
    return missing if value is None else fn(value)


def bullets(lines, head: str = "") -> str:
    items = "\n".join(f"- {line}" for line in lines if line)
    return f"{head}\n\n{items}" if head else items


def paragraphs(*parts) -> str:
    return "\n\n".join(p for p in parts if p)


def slug(title: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def block(name: str, body: str, inline: bool = False) -> str:
    body = body.strip("\n")
    return f"<!-- generated: {name} -->{body}<!-- /generated -->" if inline else \
        f"<!-- generated: {name} -->\n{body}\n<!-- /generated -->"


def block_names(text: str) -> list[str]:
    return [m["name"] for m in MARKER.finditer(text)]


def fill_blocks(text: str, render) -> str:
    """``text`` with every block's body replaced by ``render(name)`` (a KeyError for a name it does not know)."""
    return MARKER.sub(lambda m: block(m["name"], render(m["name"]), not m["body"].startswith("\n")), text)

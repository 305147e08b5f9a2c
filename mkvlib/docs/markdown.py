"""Small Markdown helpers for the generated documents: tables, number formats, and marker blocks.

A marker block is the text between ``<!-- generated: NAME -->`` and ``<!-- /generated -->`` in a Markdown file.
:func:`fill_blocks` replaces every block's body with what ``render(NAME)`` returns: a block whose opening marker
ends its line is filled with lines (a table, a paragraph); one that continues on the same line is filled inline
(a single number in a sentence). Anything outside the markers is left exactly as it is, and a marker quoted in
inline code (right after a backtick) is text, not a block.
"""
from __future__ import annotations

import re

# an opening marker right after a backtick is quoted in inline code (documentation about the markers), not a block
MARKER = re.compile(r"(?<!`)<!-- generated: (?P<name>[^\s>]+) -->(?P<body>.*?)<!-- /generated -->", re.DOTALL)
DASH = "–"


def table(headers, rows, align=None) -> str:
    """A Markdown table; ``align`` is one of 'l'/'r' per column (default: left for the first, right for the rest).
    Cells are converted with ``str``; '|' inside a cell is escaped."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [headers, rule] + [[str(c).replace("|", r"\|") for c in row] for row in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def count(correct: int, n: int) -> str:
    """'6/8 (41-93%)': a retrieval count with its 95% Wilson interval (:func:`mkvlib.retrieval.wilson_interval`)."""
    from ..retrieval import wilson_interval

    lo, hi = wilson_interval(int(correct), int(n))
    return f"{correct}/{n} ({100 * lo:.0f}{DASH}{100 * hi:.0f}%)"


def code(text) -> str:
    """Inline code (backticks doubled when the text holds one)."""
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def pct(fraction, digits: int = 1) -> str:
    """0.875 -> '87.5%'; a budget or a share, with trailing zeros dropped for budgets given as ``digits=None``."""
    if fraction is None:
        return DASH
    if digits is None:
        return f"{100 * float(fraction):g}%"
    return f"{100 * float(fraction):.{digits}f}%"


def num(value, digits: int = 1) -> str:
    """A float with ``digits`` decimals; None or NaN as a dash."""
    if value is None or value != value:
        return DASH
    return f"{float(value):.{digits}f}"


def mib(n_bytes) -> str:
    return DASH if n_bytes is None else f"{n_bytes / 2 ** 20:.1f} MiB"


def slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def block(name: str, body: str) -> str:
    """``body`` between the markers of block ``name`` (how the generated files embed their own blocks)."""
    return f"<!-- generated: {name} -->\n{body.strip(chr(10))}\n<!-- /generated -->"


def block_names(text: str) -> list[str]:
    """The names of the marker blocks in ``text``, in order."""
    return [m.group("name") for m in MARKER.finditer(text)]


def fill_blocks(text: str, render) -> str:
    """``text`` with every marker block's body replaced by ``render(name)``; raises KeyError for an unknown name
    (``render`` decides what is known)."""
    def fill(match):
        name, body = match.group("name"), match.group("body")
        new = render(name).strip("\n")
        inner = f"\n{new}\n" if body.startswith("\n") else new
        return f"<!-- generated: {name} -->{inner}<!-- /generated -->"
    return MARKER.sub(fill, text)

"""Figures of notebook 05: decode speed-up per budget and capacity within a memory limit."""
from __future__ import annotations


def plot_decode_speedup(rows: list[dict], title: str = ""):
    """Decode tokens/s of the compressed cache over DynamicCache's, per budget (one line per context)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for context in sorted({r["context"] for r in rows}):
        pts = sorted((r["budget"], r["speedup"]) for r in rows if r["context"] == context and r["budget"])
        ax.plot([100 * b for b, _ in pts], [s for _, s in pts], marker="o", label=f"context {context}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("KV budget (%)")
    ax.set_ylabel("decode tokens/s vs DynamicCache")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.set_title(title or "real compressed cache: decode speed-up")
    fig.tight_layout()
    return fig


def plot_capacity(capacities: dict, title: str = ""):
    """Bar chart of the largest number of cached tokens (batch x context) within a memory limit, per cache."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = list(capacities)
    ax.bar(names, [capacities[n]["max_tokens"] for n in names], color=["#888", "#3a7", "#37a", "#a73"][:len(names)])
    ax.set_ylabel("max batch x context tokens")
    ax.set_title(title or f"within {capacities[names[0]]['limit_bytes'] / 2**30:.1f} GiB")
    fig.tight_layout()
    return fig

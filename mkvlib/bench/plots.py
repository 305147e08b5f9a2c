"""Figures of notebook 05: decode speed-up per budget and capacity within a memory limit."""
from __future__ import annotations


def plot_decode_speedup(rows: list[dict]):
    """Decode tokens/s of the compressed cache over DynamicCache's, per budget (one line per context)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for context in sorted({r["context"] for r in rows}):
        pts = sorted((r["budget"], r["speedup"]) for r in rows if r["context"] == context and r["budget"])
        ax.plot([100 * b for b, _ in pts], [s for _, s in pts], marker="o", label=f"context {context}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    top = max([s for r in rows if r["budget"] for s in [r["speedup"]]] + [1.0])
    ax.set_ylim(0, 1.15 * top)                         # from zero: a ratio near 1 must not look like an effect
    ax.set_xlabel("KV budget (%)")
    ax.set_ylabel("decode tokens/s vs DynamicCache")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.set_title("real compressed cache: decode speed-up")
    fig.tight_layout()
    return fig


def plot_capacity(capacities: dict):
    """Bar chart of the largest number of cached tokens (batch x context) within a memory limit, per cache."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = list(capacities)
    ax.bar(names, [capacities[n]["max_tokens"] for n in names], color=["#888", "#3a7", "#37a", "#a73"][:len(names)])
    ax.set_ylabel("max batch x context tokens")
    ax.set_title(f"within {capacities[names[0]]['limit_bytes'] / 2**30:.1f} GiB")
    fig.tight_layout()
    return fig


def speed_table(rows: list[dict]):
    """Decode speed of the compressed cache per (context, budget), with its two effects apart: ``preallocation``
    (the compressed cache at 100% over DynamicCache: no copy per step, same bytes) and ``compression`` (at this
    budget over 100%: fewer bytes read). Rows of :func:`mkvlib.bench.budget_sweep` with a 100% row per context."""
    import pandas as pd

    out = []
    for context in sorted({r["context"] for r in rows}):
        mine = [r for r in rows if r["context"] == context]
        dynamic = next(r["decode_tokens_per_s"] for r in mine if r["cache"] == "dynamic")
        full = next((r["decode_tokens_per_s"] for r in mine if r["cache"] == "compressed" and r["budget"] == 1.0), None)
        if full is None:
            raise ValueError(f"speed_table needs the compressed cache at budget 1.0 for context {context}")
        for r in mine:
            if r["cache"] == "compressed":
                out.append({"context": context, "budget": r["budget"], "tokens/s": r["decode_tokens_per_s"],
                            "DynamicCache tokens/s": dynamic, "vs DynamicCache": r["decode_tokens_per_s"] / dynamic,
                            "preallocation": full / dynamic, "compression": r["decode_tokens_per_s"] / full})
    return pd.DataFrame(out).set_index(["context", "budget"])

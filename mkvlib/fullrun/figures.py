"""figures.png: one page of four panels from summary.json's numbers (training curve, lm-eval accuracy against
budget, out-of-domain KL, decode speed and capacity), drawn at the end of the run from whatever finished."""
from __future__ import annotations

from ..results_store import BASELINE


def _train(ax, rec) -> bool:
    hist = rec.get("history") or []
    if not hist:
        return False
    ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], lw=0.8, color="#37a", label="train loss (KD)")
    evals = rec.get("evals") or []
    if evals and "kl@0.5" in evals[0]:
        ax.plot([e["step"] for e in evals], [e["kl@0.5"] for e in evals], "o-", color="#a73",
                label="suite KL at 50%")
    ax.set_xlabel("step")
    ax.set_title(f"training: {rec.get('tokens_seen', 0):,} tokens")
    ax.legend(fontsize=7)
    return True


def _lmeval(ax, rec) -> bool:
    table = [r for r in rec.get("table") or [] if r.get("kept") is not None]
    if not any(r["method"] != BASELINE for r in table):
        return False
    base = [r for r in table if r["method"] == BASELINE]
    for method in sorted({r["method"] for r in table} - {BASELINE}):
        pts = sorted((r["budget"], 100 * r["kept"]) for r in table if r["method"] == method)
        pts = sorted(pts + [(1.0, 100.0)] * bool(base))
        ax.plot([100 * b for b, _ in pts], [k for _, k in pts], "o-", label=method)
    ax.invert_xaxis()
    ax.set_xlabel("KV budget (%)")
    ax.set_ylabel("% of uncompressed accuracy")
    ax.set_title(f"lm-eval ({', '.join(rec.get('tasks', []))}; limit {rec.get('limit')})", fontsize=9)
    ax.legend(fontsize=7)
    return True


def _suite(ax, rec) -> bool:
    results = rec.get("results") or {}
    if not results:
        return False
    names = list(results)
    ax.barh(range(len(names)), [results[n]["kl_to_base"] for n in names], color="#3a7")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("mean KL to the uncompressed model")
    ax.set_title("out-of-domain suite")
    return True


def _bench(ax, rec) -> bool:
    rows = ((rec.get("common") or {}).get("rows")) or {}
    if not rows:
        return False
    names, caps = list(rows), rec.get("capacity") or {}
    bars = ax.bar(range(len(names)), [rows[n]["decode_tokens_per_s"] for n in names], color="#888")
    for bar, name in zip(bars, names):
        ax.annotate(f"max batch {caps.get(name, {}).get('max_batch')}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7, ha="right")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"decode at context {rec.get('context')}, batch {rec['common'].get('batch')}", fontsize=9)
    return True


def write_figures(ctx, bench: dict | None) -> bool:
    """Draw figures.png from the stages' records; returns False when nothing finished to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.io import atomic_path

    stages = ctx.summary["stages"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    drawn = [_train(axes[0, 0], stages.get("train", {})), _lmeval(axes[0, 1], stages.get("lmeval", {})),
             _suite(axes[1, 0], stages.get("suite", {})), _bench(axes[1, 1], bench or {})]
    for ax, ok in zip(axes.flat, drawn):
        if not ok:
            ax.axis("off")
    fig.suptitle(f"mkv fullrun: {ctx.summary.get('model')} on {ctx.summary.get('device')} "
                 f"({ctx.summary.get('dtype')})", fontsize=10)
    fig.tight_layout()
    if any(drawn):
        with atomic_path(ctx.path("figures")) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return any(drawn)

"""Plot helpers: each returns a matplotlib Figure; :func:`save_figure` writes it under figures/ with a stable name,
:func:`show_figure` also shows it once in a notebook. Introduced in notebook 01."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use(matplotlib.get_backend() if "inline" in matplotlib.get_backend() else "Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .core.io import atomic_path  # noqa: E402
from .runtime import figures_dir  # noqa: E402


def save_figure(fig, name: str) -> Path:
    """Save ``fig`` as figures/<name>.png (figures/fast/ in fast mode), atomically; return the path."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"figure name {name!r} must be letters, digits, '-' and '_' only")
    path = figures_dir() / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    return path


def show_figure(fig, name: str) -> None:
    """Save ``fig`` as :func:`save_figure` does and show it once where it is made.

    In a notebook the saved PNG is displayed, whether pyplot manages the figure or not (a bare
    :class:`matplotlib.figure.Figure` would otherwise print as ``<Figure size ...>``); a pyplot figure is then
    closed, so the inline backend does not show it a second time. Outside a notebook it is only saved."""
    path = save_figure(fig, name)
    plt.close(fig)                                    # no-op for a figure pyplot does not manage
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:                               # no IPython: nothing to show on
        return
    if get_ipython() is not None:
        display(Image(data=path.read_bytes(), format="png"))


def finish_figure(fig, title: str = ""):
    """``fig`` with ``title`` (if any) above its panels and its layout made tight: how the figures end."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def spectrum_decay(spectrum: torch.Tensor, title: str):
    """Normalised eigenvalue decay, one line per layer (mean over KV heads), for a spectrum (L, G, d)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    spec = spectrum.double()
    spec = (spec / spec.sum(-1, keepdim=True)).mean(1).numpy()            # (L, d)
    cmap = plt.get_cmap("viridis")
    for layer, row in enumerate(spec):
        ax.semilogy(np.arange(1, len(row) + 1), row, color=cmap(layer / max(1, len(spec) - 1)), lw=1)
    ax.set(xlabel="component", ylabel="share of energy", title=title)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(spec) - 1))
    fig.colorbar(sm, ax=ax, label="layer")
    return fig


def rank_heatmaps(panels: dict, head_dim: int, suptitle: str = ""):
    """One heatmap (layer x KV head) per entry of ``panels`` {title: (L, G) tensor of ranks}."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(1.6 + 1.3 * n + 0.4 * n, 4.2), squeeze=False, sharey=True)
    for ax, (title, ranks) in zip(axes[0], panels.items()):
        im = ax.imshow(np.asarray(ranks), aspect="auto", cmap="magma", vmin=0, vmax=head_dim, interpolation="nearest")
        ax.set(title=title, xlabel="KV head")
        ax.set_xticks(range(np.asarray(ranks).shape[1]))
    axes[0][0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="rank", shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle, y=1.02)                  # above the panel titles, not on them
    return fig


def quality_vs_budget(curves: dict, metrics=("perplexity_ratio", "kl_to_base"), title: str = ""):
    """Metrics against budget, one line per entry of ``curves`` {label: list of metric rows}."""
    labels = {"perplexity_ratio": "perplexity / uncompressed", "kl_to_base": "KL(base || compressed)",
              "perplexity": "perplexity", "top1_agreement": "top-1 agreement"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, rows in curves.items():
            xs = [100 * r["budget"] for r in rows]
            ax.plot(xs, [r[metric] for r in rows], marker="o", label=label)
        ax.set(xlabel="KV budget (%)", ylabel=labels.get(metric, metric))
        if metric.startswith("perplexity"):
            ax.set_yscale("log")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    return finish_figure(fig, title)


def energy_by_layer(curves: dict, head_dim: int, fraction: float):
    """Rank needed to keep ``fraction`` of the energy, averaged over KV heads, per layer; one line per entry of
    ``curves`` {label: (L, G) ranks}."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for label, ranks in curves.items():
        ranks = torch.as_tensor(ranks).double()
        ax.plot(range(ranks.shape[0]), ranks.mean(1).numpy(), marker=".", label=label)
    ax.set(xlabel="layer", ylabel=f"rank for {fraction:.0%} energy", ylim=(0, head_dim), title=
           f"How many of {head_dim} dimensions hold {fraction:.0%} of the energy")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def quality_by_offset(record: dict):
    """Mean perplexity ratio and KL against where the text sits in the window (its first position), one line per
    method, from a positions record (data/results/positions.json: ``offsets``, ``methods`` and ``rows`` with
    method, offset, perplexity_ratio, kl_to_base)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, method in enumerate(m["label"] for m in record["methods"]):
        cell = {r["offset"]: r for r in record["rows"] if r["method"] == method}
        have = [o for o in record["offsets"] if o in cell]
        for ax, key in zip(axes, ("perplexity_ratio", "kl_to_base")):
            ax.plot(have, [cell[o][key] for o in have], marker="o", ms=3, color=plt.get_cmap("tab10")(i), label=method)
    axes[0].set(xlabel="first position of the text", ylabel="perplexity / uncompressed")
    axes[1].set(xlabel="first position of the text", ylabel="KL to the uncompressed model")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return finish_figure(fig, "The same text, placed later and later in the context window")


# The picture the series comes back to: quality against budget for both projections and both allocations.
HEADLINE_METHODS = {            # suite label -> (words in the legend, colour, line style)
    "PCA, uniform": ("PCA, uniform ranks", "tab:gray", "--"),
    "PCA, adaptive": ("PCA, searched ranks", "tab:gray", "-"),
    "MatryoshkaKV, uniform": ("MatryoshkaKV (trained), uniform ranks", "tab:red", "--"),
    "MatryoshkaKV, adaptive": ("MatryoshkaKV (trained), searched ranks", "tab:red", "-"),
}


def headline_rows(record: dict) -> dict:
    """{legend words: {budget: mean row}}: the out-of-domain means of the four headline methods in a suite record
    (``mkv eval --suite ood --projections pca,trained --allocation uniform,adaptive``, data/results/ood_suite.json).
    Raises ValueError naming the methods the record lacks."""
    means = [r for r in record["rows"] if r["domain"] == "mean"]
    missing = [m for m in HEADLINE_METHODS if not any(r["method"] == m for r in means)]
    if missing:
        raise ValueError(f"the suite record lacks {missing}: remake it with mkv eval --suite ood --projections "
                         "pca,trained --allocation uniform,adaptive")
    return {words: {r["target_budget"]: r for r in means if r["method"] == label}
            for label, (words, _, _) in HEADLINE_METHODS.items()}


def headline_figure(record: dict | None = None):
    """KL to the uncompressed model (nats per token) and top-1 agreement against KV budget on the held-out suite:
    PCA and the trained projections, each with uniform and searched ranks. ``record``: a suite record (default:
    the committed data/results/ood_suite.json). Drawn in notebooks 02, 03 and 07 and at the top of the README."""
    if record is None:
        import json

        from .results_store import results_path
        record = json.loads(results_path("ood_suite.json").read_text())
    curves = headline_rows(record)
    fig, (ax_kl, ax_top1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (words, color, style), cells in zip(HEADLINE_METHODS.values(), curves.values()):
        budgets = sorted(cells, reverse=True)
        x = [100 * b for b in budgets]
        ax_kl.plot(x, [cells[b]["kl_to_base"] for b in budgets], style, marker="o", ms=3, color=color, label=words)
        ax_top1.plot(x, [100 * cells[b]["top1_agreement"] for b in budgets], style, marker="o", ms=3, color=color)
    ax_kl.set(xlabel="KV budget (% of key and value features kept)", ylabel="KL to the uncompressed model (nats)",
              title="distance from the uncompressed model")
    ax_top1.set(xlabel="KV budget (% of key and value features kept)", ylabel="top-1 agreement (%)",
                title="next tokens unchanged")
    for ax in (ax_kl, ax_top1):
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    ax_kl.legend(fontsize=8)
    domains = len(record.get("domains", [])) or "the"
    return finish_figure(fig, f"What each budget costs on held-out text ({domains} domains that no training or "
                              "search read)")

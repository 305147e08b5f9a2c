"""Figures of where an adaptive allocation puts the budget: rank heatmaps, per-layer budget bars, and the key
versus value budget along a trajectory. Each function returns a matplotlib Figure (not managed by pyplot, so
redraws never pile up). Introduced in notebook 03.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from ..core.geometry import K, V


def layer_budgets(ranks: torch.Tensor, head_dim: int) -> np.ndarray:
    """(L, 2) mean r / d over KV heads per layer, for keys and values, of ranks (L, G, 2)."""
    return ranks.double().mean(1).numpy() / head_dim


class RankView:
    """Heatmaps of key and value ranks (layer x KV head) and per-layer budget bars, updated in place.

    ``update(ranks, title)`` changes only the artists' data, so a slider move redraws without rebuilding.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int):
        self.head_dim = head_dim
        self.fig = Figure(figsize=(8.4, max(3.4, 0.16 * layers + 1.8)))
        axes = self.fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.6]}, sharey=True)
        empty = np.zeros((layers, kv_heads))
        self.images = []
        for ax, name in zip(axes[:2], ("keys", "values")):
            im = ax.imshow(empty, aspect="auto", cmap="magma", vmin=0, vmax=head_dim, interpolation="nearest")
            ax.set(title=f"{name}: rank", xlabel="KV head", xticks=range(kv_heads))
            self.images.append(im)
        axes[0].set_ylabel("layer")
        self.fig.colorbar(self.images[1], ax=axes[1], fraction=0.08, pad=0.04, label="rank")
        y = np.arange(layers)
        self.bars = [axes[2].barh(y - 0.2, np.zeros(layers), height=0.4, color="tab:blue", label="keys"),
                     axes[2].barh(y + 0.2, np.zeros(layers), height=0.4, color="tab:orange", label="values")]
        axes[2].set(xlim=(0, 100), xlabel="layer budget (%), mean over KV heads")
        axes[2].tick_params(labelright=True)                  # layer numbers beside the bars too
        self.budget_lines = [axes[2].axvline(0, color=c, ls="--", lw=1, label=f"{name}, mean")
                             for c, name in (("tab:blue", "keys"), ("tab:orange", "values"))]
        axes[2].legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7, frameon=False,
                       handlelength=1.2, columnspacing=0.8)
        self.fig.subplots_adjust(left=0.07, right=0.95, top=0.84, bottom=0.12, wspace=0.3)
        self.title = self.fig.suptitle("", fontsize=10)

    def dynamic_artists(self) -> list:
        return [*self.images, *(b for bars in self.bars for b in bars), *self.budget_lines, self.title]

    def png(self) -> bytes:
        """The figure as PNG bytes, redrawing only the artists :meth:`update` changes (the axes, ticks and
        labels are rasterised once and reused): what a slider move costs in a notebook."""
        import io

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from PIL import Image

        if not isinstance(self.fig.canvas, FigureCanvasAgg):
            FigureCanvasAgg(self.fig)
        canvas = self.fig.canvas
        if getattr(self, "_background", None) is None:
            dynamic = self.dynamic_artists()
            for artist in dynamic:
                artist.set_visible(False)
            canvas.draw()
            self._background = canvas.copy_from_bbox(self.fig.bbox)
            for artist in dynamic:
                artist.set_visible(True)
        canvas.get_renderer()
        canvas.restore_region(self._background)
        for artist in self.dynamic_artists():
            self.fig.draw_artist(artist)
        buf = io.BytesIO()
        Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buf, format="png", compress_level=1)
        return buf.getvalue()

    def update(self, ranks: torch.Tensor, title: str = "") -> Figure:
        arr = ranks.numpy()
        for kind, im in zip((K, V), self.images):
            im.set_data(arr[..., kind])
        per_layer = 100 * layer_budgets(ranks, self.head_dim)                 # percent
        for kind, bars in zip((K, V), self.bars):
            for bar, width in zip(bars, per_layer[:, kind]):
                bar.set_width(width)
            self.budget_lines[kind].set_xdata([per_layer[:, kind].mean()] * 2)
        self.title.set_text(title)
        return self.fig


def draw_ranks(ranks: torch.Tensor, head_dim: int, title: str = "") -> Figure:
    """A new :class:`RankView` figure showing ``ranks`` (L, G, 2)."""
    L, G, _ = ranks.shape
    return RankView(L, G, head_dim).update(ranks, title)


def budget_split(trajectory) -> Figure:
    """Key and value budgets (and the layers' spread) as the pooled budget falls along a trajectory."""
    d = trajectory.head_dim
    table = trajectory._ranks_table().astype(np.float64) / d                # (n+1, L, G, 2)
    total = table.mean(axis=(1, 2, 3))
    fig = Figure(figsize=(9, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    for kind, name, color in ((K, "keys", "tab:blue"), (V, "values", "tab:orange")):
        ax1.plot(100 * total, 100 * table[..., kind].mean(axis=(1, 2)), label=name, color=color)
    ax1.plot([100, 100 * total[-1]], [100, 100 * total[-1]], color="grey", ls=":", lw=1, label="equal split")
    ax1.set(xlabel="KV budget (%)", ylabel="budget of keys / values (%)", title="keys vs values")
    ax1.invert_xaxis()
    ax1.legend(fontsize=8)
    per_layer = table.mean(axis=(2, 3))                                      # (n+1, L)
    im = ax2.imshow(100 * per_layer.T, aspect="auto", cmap="viridis", vmin=0, vmax=100, interpolation="nearest",
                    extent=(100, 100 * total[-1], per_layer.shape[1] - 0.5, -0.5))
    ax2.set(xlabel="KV budget (%)", ylabel="layer", title="layer budget along the trajectory")
    fig.colorbar(im, ax=ax2, label="layer budget (%)")
    fig.tight_layout()
    return fig


def adaptive_vs_uniform(rows, title: str = "") -> Figure:
    """Perplexity ratio and KL against budget for each allocation in ``rows``: ``trajectory.evaluations`` (then
    the title says what it was measured on, e.g. the out-of-domain suite's mean over domains) or its rows."""
    from ..core.trajectory import readout_label
    from ..plots import finish_figure

    on = readout_label(rows) if isinstance(rows, dict) else ""
    rows = rows.get("rows") or [] if isinstance(rows, dict) else rows
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    for allocation, marker in (("adaptive", "o"), ("uniform", "s")):
        mine = sorted((r for r in rows if r["allocation"] == allocation), key=lambda r: r["budget"])
        xs = [100 * r["budget"] for r in mine]
        axes[0].plot(xs, [r["perplexity_ratio"] for r in mine], marker=marker, label=allocation)
        axes[1].plot(xs, [r["kl_to_base"] for r in mine], marker=marker, label=allocation)
    axes[0].set(yscale="log", ylabel="perplexity / uncompressed")
    axes[1].set(ylabel="KL(base || compressed)")
    for ax in axes:
        ax.set(xlabel="KV budget (%)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend()
    title = ": ".join(t for t in (title, f"on {on}" if on else "") if t)
    return finish_figure(fig, title)

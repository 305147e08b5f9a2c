"""The budget explorer: pure functions (ranks, readout, figure, continuation) and a thin ipywidgets layer.

Every callback of :class:`BudgetExplorer` calls the pure functions below, so a headless run (tests, a notebook
executed in CI) exercises exactly what a slider move does. ``python -m mkvlib.widgets --benchmark`` times a
slider move. Introduced in notebook 03.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .geometry import budget_of, check_allocation, check_budget, split_budgets
from .search.figures import RankView
from .search.quality import uniform_ranks_at
from .search.trajectory import Trajectory

ALLOCATIONS = ("adaptive", "uniform")          # geometry.ALLOCATIONS in the order the toggle shows them
KV_SPLITS = {"as searched (pooled)": None, "K = V": 0.5, "K 62.5% / V 37.5%": 0.625, "K 37.5% / V 62.5%": 0.375}


def split_budget(budget: float, key_share: float) -> tuple[float, float]:
    """(key budget, value budget) whose mean is ``budget``, keys getting ``key_share`` of it (capped at 1)."""
    check_budget(budget)
    if not 0 < key_share < 1:
        raise ValueError(f"key_share must lie strictly between 0 and 1, not {key_share!r}")
    kb = min(1.0, 2 * budget * key_share)
    vb = min(1.0, 2 * budget - kb)
    return 2 * budget - vb, vb


def explorer_ranks(trajectory: Trajectory, allocation: str, budget: float, key_share: float | None = None):
    """Ranks (L, G, 2) at ``budget``: a prefix of the trajectory ('adaptive') or uniform ranks, pooled or with
    keys given ``key_share`` of the budget. Budgets below the trajectory's floor are raised to the floor."""
    check_allocation(allocation)
    budget = max(float(budget), trajectory.final_budget)
    if allocation == "adaptive":
        if key_share is None:
            return trajectory.ranks_at(budget)
        kb, vb = split_budget(budget, key_share)
        k_floor, v_floor = split_budgets(trajectory.ranks_after(len(trajectory)), trajectory.head_dim)
        if kb < k_floor:                      # a kind at its floor hands the rest of the budget to the other
            kb, vb = k_floor, min(1.0, 2 * budget - k_floor)
        elif vb < v_floor:
            kb, vb = min(1.0, 2 * budget - v_floor), v_floor
        return trajectory.ranks_at(key_budget=kb, value_budget=vb)
    kb, vb = (budget, budget) if key_share is None else split_budget(budget, key_share)
    return uniform_ranks_at(trajectory.geometry, kb, vb)


def readout(trajectory: Trajectory, allocation: str, budget: float, ranks: torch.Tensor,
            key_share: float | None = None) -> dict:
    """Budgets of ``ranks`` and the precomputed KL / perplexity at that budget (None where not precomputed)."""
    d = trajectory.head_dim
    kb, vb = split_budgets(ranks, d)
    quality = trajectory.quality_at(budget_of(ranks, d), allocation) if key_share is None else None
    return {"budget": budget_of(ranks, d), "key_budget": kb, "value_budget": vb, "allocation": allocation,
            "quality": quality}


def readout_text(info: dict) -> str:
    """One line: budgets, then KL and perplexity (or why they are not shown) and what they were measured on
    (the out-of-domain suite: the mean KL over domains, the geometric mean perplexity)."""
    head = (f"{info['allocation']}: budget {100 * info['budget']:.1f}% (K {100 * info['key_budget']:.1f}%, "
            f"V {100 * info['value_budget']:.1f}%)")
    q = info["quality"]
    if q is None:
        return head + " | KL / perplexity precomputed for the pooled split only"
    approx = "~" if q["interpolated"] else ""
    on = q.get("measured_on") or ""
    mean = "mean " if on.startswith("the out-of-domain suite") else ""   # perplexity: the geometric mean
    return (head + f" | {mean}KL {approx}{q['kl_to_base']:.3f}, perplexity {approx}{q['perplexity']:.1f} "
            f"(uncompressed {q['base_perplexity']:.1f})" + (f" on {on}" if on else ""))


@torch.no_grad()
def continuation(model, tokenizer, projections, ranks, prompt: str, max_new_tokens: int = 24) -> str:
    """A greedy continuation of ``prompt`` by ``model`` compressed with ``projections`` at ``ranks``."""
    from .compress import attach

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    with attach(model, projections, ranks):
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


class ExplorerState:
    """The pure part of the explorer: settings in, ranks + readout + figure out (no widgets, no display)."""

    def __init__(self, trajectories: dict[str, Trajectory]):
        if not trajectories:
            raise ValueError("the explorer needs at least one trajectory, e.g. {'pca': Trajectory.load(...)}")
        self.trajectories = trajectories
        L, G, d = next(iter(trajectories.values())).geometry
        self.view = RankView(L, G, d)

    def update(self, name: str, allocation: str, budget: float, key_share: float | None = None):
        """(ranks, readout dict, Figure) for one setting; redraws the shared figure in place."""
        if name not in self.trajectories:
            raise ValueError(f"no trajectory named {name!r}; have {sorted(self.trajectories)}")
        traj = self.trajectories[name]
        ranks = explorer_ranks(traj, allocation, budget, key_share)
        info = readout(traj, allocation, budget, ranks, key_share)
        fig = self.view.update(ranks, f"{name} projections, " + readout_text(info).replace(" | ", "\n"))
        return ranks, info, fig


class BudgetExplorer:
    """ipywidgets over :class:`ExplorerState`: budget slider, projections, allocation, K/V split, generate button.

    ``models``: optional (model, tokenizer, {name: projections}) for the continuation button.
    """

    def __init__(self, trajectories: dict[str, Trajectory], model=None, tokenizer=None, projections=None,
                 budget: float = 0.5, prompt: str = "The history of the city begins"):
        import ipywidgets as w

        self.state = ExplorerState(trajectories)
        self.model, self.tokenizer, self.projections = model, tokenizer, projections or {}
        floor = max(t.final_budget for t in trajectories.values())
        self.budget = w.FloatSlider(value=max(budget, floor), min=floor, max=1.0, step=1 / 64, readout_format=".3f",
                                    description="budget", continuous_update=False)
        self.name = w.Dropdown(options=list(trajectories), description="projections")
        self.allocation = w.ToggleButtons(options=list(ALLOCATIONS), description="allocation")
        self.split = w.Dropdown(options=list(KV_SPLITS.items()), description="K/V split")
        self.text = w.HTML()
        self.figure = w.Image(format="png")
        self.prompt = w.Text(value=prompt, description="prompt", layout=w.Layout(width="60%"))
        self.button = w.Button(description="generate", disabled=model is None)
        self.generated = w.Output()
        for control in (self.budget, self.name, self.allocation, self.split):
            control.observe(lambda change: self.refresh(), names="value")
        self.button.on_click(lambda _: self.generate())
        self.widget = w.VBox([w.HBox([self.budget, self.name]), w.HBox([self.allocation, self.split]), self.text,
                              self.figure, w.HBox([self.prompt, self.button]), self.generated])
        self.ranks = None
        self.refresh()

    def settings(self) -> tuple:
        return self.name.value, self.allocation.value, self.budget.value, self.split.value

    def refresh(self):
        """The slider callback: ranks, readout and figure for the current settings."""
        self.ranks, info, _ = self.state.update(*self.settings())
        self.text.value = f"<code>{readout_text(info)}</code>"
        self.figure.value = self.state.view.png()
        return info

    def generate(self) -> str:
        """The button callback: a continuation by the compressed model at the current ranks."""
        name = self.name.value
        if self.model is None or name not in self.projections:
            raise RuntimeError(f"no model or no {name!r} projections were given to the explorer")
        text = continuation(self.model, self.tokenizer, self.projections[name], self.ranks, self.prompt.value)
        with self.generated:
            self.generated.clear_output(wait=True)
            print(f"[{name}, {self.allocation.value}, budget {100 * budget_of(self.ranks, self.state.view.head_dim):.1f}%]"
                  f" {self.prompt.value}{text}")
        return text

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def benchmark(trajectory: Trajectory, moves: int = 20, allocation: str = "adaptive") -> dict:
    """Seconds per slider move: ranks from the trajectory, readout, redraw of the figure and its PNG image.

    ``first_s`` includes rasterising the static background once; mean/median/max are over the later moves."""
    state = ExplorerState({"t": trajectory})
    budgets = torch.linspace(1.0, trajectory.final_budget, moves).tolist()
    times, parts = [], {"ranks+readout": 0.0, "redraw+png": 0.0}
    for b in budgets:
        t0 = time.perf_counter()
        ranks = explorer_ranks(trajectory, allocation, b)
        readout(trajectory, allocation, b, ranks)
        t1 = time.perf_counter()
        state.update("t", allocation, b)
        state.view.png()                                     # the image the widget shows
        t2 = time.perf_counter()
        parts["ranks+readout"] += t1 - t0
        parts["redraw+png"] += t2 - t1
        times.append(t2 - t0)
    later = times[1:] or times
    return {"moves": moves, "steps": len(trajectory), "first_s": times[0], "mean_s": sum(later) / len(later),
            "median_s": sorted(later)[len(later) // 2], "max_s": max(later),
            **{f"mean_{k}_s": v / moves for k, v in parts.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="benchmark a budget-slider move of the explorer")
    parser.add_argument("--benchmark", action="store_true", help="time slider moves and print the numbers")
    parser.add_argument("--trajectory", default=None, help="trajectory .json (default: the shipped PCA one)")
    parser.add_argument("--moves", type=int, default=20)
    args = parser.parse_args(argv)
    if not args.benchmark:
        parser.print_help()
        return 0
    from .models import EMBEDDED
    from .search import shipped_trajectory_path

    traj = Trajectory.load(args.trajectory or shipped_trajectory_path(EMBEDDED, "pca"))
    for allocation in ALLOCATIONS:
        result = benchmark(traj, args.moves, allocation)
        print(allocation + ": " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

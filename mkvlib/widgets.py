"""The budget explorer: pure functions (ranks, readout, figure, continuation) and a thin ipywidgets layer.

Every callback of :class:`BudgetExplorer` calls the pure functions below, so a headless run (tests, a notebook
executed in CI) exercises exactly what a slider move does. :func:`benchmark` times a slider move in Python;
``make browser-test`` times it in a browser, from the key press to the redrawn image.
:func:`shipped_explorer` is the presenter's page that ``mkv explore`` serves (notebooks/explorer.ipynb).
Introduced in notebook 03.
"""
from __future__ import annotations

import html
import math
import time

import torch

from .core.checks import check_allocation, check_budget
from .core.ranks import budget_of, split_budgets, uniform_ranks_at
from .search.figures import RankView
from .core.trajectory import Trajectory

ALLOCATIONS = ("adaptive", "uniform")          # geometry.ALLOCATIONS in the order the toggle shows them
KV_SPLITS = {"as searched (pooled)": None, "K = V": 0.5, "K 62.5% / V 37.5%": 0.625, "K 37.5% / V 62.5%": 0.375}
PREFERRED_PROJECTIONS = ("trained", "pca")    # the explorer opens on the first of these it has: the shipped trained
                                              # projections show the method at its best, PCA at its weakest
SLIDER_STEP = 1 / 64                          # the slider's step (one rank of the embedded model's 64-wide heads)
DEFAULT_PROMPT = "The history of the city begins"


def default_projections(names) -> str:
    """The projections the explorer opens on: 'trained' when present, else 'pca', else the first of ``names``."""
    names = list(names)
    if not names:
        raise ValueError("no projections to choose from")
    return next((n for n in PREFERRED_PROJECTIONS if n in names), names[0])


def clamp_budget(requested: float, floor: float) -> tuple[float, str | None]:
    """A typed budget (a fraction) brought into ``[floor, 1]``: (budget, None) when it was inside, else (the
    nearest end, a note saying what was asked for and what is shown instead)."""
    try:
        value = float(requested)
    except (TypeError, ValueError):
        raise ValueError(f"a budget is a number between 0 and 1 (a fraction of the KV cache), not {requested!r}") \
            from None
    if math.isnan(value):
        return max(0.5, floor), f"the budget typed is not a number: showing {100 * max(0.5, floor):g}%"
    if value > 1.0:
        return 1.0, f"{100 * value:g}% is above 100% (the uncompressed cache): clamped to 100%"
    if value < floor - 1e-12:
        return floor, (f"{100 * value:g}% is below {100 * floor:g}%, the lowest budget the trajectories reach: "
                       f"clamped to {100 * floor:g}%")
    return value, None


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
            "key_share": key_share, "quality": quality}


def readout_text(info: dict) -> str:
    """One line: budgets, then KL and perplexity (or why they are not shown) and what they were measured on
    (the out-of-domain suite: the mean KL over domains, the geometric mean perplexity)."""
    head = (f"{info['allocation']}: budget {100 * info['budget']:.1f}% (K {100 * info['key_budget']:.1f}%, "
            f"V {100 * info['value_budget']:.1f}%)")
    q = info["quality"]
    if q is None and info.get("key_share") is not None:
        return head + " | KL / perplexity precomputed for the pooled split only"
    if q is None:
        return head + f" | no KL / perplexity precomputed for {info['allocation']} ranks on this trajectory"
    approx = "~" if q["interpolated"] else ""
    on = q.get("measured_on") or ""
    mean = "mean " if on.startswith("the out-of-domain suite") else ""   # perplexity: the geometric mean
    return (head + f" | {mean}KL {approx}{q['kl_to_base']:.3f}, perplexity {approx}{q['perplexity']:.1f} "
            f"(uncompressed {q['base_perplexity']:.1f})" + (f" on {on}" if on else ""))


def check_prompt_length(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse an empty prompt, and one that leaves no room for ``max_new_tokens`` in the model's context window
    (``max_position_embeddings``), with a message a person reading the page can act on."""
    if prompt_tokens == 0:
        raise ValueError("the prompt is empty: type a few words for the model to continue")
    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if window and prompt_tokens + max_new_tokens > window:
        raise ValueError(f"the prompt is {prompt_tokens:,} tokens long; with the {max_new_tokens} tokens to "
                         f"generate it does not fit the model's context window of {window:,} tokens: shorten it "
                         f"to at most {window - max_new_tokens:,} tokens")


@torch.no_grad()
def continuation(model, tokenizer, projections, ranks, prompt: str, max_new_tokens: int = 24) -> str:
    """A greedy continuation of ``prompt`` by ``model`` compressed with ``projections`` at ``ranks``."""
    from .core.compress import attach

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    check_prompt_length(model, ids.shape[1], max_new_tokens)
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
    """ipywidgets over :class:`ExplorerState`: budget slider and a box to type a budget in, projections,
    allocation, K/V split, generate button.

    Opens on ``initial`` projections (default: :func:`default_projections`, the trained ones when given),
    adaptive ranks and ``budget`` (50%). ``model``, ``tokenizer`` and ``projections`` ({name: projections}) are
    optional: without them *generate* is disabled.
    """

    def __init__(self, trajectories: dict[str, Trajectory], model=None, tokenizer=None, projections=None,
                 budget: float = 0.5, prompt: str = DEFAULT_PROMPT, initial: str | None = None,
                 allocation: str = "adaptive", max_new_tokens: int = 24):
        import ipywidgets as w

        self.state = ExplorerState(trajectories)
        self.model, self.tokenizer, self.projections = model, tokenizer, projections or {}
        self.max_new_tokens = max_new_tokens
        initial = default_projections(trajectories) if initial is None else initial
        if initial not in trajectories:
            raise ValueError(f"no trajectory named {initial!r} to open on; have {sorted(trajectories)}")
        self.floor = max(t.final_budget for t in trajectories.values())
        start, start_note = clamp_budget(budget, self.floor)
        self.budget = w.FloatSlider(value=start, min=self.floor, max=1.0, step=SLIDER_STEP, readout=False,
                                    description="budget", continuous_update=False)
        # the slider's own readout clamps a typed value silently; this box says what it did
        self.typed_budget = w.FloatText(value=self._percent(start), description="budget %",
                                        layout=w.Layout(width="180px"))
        self.name = w.Dropdown(options=list(trajectories), value=initial, description="projections")
        self.allocation = w.ToggleButtons(options=list(ALLOCATIONS), value=check_allocation(allocation),
                                          description="allocation")
        # options by label: a Dropdown whose chosen value is None shows an empty box once picked again
        self.split = w.Dropdown(options=list(KV_SPLITS), description="K/V split")
        self.note = w.HTML()
        self.text = w.HTML()
        self.figure = w.Image(format="png")
        self.prompt = w.Text(value=prompt, description="prompt", layout=w.Layout(width="60%"))
        self.button = w.Button(description="generate", disabled=model is None,
                               tooltip="continue the prompt with the model compressed at these ranks")
        self.generated = w.HTML()
        for control in (self.name, self.allocation, self.split):
            control.observe(lambda change: self.refresh(), names="value")
        self.budget.observe(self._slider_moved, names="value")
        self.typed_budget.observe(self._budget_typed, names="value")
        self.button.on_click(lambda _: self.press_generate())
        self.widget = w.VBox([w.HBox([self.budget, self.typed_budget, self.name]),
                              w.HBox([self.allocation, self.split]), self.note, self.text, self.figure,
                              w.HBox([self.prompt, self.button]), self.generated])
        for widget, css_class in ((self.widget, "mkv-explorer"), (self.typed_budget, "mkv-typed-budget"),
                                  (self.note, "mkv-note"), (self.text, "mkv-readout"), (self.figure, "mkv-ranks"),
                                  (self.generated, "mkv-generated")):
            widget.add_class(css_class)                   # stable names for a page's style or a browser test
        self.ranks = None
        self._syncing = False
        self.refresh()
        self.note.value = self._note_html(start_note)

    @staticmethod
    def _percent(budget: float) -> float:
        return round(100 * budget, 4)                     # exact for the slider's steps of 1/64

    @staticmethod
    def _note_html(note: str | None) -> str:
        return "" if not note else f"<span style='color:#a0522d'>{html.escape(note)}</span>"

    def _slider_moved(self, change) -> None:
        self.note.value = ""
        if not self._syncing:
            self._syncing = True
            try:
                self.typed_budget.value = self._percent(change["new"])
            finally:
                self._syncing = False
        self.refresh()

    def _budget_typed(self, change) -> None:
        if self._syncing:
            return
        self.set_budget(change["new"] / 100)

    def set_budget(self, budget: float) -> str | None:
        """Move the slider to ``budget`` (a fraction), clamped into the trajectories' range; returns the note
        shown beside it (None when nothing was clamped). What typing into the *budget %* box does."""
        value, note = clamp_budget(budget, self.floor)
        self._syncing = True
        try:
            self.typed_budget.value = self._percent(value)
            self.budget.value = value                     # when it moves: _slider_moved, refresh, note cleared
        finally:
            self._syncing = False
        self.note.value = self._note_html(note)
        return note

    def settings(self) -> tuple:
        """(projections, allocation, budget, key share or None for the pooled split)."""
        return self.name.value, self.allocation.value, self.budget.value, KV_SPLITS[self.split.value]

    def refresh(self):
        """The slider callback: ranks, readout and figure for the current settings."""
        self.ranks, info, _ = self.state.update(*self.settings())
        self.text.value = f"<code>{html.escape(readout_text(info))}</code>"
        self.figure.value = self.state.view.png()
        return info

    def generate(self) -> str:
        """A continuation by the compressed model at the current ranks (raises ValueError / RuntimeError on a
        prompt that cannot be continued or a missing model); shown below the button."""
        name = self.name.value
        if self.model is None or name not in self.projections:
            raise RuntimeError(f"no model or no {name!r} projections were given to the explorer")
        text = continuation(self.model, self.tokenizer, self.projections[name], self.ranks, self.prompt.value,
                            self.max_new_tokens)
        budget = 100 * budget_of(self.ranks, self.state.view.head_dim)
        self.generated.value = (f"<pre style='white-space: pre-wrap'>[{html.escape(name)}, {self.allocation.value}, "
                                f"budget {budget:.1f}%] {html.escape(self.prompt.value)}<b>{html.escape(text)}</b>"
                                "</pre>")
        return text

    def press_generate(self) -> str | None:
        """The button callback: :meth:`generate`, with a problem (a prompt too long for the context window, an
        empty prompt, no model) shown in the page as one line instead of a traceback."""
        self.button.disabled, self.button.description = True, "generating..."
        try:
            return self.generate()
        except (ValueError, RuntimeError) as err:
            self.generated.value = f"<p style='color:#b22222'>cannot generate: {html.escape(str(err))}</p>"
            return None
        finally:
            self.button.disabled, self.button.description = self.model is None, "generate"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def shipped_explorer() -> BudgetExplorer:
    """The explorer over the shipped trajectories (trained first, then PCA) with the embedded model for
    *generate*, at 50%: what ``mkv explore`` shows."""
    from .models import load_model
    from .core.projections import resolve_projections
    from .core.trajectory import shipped_trajectory_path

    model, tokenizer = load_model()
    paths = {k: shipped_trajectory_path(model.mkv_name, k) for k in PREFERRED_PROJECTIONS}
    trajectories = {k: Trajectory.load(p) for k, p in paths.items() if p.exists()}
    if not trajectories:
        raise FileNotFoundError(f"no shipped trajectory for {model.mkv_name!r}: looked for "
                                f"{', '.join(str(p) for p in paths.values())}")
    projections = {k: resolve_projections(k, model) for k in trajectories}
    return BudgetExplorer(trajectories, model, tokenizer, projections, budget=0.5)


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

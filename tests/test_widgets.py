"""The budget explorer's pure functions and widget callbacks run without a display."""
import re

import pytest
import torch

from mkvlib.core.ranks import budget_of, split_budgets
from mkvlib.core.trajectory import Trajectory
from mkvlib.widgets import (BudgetExplorer, ExplorerState, benchmark, clamp_budget, continuation,
                            default_projections, explorer_ranks, readout, readout_text, split_budget)

L, G, D = 4, 2, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _trajectory():
    """A hand-made trajectory over (L, G, d) = (4, 2, 16): every entry 16 -> 8 -> 4, layers from the top."""
    steps, ranks = [], torch.full((L, G, 2), D)
    for rank in (8, 4):
        for layer in reversed(range(L)):
            for g in range(G):
                for c in (0, 1):
                    ranks[layer, g, c] = rank
                    steps.append((layer, g, c, rank, 0.01 * len(steps), budget_of(ranks, D)))
    rows = [{"budget": b, "allocation": a, "perplexity": p, "kl_to_base": k, "top1_agreement": 0.9,
             "perplexity_ratio": p / 10, "base_perplexity": 10.0}
            for a, s in (("adaptive", 1.0), ("uniform", 2.0))
            for b, p, k in ((1.0, 10.0, 0.0), (0.5, 10 + 5 * s, 0.3 * s), (0.25, 10 + 20 * s, 1.0 * s))]
    return Trajectory("tiny", "f" * 16, (L, G, D), steps, {}, {"rows": rows})


def test_split_budget_keeps_the_mean_and_caps_at_one():
    assert split_budget(0.5, 0.5) == pytest.approx((0.5, 0.5))
    kb, vb = split_budget(0.9, 0.625)
    assert kb == pytest.approx(1.0) and (kb + vb) / 2 == pytest.approx(0.9)
    with pytest.raises(ValueError, match="key_share"):
        split_budget(0.5, 1.0)


@pytest.mark.parametrize("allocation", ["adaptive", "uniform"])
@pytest.mark.parametrize("share", [None, 0.5, 0.375])
def test_explorer_ranks_never_exceed_the_budget(allocation, share):
    traj = _trajectory()
    for budget in (1.0, 0.8, 0.5, 0.3, 0.25, 0.1):
        ranks = explorer_ranks(traj, allocation, budget, share)
        assert ranks.shape == (L, G, 2)
        if allocation == "adaptive":  # below the floor the slider stops at the floor
            assert budget_of(ranks, D) <= max(budget, traj.final_budget) + 1e-9
        if share is not None and budget >= 0.5:
            kb, vb = split_budgets(ranks, D)
            assert kb <= 2 * budget * share + 1e-9 or kb == pytest.approx(1.0)


def test_readout_interpolates_the_precomputed_grid():
    traj = _trajectory()
    ranks = explorer_ranks(traj, "adaptive", 0.5)
    info = readout(traj, "adaptive", 0.5, ranks)
    assert info["quality"]["kl_to_base"] == pytest.approx(0.3)
    assert info["quality"]["perplexity"] == pytest.approx(15.0)
    assert "KL 0.300" in readout_text(info)
    assert readout(traj, "adaptive", 0.5, ranks, key_share=0.5)["quality"] is None


def test_readout_says_what_the_grid_was_measured_on():
    traj = _trajectory()
    ranks = explorer_ranks(traj, "uniform", 0.5)
    traj.evaluations = dict(traj.evaluations, corpus="ood suite", domains=["pydoc-test", "shakespeare"])
    text = readout_text(readout(traj, "uniform", 0.5, ranks))
    assert "mean KL 0.600" in text and text.endswith("on the out-of-domain suite (mean over 2 domains)")
    traj.evaluations = dict(traj.evaluations, corpus="wikitext2-test")
    text = readout_text(readout(traj, "uniform", 0.5, ranks))
    assert "| KL 0.600" in text and text.endswith("on wikitext2-test")


def test_state_update_draws_without_display():
    state = ExplorerState({"pca": _trajectory()})
    ranks, info, fig = state.update("pca", "adaptive", 0.4)
    assert budget_of(ranks, D) <= 0.4 + 1e-9
    assert (fig.axes[0].images[0].get_array() == ranks[..., 0].numpy()).all()
    with pytest.raises(ValueError, match="no trajectory named"):
        state.update("trained", "adaptive", 0.4)


def test_widget_callbacks_run_headless(llama):
    class Tok:  # the tokenizer interface continuation() uses
        pad_token_id = 0

        def __call__(self, text, return_tensors=None):
            return type("Enc", (), {"input_ids": torch.tensor([[1, 2, 3]])})()

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids.tolist()))

    from mkvlib.core.pca import fit_pca
    from mkvlib.core.stats import collect_kv_stats

    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    proj = fit_pca(collect_kv_stats(llama, ids, 2, progress=False, model_name=llama.mkv_name),
                   model_name=llama.mkv_name)
    geom = proj.geometry
    steps = [(0, 0, 0, 8, 0.1, budget_of(torch.tensor([[[8, 16], [16, 16]], [[16, 16], [16, 16]]]), 16))]
    traj = Trajectory(llama.mkv_name, proj.fingerprint(), geom, steps, {}, None)
    ex = BudgetExplorer({"pca": traj}, llama, Tok(), {"pca": proj}, budget=0.9)
    ex.budget.value = 0.95
    assert int(ex.ranks[0, 0, 0]) == 8
    ex.allocation.value = "uniform"
    assert (ex.ranks == 15).all()
    # nothing precomputed on this trajectory: the readout gives the budgets of the ranks shown and says so
    assert ex.text.value == ("<code>uniform: budget 93.8% (K 93.8%, V 93.8%) | no KL / perplexity precomputed "
                             "for uniform ranks on this trajectory</code>")
    text = ex.generate()
    assert 1 <= len(text.split()) <= 24
    assert text == continuation(llama, Tok(), proj, ex.ranks, ex.prompt.value)


def test_benchmark_reports_numbers():
    result = benchmark(_trajectory(), moves=3)
    assert result["moves"] == 3 and result["mean_s"] > 0


READOUT = re.compile(r"<code>(?P<allocation>\w+): budget (?P<budget>[\d.]+)% \(K (?P<key>[\d.]+)%, "
                     r"V (?P<value>[\d.]+)%\) \| mean KL ~?(?P<kl>[\d.]+), perplexity ~?(?P<ppl>[\d.]+) "
                     r"\(uncompressed (?P<base>[\d.]+)\)")


def _shown(explorer) -> dict:
    """The numbers of the explorer's readout line, as the page shows them."""
    match = READOUT.match(explorer.text.value)
    assert match, f"unexpected readout: {explorer.text.value}"
    return match.groupdict()


def _expected(traj, allocation: str, budget: float) -> dict:
    """The same numbers straight from the trajectory: its ranks at ``budget`` (a prefix of the steps, or uniform
    floor(b * d)) and its precomputed grid at their budget, rounded as the readout rounds them."""
    if allocation == "adaptive":
        ranks = traj.ranks_at(max(budget, traj.final_budget))
    else:
        ranks = torch.full((L, G, 2), int(budget * D + 1e-9))
    b = budget_of(ranks, D)
    q = traj.quality_at(b, allocation)
    return {"allocation": allocation, "budget": f"{100 * b:.1f}", "key": f"{100 * ranks[..., 0].double().mean() / D:.1f}",
            "value": f"{100 * ranks[..., 1].double().mean() / D:.1f}", "kl": f"{q['kl_to_base']:.3f}",
            "ppl": f"{q['perplexity']:.1f}", "base": f"{q['base_perplexity']:.1f}"}


def _suite_trajectory():
    traj = _trajectory()
    traj.evaluations = dict(traj.evaluations, corpus="ood suite", domains=["pydoc-test", "shakespeare"])
    return traj


@pytest.mark.parametrize("allocation", ["adaptive", "uniform"])
def test_readout_numbers_are_the_trajectorys_at_every_budget(allocation):
    traj = _suite_trajectory()
    ex = BudgetExplorer({"trained": traj}, allocation=allocation)
    for budget in (1.0, 0.875, 0.75, 0.6, 0.5, 0.4375, 0.3, 0.25):
        ex.budget.value = budget
        assert _shown(ex) == _expected(traj, allocation, budget), budget
        assert ex.typed_budget.value == pytest.approx(100 * budget)
    ex.budget.value = 0.5                            # 0.5 is on the grid: no interpolation mark
    assert "KL 0." in ex.text.value and "~" not in ex.text.value
    ex.budget.value = 0.6875
    assert "KL ~" in ex.text.value


def test_readout_of_a_split_says_it_is_not_precomputed():
    ex = BudgetExplorer({"trained": _suite_trajectory()})
    ex.split.value = "K = V"
    kb, vb = split_budgets(ex.ranks, D)
    assert ex.text.value == (f"<code>adaptive: budget 50.0% (K {100 * kb:.1f}%, V {100 * vb:.1f}%) | KL / "
                             "perplexity precomputed for the pooled split only</code>")
    ex.split.value = "as searched (pooled)"            # picked again, the box still shows it (not an empty box)
    assert ex.split.index == 0 and ex.settings()[3] is None
    assert _shown(ex) == _expected(ex.state.trajectories["trained"], "adaptive", 0.5)


def test_explorer_opens_on_the_trained_projections_adaptive_at_half():
    pca, trained = _trajectory(), _suite_trajectory()
    ex = BudgetExplorer({"pca": pca, "trained": trained})          # the order notebook 03 builds them in
    assert (ex.name.value, ex.allocation.value, ex.budget.value) == ("trained", "adaptive", 0.5)
    assert ex.name.options == ("pca", "trained") and ex.split.value == "as searched (pooled)"
    assert ex.settings()[3] is None and ex.note.value == ""
    assert torch.equal(ex.ranks, trained.ranks_at(0.5))
    assert ex.text.value.startswith("<code>adaptive: budget 50.0%")
    assert ex.button.disabled                                     # no model given: nothing to generate with
    assert BudgetExplorer({"pca": pca, "trained": trained}, initial="pca").name.value == "pca"
    with pytest.raises(ValueError, match="no trajectory named 'lora'"):
        BudgetExplorer({"pca": pca}, initial="lora")


def test_default_projections_prefers_trained_then_pca():
    assert default_projections(["pca", "trained"]) == "trained"
    assert default_projections(["mine", "pca"]) == "pca"
    assert default_projections(["mine"]) == "mine"
    with pytest.raises(ValueError, match="no projections"):
        default_projections([])


def test_clamp_budget_says_what_it_did():
    assert clamp_budget(0.4, 0.25) == (0.4, None)
    assert clamp_budget(0.25, 0.25) == (0.25, None)
    value, note = clamp_budget(0.05, 0.25)
    assert value == 0.25 and note == "5% is below 25%, the lowest budget the trajectories reach: clamped to 25%"
    value, note = clamp_budget(1.5, 0.25)
    assert value == 1.0 and note == "150% is above 100% (the uncompressed cache): clamped to 100%"
    value, note = clamp_budget(float("nan"), 0.25)
    assert value == 0.5 and "not a number" in note
    with pytest.raises(ValueError, match="a budget is a number"):
        clamp_budget("half", 0.25)


def test_a_budget_typed_outside_the_range_is_clamped_with_a_note():
    traj = _suite_trajectory()                                    # floor 25%
    ex = BudgetExplorer({"trained": traj})
    ex.typed_budget.value = 5.0                                   # what typing 5 into the 'budget %' box does
    assert ex.budget.value == 0.25 and ex.typed_budget.value == 25.0
    assert "5% is below 25%" in ex.note.value and "clamped to 25%" in ex.note.value
    assert _shown(ex) == _expected(traj, "adaptive", 0.25)
    ex.typed_budget.value = 250.0
    assert ex.budget.value == 1.0 and ex.typed_budget.value == 100.0 and "clamped to 100%" in ex.note.value
    ex.typed_budget.value = 43.75                                 # inside: no note, the slider follows
    assert ex.budget.value == 0.4375 and ex.note.value == ""
    assert _shown(ex) == _expected(traj, "adaptive", 0.4375)
    assert ex.set_budget(0.1) is not None and ex.budget.value == 0.25
    ex.budget.value = 0.75                                        # a slider move clears the note
    assert ex.note.value == "" and ex.typed_budget.value == 75.0
    assert BudgetExplorer({"trained": traj}, budget=0.1).note.value.count("clamped to 25%") == 1


class WordTokenizer:
    """One token per word (the interface continuation() uses)."""
    pad_token_id = 0

    def __call__(self, text, return_tensors=None):
        ids = [1 + len(w) % 100 for w in text.split()]
        return type("Enc", (), {"input_ids": torch.tensor([ids], dtype=torch.long).reshape(1, len(ids))})()

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids.tolist()))


def test_a_prompt_longer_than_the_context_window_is_a_message_not_a_traceback(llama):
    from mkvlib.core.geometry import KVGeometry
    from mkvlib.core.projections import Projections

    window = llama.config.max_position_embeddings
    geom = KVGeometry.of(llama)
    eye = torch.eye(geom.head_dim).expand(geom.layers, geom.kv_heads, -1, -1).clone()
    proj = Projections(eye, eye.clone(), torch.zeros(geom.layers, geom.kv_heads, geom.head_dim),
                       meta={"model": llama.mkv_name})
    traj = Trajectory(llama.mkv_name, proj.fingerprint(), proj.geometry, [], {}, None)
    ex = BudgetExplorer({"pca": traj}, llama, WordTokenizer(), {"pca": proj}, max_new_tokens=4)
    with pytest.raises(ValueError, match=f"context window of {window}"):
        continuation(llama, WordTokenizer(), proj, ex.ranks, "word " * window, max_new_tokens=4)
    ex.prompt.value = "word " * (window - 3)
    assert ex.press_generate() is None
    assert ex.generated.value.startswith("<p style") and "cannot generate: the prompt is" in ex.generated.value
    assert f"{window - 3} tokens long" in ex.generated.value and "Traceback" not in ex.generated.value
    assert not ex.button.disabled and ex.button.description == "generate"
    ex.prompt.value = "   "
    assert ex.press_generate() is None and "the prompt is empty" in ex.generated.value
    ex.prompt.value = "word " * (window - 4)                     # exactly fills the window with 4 new tokens
    assert len(ex.press_generate().split()) == 4
    assert ex.generated.value.startswith("<pre")

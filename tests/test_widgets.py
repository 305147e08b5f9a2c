"""The budget explorer's pure functions and widget callbacks run without a display."""
import pytest
import torch

from mkvlib.geometry import budget_of, split_budgets
from mkvlib.search import Trajectory
from mkvlib.widgets import (BudgetExplorer, ExplorerState, benchmark, continuation, explorer_ranks, readout,
                            readout_text, split_budget)

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

    from mkvlib.pca import fit_pca
    from mkvlib.stats import collect_kv_stats

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
    assert "precomputed" in ex.text.value or "budget" in ex.text.value
    text = ex.generate()
    assert 1 <= len(text.split()) <= 24
    assert text == continuation(llama, Tok(), proj, ex.ranks, ex.prompt.value)


def test_benchmark_reports_numbers():
    result = benchmark(_trajectory(), moves=3)
    assert result["moves"] == 3 and result["mean_s"] > 0

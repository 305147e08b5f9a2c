"""The statements notebook 07 makes in words about the committed comparison results, checked against the files
they are read from (``data/results/compare*.json``). The notebook prints the numbers; these tests fail when new
measurements no longer support what its Markdown says."""
import pytest

from mkvlib.compare import report
from mkvlib.compare.tasks import RETRIEVAL_TASKS
from mkvlib.core.projections import SHIPPED, Projections, shipped_path
from mkvlib.core.env import shipped_data_dir

RESULTS = shipped_data_dir() / "results"
ADAPTIVE, UNIFORM = "matryoshka:budgets=0.5/0.25", "matryoshka:allocation=uniform"
FEATURE = ("pca", UNIFORM, "svd")                 # feature-axis methods measured at every fraction at 1,024 tokens
TOKEN = ("streaming", "snapkv")


@pytest.fixture(scope="module")
def short():
    return report.load_result(RESULTS / "compare.json")


@pytest.fixture(scope="module")
def long():
    return report.load_result(RESULTS / "compare_4k.json")


def quality(result, method, task, fraction):
    """KL (ppl) or accuracy of ``method`` at the setting chosen for ``fraction`` of the bytes."""
    row = report.row_at(result, method, task, result["lengths"][0], fraction)
    assert row is not None, (method, task, fraction)
    return row["kl"] if task == "ppl" else row["accuracy"]


def measured(result, fraction):
    """Methods with a held-out-text row at ``fraction`` of the bytes, the uncompressed one left out."""
    return [m for m in result["methods"] if m != "uncompressed"
            and report.row_at(result, m, "ppl", result["lengths"][0], fraction) is not None]


def fingerprint(kind: str, model_name: str) -> str:
    return Projections.load(shipped_path(kind, model_name)).fingerprint()


@pytest.mark.parametrize("name", ["compare.json", "compare_4k.json", "compare_passkey_halves_shipped.json"])
def test_rows_name_the_projections_in_data_projections(name):
    """Every MatryoshkaKV row was measured with the trained projections in data/projections, PCA rows with the PCA
    ones (the notebook says so and checks the first file itself)."""
    result = report.load_result(RESULTS / name)
    model = result["model"].split("@")[0]
    rows = [r for r in result["rows"] if r["method"] != "uncompressed" and r["n"]]
    expected = {kind: f"proj={fingerprint(kind, model)}" for kind in SHIPPED}
    assert all(expected["trained"] in r["identity"] for r in rows if "matryoshka" in r["method"])
    assert all(expected["pca"] in r["identity"] for r in rows if r["method"] == "pca")


def test_bits_break_last_at_a_quarter(short):
    """4-bit: the lowest KL and the best mean retrieval near a quarter of the bytes, every passkey found."""
    others = [m for m in measured(short, 0.25) if m != "quant"]
    assert all(quality(short, "quant", "ppl", 0.25) < quality(short, m, "ppl", 0.25) for m in others)
    assert quality(short, "quant", "passkey", 0.25) == 1.0
    mean = {m: report.mean_relative(short, m, 1024, 0.25) for m in others + ["quant"]}
    assert all(mean["quant"] > mean[m] for m in others), mean


def test_bits_cannot_reach_an_eighth(short):
    unreachable = {(s["method"], s["requested"]) for s in short["status"] if s["status"] == "unreachable"}
    assert ("quant", 0.125) in unreachable                       # neither 4 nor 2 bits stores an eighth
    assert not any(r["method"] == "quant" and r["fraction"] < 0.2 for r in short["rows"])


def test_eviction_keeps_the_next_word_and_loses_the_evicted(short):
    for fraction in (0.5, 0.25, 0.125):
        feature = [m for m in FEATURE + (ADAPTIVE,) if m in measured(short, fraction)]
        kl = {m: quality(short, m, "ppl", fraction) for m in feature + list(TOKEN)}
        assert max(kl[t] for t in TOKEN) < min(kl[f] for f in feature), (fraction, kl)
    assert all(quality(short, "streaming", t, 0.25) == 0 for t in RETRIEVAL_TASKS)
    assert quality(short, "snapkv", "passkey", 0.25) > 0.5
    assert all(quality(short, "snapkv", t, 0.25) == 0 for t in ("niah", "vt"))


def test_cutting_features_blurs_every_token(short):
    """PCA and the weights' SVD lose all retrieval at every setting; trained projections degrade more gently than
    PCA; searched ranks beat uniform ones in KL and keep most passkeys at a quarter."""
    rows = [r for r in short["rows"] if r["method"] in ("pca", "svd") and r["task"] in RETRIEVAL_TASKS and r["n"]]
    assert rows and all(r["correct"] == 0 for r in rows)
    assert all(quality(short, UNIFORM, "ppl", f) < quality(short, "pca", "ppl", f) for f in (0.5, 0.25, 0.125))
    assert all(quality(short, ADAPTIVE, "ppl", f) < quality(short, UNIFORM, "ppl", f) for f in (0.5, 0.25))
    assert quality(short, ADAPTIVE, "passkey", 0.25) > 0.5
    assert all(quality(short, "svd", "ppl", 0.25) > quality(short, m, "ppl", 0.25) for m in measured(short, 0.25)
               if m != "svd")


def test_two_axes_beat_one(short):
    """Half the features in 4 bits: under an eighth of the bytes, a lower KL than a quarter of the features, every
    passkey; StreamingLLM on MatryoshkaKV is worse than StreamingLLM alone at the same bytes."""
    mq = report.row_at(short, "matryoshka+quant", "ppl", 1024, 0.125)
    assert mq["fraction"] < 0.125 and mq["kl"] < quality(short, ADAPTIVE, "ppl", 0.25)
    assert quality(short, "matryoshka+quant", "passkey", 0.125) == 1.0
    assert all(quality(short, "streaming+matryoshka", "ppl", f) > quality(short, "streaming", "ppl", f)
               for f in (0.5, 0.25, 0.125))
    assert quality(short, "streaming+matryoshka", "passkey", 0.25) == 0


def test_at_4096_tokens_the_feature_axis_keeps_the_passkey_only_where_trained(long):
    learned = [ADAPTIVE, UNIFORM]                                   # MatryoshkaKV alone, searched and uniform ranks
    untrained = [r for r in long["rows"] if r["method"] in ("pca", "svd", "think") and r["n"]]
    assert untrained and all(r["correct"] == 0 for r in untrained)
    assert all(quality(long, m, "passkey", 0.5) == 1.0 for m in learned)
    assert all(r["correct"] == 0 for r in long["rows"] if r["method"] in learned and r["fraction"] < 0.3)
    mq = report.row_at(long, "matryoshka+quant", "passkey", 4096, 0.125)
    assert mq["fraction"] < 0.1 and mq["accuracy"] == 1.0


def test_at_4096_tokens_bits_and_chosen_tokens_are_what_is_left(long, short):
    four, two = report.rows_of(long, "quant", "passkey", 4096)            # 4 bits, then 2 bits
    assert four["fraction"] < report.row_at(short, "quant", "ppl", 1024, 0.25)["fraction"]
    assert four["accuracy"] == 1.0 and report.rows_of(long, "quant", "niah", 4096)[0]["relative"] == 1.0
    assert two["correct"] == 0 and all(report.rows_of(long, "quant", t, 4096)[1]["correct"] == 0 for t in ("niah", "vt"))
    assert quality(long, "snapkv", "passkey", 0.25) == 1.0 and 0 < quality(long, "snapkv", "passkey", 0.125) < 1
    assert all(r["correct"] == 0 for r in report.rows_of(long, "streaming", "passkey", 4096))


def test_at_4096_tokens_the_chain_is_at_its_guessing_level(long):
    """Uncompressed, the model answers the chain as often as copying one of its two numbers would (one distractor
    chain by default, so two candidate numbers)."""
    import inspect

    from mkvlib.compare.tasks import niah_item, vt_item

    distractors = inspect.signature(vt_item).parameters["distractors"].default
    keys = inspect.signature(niah_item).parameters["keys"].default
    assert long["ceiling"]["vt"]["4096"] == 1 / (1 + distractors)
    assert long["ceiling"]["niah"]["4096"] > 1 / keys


def test_half_the_features_five_ways(short):
    think = report.load_result(RESULTS / "compare_think_half.json")
    tk = {r["task"]: r for r in think["rows"] if r["method"].startswith("think") and r["n"]}
    kl = {m: quality(short, m, "ppl", 0.5) for m in ("pca", "svd", ADAPTIVE, UNIFORM)}
    assert max(kl[ADAPTIVE], kl[UNIFORM]) < min(kl["pca"], kl["svd"])
    assert tk["ppl"]["fraction"] == 0.75 and kl[ADAPTIVE] < tk["ppl"]["kl"] < 1.2 * kl[ADAPTIVE]
    from mkvlib.retrieval import separated

    think_count = (sum(tk[t]["correct"] for t in RETRIEVAL_TASKS), sum(tk[t]["n"] for t in RETRIEVAL_TASKS))
    rows = [report.row_at(short, ADAPTIVE, t, 1024, 0.5) for t in RETRIEVAL_TASKS]
    assert not separated(think_count, (sum(r["correct"] for r in rows), sum(r["n"] for r in rows))), \
        "the notebook calls the two retrieval counts too close to rank"


def test_far_from_the_question_the_values_break_first():
    halves = report.load_result(RESULTS / "compare_passkey_halves_shipped.json")
    cell = {(r["params"]["only"], r["params"]["budget"], r["length"]): r for r in halves["rows"]
            if r["method"] != "uncompressed" and r["n"]}
    assert all(halves["ceiling"]["passkey"][str(n)] == 1.0 for n in (1024, 4096))
    assert all(r["n"] - r["correct"] <= 1 for (_, _, n), r in cell.items() if n == 1024)     # at most one lost
    assert cell[("keys", 0.75, 4096)]["accuracy"] == 1.0
    assert cell[("values", 0.75, 4096)]["accuracy"] < 0.5                                   # most lost
    assert cell[("values", 0.5, 4096)]["correct"] - cell[("values", 0.75, 4096)]["correct"] <= 2

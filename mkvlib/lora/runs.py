"""The ledger of the two-stage LoRA runs behind ``data/results/lora_arc_easy.csv``: what each run was.

The accuracy CSV records each cell by the fine-tuned model's adapter weights hash and the projections'
fingerprint; it cannot say how a stage-2 run was made (from which general projections, for how many steps, with
which settings), and most runs were not kept as bundles. This ledger says it, run by run, as the commits that added
the rows described them. Runs are labelled (a), (b), ... in the order they were made, the label the project's
history uses. docs/results.md shows the ledger with every run's share kept (``mkvlib.docs``); notebook 06 finds
its rows here by what they are, never by a hash.
"""
from __future__ import annotations

from dataclasses import dataclass

STAGE1 = "14940f2b6519a2f0"          # the stage-1 adapter (data/lora/arc_easy_stage1): 30 steps of LoRA on ARC-Easy


@dataclass(frozen=True)
class Run:
    """One scored fine-tuned model with one set of projections at a compressed budget.

    ``adapter``: the fine-tuned model (adapter weights hash, the CSV's ``adapter``); ``fingerprint``: the
    projections attached; ``init``: for a stage-2 run, the fingerprint of the general projections stage 2 started
    from (None: the stage-1 model with general projections, no stage 2); ``stage2_steps``: stage-2 steps in all;
    ``ranks``: 'uniform' or 'adaptive' (searched on the fine-tuned model); ``limit``: items as the CSV stores it
    ('' for the whole split)."""
    label: str
    what: str
    adapter: str
    fingerprint: str
    init: str | None = None
    stage2_steps: int = 0
    ranks: str = "uniform"
    limit: str = "500"

    def as_selector(self) -> dict:
        """What :func:`mkvlib.lora.kept_table` needs to find this run's two rows."""
        return {"adapter": self.adapter, "fingerprint": self.fingerprint, "ranks": self.ranks, "limit": self.limit}


PCA, TRAINED_180, TRAINED_480, TRAINED_980 = ("e23af84df2af538f", "6cc7201ebcc3d7c3", "d409a853eb79f6fc",
                                              "37338d89d46168ec")
FROM_POSITION_0, RECALL_BLOCKS = "216e18ec88005d87", "ac63cf12294c56a7"

_UNIFORM = [
    Run("(a)", "the stage-1 model with PCA", STAGE1, PCA),
    Run("(b)", "the stage-1 model with the projections trained 180 steps on WikiText + Wikipedia", STAGE1,
        TRAINED_180),
    Run("(b')", "the stage-1 model with those projections trained 300 KD steps more on C4 + Wikipedia + WikiText",
        STAGE1, TRAINED_480),
    Run("(b'')", "the stage-1 model with the projections trained from position 0 on diverse text", STAGE1,
        FROM_POSITION_0),
    Run("(b''')", "the stage-1 model with the projections trained on spread positions and recall blocks", STAGE1,
        RECALL_BLOCKS),
    Run("(c)", "stage 2, 60 steps from the projections of (b)", "17bf34afc896208d", "87ab5abebb6049b1",
        TRAINED_180, 60),
    Run("(c')", "stage 2, 60 steps from the projections of (b')", "aeac9f97eda606ce", "bb5dadb8762d7fa7",
        TRAINED_480, 60),
    Run("(c'')", "stage 2, 60 steps from the projections trained 500 KD steps more than (b')", "fb976cdc81fc1510",
        "e13f895dfa11cd53", TRAINED_980, 60),
    Run("(d)", "stage 2, 120 steps from the same projections as (c'')", "2e730553ad055d0c", "55f62380a87f3562",
        TRAINED_980, 120),
    Run("(e)", "(d), then 120 steps more at half the learning rate", "44e235d8b7c9ac16", "570a90c94a0246ce",
        TRAINED_980, 240),
    Run("(f)", "(d), then 80 steps more at half the learning rate, ranks from {24, 32, 40}, the adapter's "
        "learning rate 4x", "8679b30848ac4120", "0dbce51e25796277", TRAINED_980, 200),
    Run("(g)", "(d), then 80 steps more at half the learning rate, ranks from {24, 32, 40}: the committed "
        "bundle", "84d7be788201bf5f", "2f437699138c7252", TRAINED_980, 200),
    Run("(h)", "(g), then 80 steps more with ranks from {32}", "06cf4fec065aacd4", "53271b2a20925068", TRAINED_980,
        280),
    Run("(i)", "(g), then 80 steps more with ranks from {28, 32, 36}", "c84e9b8a2cd7f737", "e9f70018049547c4",
        TRAINED_980, 280),
    Run("(j)", "(g), then 80 KD steps on every answer choice, the adapter frozen", "84d7be788201bf5f",
        "9faf2785ee5204fe", TRAINED_980, 280),
    Run("(k)", "(g), then 80 KD steps on every answer choice, the adapter trained too", "ac24959fbcd264fe",
        "f0ee866ede4fbd7f", TRAINED_980, 280),
    Run("(l)", "stage 2, 80 steps from the projections of (b'') with (g)'s settings", "5a49b90601b41036",
        "4f81f3ec92c469b4", FROM_POSITION_0, 80),
    Run("(m)", "stage 2, 80 steps from the projections of (b''') with (g)'s settings",
        "90c6054ac055051d", "77496f83eb10c3d0", RECALL_BLOCKS, 80),
    Run("(n)", "(g), then 60 steps more with one item per row, unpacked, so that every item starts at position 0 "
        "as lm-eval reads it (16 rows of 80 tokens a step, lr 5e-4)", "5ac6c9bf127a5055", "c48127f121e594f8",
        TRAINED_980, 260),
    Run("(o)", "(g), then 60 KD steps on every answer choice, unpacked, the loss on the answer tokens only (what "
        "lm-eval compares), the adapter frozen (16 rows of 80 tokens a step, lr 5e-4)", "84d7be788201bf5f",
        "17d9a41e468a8401", TRAINED_980, 260),
]
_BY_LABEL = {r.label: r for r in _UNIFORM}
RUNS: list[Run] = _UNIFORM + [
    Run(f"{label} adaptive", _BY_LABEL[label].what + ", searched ranks", _BY_LABEL[label].adapter,
        _BY_LABEL[label].fingerprint, _BY_LABEL[label].init, _BY_LABEL[label].stage2_steps, "adaptive")
    for label in ("(b'')", "(b''')", "(c')", "(d)", "(e)", "(g)")
] + [Run("(g) whole split", _BY_LABEL["(g)"].what + ", on the whole test split", _BY_LABEL["(g)"].adapter,
         _BY_LABEL["(g)"].fingerprint, TRAINED_980, 200, "uniform", "")]


def run(label: str) -> Run:
    """The run labelled ``label`` ('(g)', '(g) adaptive', ...)."""
    found = [r for r in RUNS if r.label == label]
    if not found:
        raise KeyError(f"no LoRA run labelled {label!r}; the ledger has {[r.label for r in RUNS]}")
    return found[0]


def stage2_from(init: str, ranks: str = "uniform", limit: str = "500") -> list[Run]:
    """The stage-2 runs that started from the general projections ``init`` (a fingerprint)."""
    return [r for r in RUNS if r.init == init and r.ranks == ranks and r.limit == limit]

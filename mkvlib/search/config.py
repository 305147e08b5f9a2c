"""Settings of the greedy rank search, validated, with a CI-sized variant. Introduced in notebook 03."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..core.checks import check_budget, check_rank
from ..core.geometry import KVGeometry
from ..core.positions import POSITION_MODES
from ..core.ranks import check_whole_tokens
from ..core.rules import Batch, KVBalance, Rules, SpreadLimit
from ..recall import check_recall_span

STRATEGIES = ("exact", "lazy", "proxy")
BALANCES = ("pooled", "separate")


@dataclass(frozen=True)
class SearchConfig:
    """How the greedy search walks from every rank at d down to the floor. The defaults are a CPU budget (they made
    the shipped PCA trajectory; the trained one adds tokens=512, proxy_refresh=6, max_spread=32, stop_budget=0.25).

    step: how much one step lowers one entry's rank (d/8 matches training's schedule). min_rank: every entry's
    floor. stop_budget: stop at or below this budget (None: the floor). batched: steps committed per scoring pass
    (1 = the paper's greedy). strategy: 'exact' re-scores every candidate each pass by its true KL; 'lazy' re-scores
    only front-runners until the best is fresh (the choices of 'exact' while a step never hurts less after others
    were lowered); 'proxy' ranks by a per-layer attention-output error weighted by an exact sensitivity per layer
    and kind, re-scoring its ``shortlist`` best exactly, rebuilt ``proxy_refresh`` times on the way down.
    balance: 'pooled' (keys and values compete for one budget) or 'separate' (the key and value pools alternate,
    so any pair of K/V budgets is a prefix of each pool). nll_weight: w > 0 scores by KL + w * the change of the
    calibration NLL (w = lm_weight / kd_weight of training). max_spread: an integer s >= step only offers steps
    after which the highest and lowest ranks differ by at most s (None: no limit). tokens, seq_len, corpus,
    batch_size: calibration text (never the evaluation split) and blocks per forward pass. recall_span: n > 0
    makes each block's last n tokens repeat a span from near its start (:func:`mkvlib.recall.recall_blocks`), so
    steps that break long-range lookup cost KL. positions: 'spread' (default) scores each block at a seeded offset
    over the context window, 'start' from position 0 (:mod:`mkvlib.core.positions`). protect: (layer, KV head,
    kind) entries the search never lowers (:func:`mkvlib.retrieval_heads.load_protected`: the retrieval heads).
    keep_first / keep_recent: tokens read whole while scoring (each block's first tokens, each query's latest), so
    the ranks fit a cache that keeps them whole (:meth:`mkvlib.core.compress.Compression.keep_whole`).
    """
    step: int = 8
    min_rank: int = 8
    stop_budget: float | None = None
    batched: int = 1
    strategy: str = "proxy"
    shortlist: int = 0
    proxy_refresh: int = 2
    balance: str = "pooled"
    nll_weight: float = 0.0
    max_spread: int | None = None
    tokens: int = 256
    seq_len: int = 256
    corpus: str | None = None
    batch_size: int = 4
    recall_span: int = 0
    positions: str = "spread"
    protect: tuple = ()
    keep_first: int = 0
    keep_recent: int = 0

    def __post_init__(self):
        for name, least in (("step", 1), ("batched", 1), ("tokens", 1), ("seq_len", 1), ("batch_size", 1),
                            ("proxy_refresh", 0), ("recall_span", 0), ("shortlist", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"SearchConfig.{name} must be an integer >= {least}, not {value!r}")
        check_rank(self.min_rank, what="SearchConfig.min_rank")
        check_whole_tokens(self.keep_first, self.keep_recent)
        check_recall_span(self.recall_span, self.seq_len, "SearchConfig.recall_span")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"SearchConfig.positions must be one of {POSITION_MODES}, not {self.positions!r}")
        if isinstance(self.nll_weight, bool) or not isinstance(self.nll_weight, (int, float)) or not self.nll_weight >= 0:
            raise ValueError(f"SearchConfig.nll_weight must be a number >= 0, not {self.nll_weight!r}")
        if self.max_spread is not None and (not isinstance(self.max_spread, int) or isinstance(self.max_spread, bool)
                                            or self.max_spread < self.step):
            raise ValueError(f"SearchConfig.max_spread must be None or an integer >= step ({self.step}), not "
                             f"{self.max_spread!r}: a smaller spread would leave no step to take once all ranks "
                             "are equal")
        check_budget(self.stop_budget, "SearchConfig.stop_budget", optional=True)
        entries = tuple(tuple(e) for e in self.protect) if isinstance(self.protect, (tuple, list)) else None
        if entries is None or any(len(e) != 3 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                         for x in e) or e[2] not in (0, 1) for e in entries):
            raise ValueError("SearchConfig.protect must be (layer, KV head, kind) triples of integers >= 0 with kind "
                             f"0 (keys) or 1 (values), not {self.protect!r}")
        object.__setattr__(self, "protect", entries)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"SearchConfig.strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        if self.balance not in BALANCES:
            raise ValueError(f"SearchConfig.balance must be one of {BALANCES}, not {self.balance!r}")
        if self.tokens < self.seq_len:
            raise ValueError(f"SearchConfig.tokens ({self.tokens}) must be at least seq_len ({self.seq_len})")
        if self.corpus is not None:
            from ..corpora import check_not_heldout

            check_not_heldout(self.corpus, role="calibration")

    def check_head_dim(self, head_dim: int) -> None:
        """Raise unless step and floor make sense for heads of size ``head_dim``."""
        if self.min_rank >= head_dim:
            raise ValueError(f"min_rank {self.min_rank} leaves nothing to search: it must be below head_dim={head_dim}")
        if self.step > head_dim - self.min_rank:
            raise ValueError(f"step {self.step} is larger than the whole range {head_dim} -> {self.min_rank}")

    def rules(self, geom: KVGeometry) -> Rules:
        """The rules of step 4 these settings give on ``geom``: ladder, spread limit, K/V balance, batching."""
        return Rules(geom, self.step, self.min_rank, SpreadLimit(self.max_spread), KVBalance(self.balance),
                     Batch(self.batched), fixed=self.protect)

    @classmethod
    def fast(cls, **overrides) -> "SearchConfig":
        """CI size: 2 x 128 calibration tokens, steps of d/4 down to 25%, the proxy built once."""
        base = dict(step=16, min_rank=16, strategy="proxy", proxy_refresh=0, tokens=256, seq_len=128, batch_size=2)
        return cls(**dict(base, **overrides))

    def with_(self, **changes) -> "SearchConfig":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)

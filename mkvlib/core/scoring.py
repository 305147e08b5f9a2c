"""The score of lowering one entry (layer, KV head, K or V): the exact calibration KL (step 3 of Algorithm 1).

:class:`KLScorer` holds the base model's next-token distributions on the calibration blocks (computed once,
compression switched off) and the captured layer inputs of the current state, so scoring a candidate in layer l
re-runs only layers l..L-1 (:mod:`.replay`); the result equals a full forward pass. It can add an NLL term on
the calibration text's own next tokens (``nll_weight``). ``harm(entry, rank)``: how much moving one entry of the
captured state raises the KL; :func:`calibration_scorer` attaches projections and builds one. :class:`Exact` is
the paper's scoring strategy for :func:`.greedy.algorithm1`: every candidate by its exact KL, each pass (the lazy
and proxy strategies built on it are :mod:`mkvlib.search.strategies`). Introduced in notebook 03.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .compress import attach
from .geometry import KVGeometry
from .positions import shifted
from .ranks import uniform_ranks
from .replay import LayerReplay

Entry = tuple  # (layer, kv_head, kind) with kind 0 = K, 1 = V


def with_rank(ranks: torch.Tensor, entry: Entry, rank: int) -> torch.Tensor:
    """A copy of ``ranks`` (L, G, 2) with one entry changed."""
    out = ranks.clone()
    out[entry] = rank
    return out


class KLScorer:
    """KL(base || compressed), mean over the next-token predictions of ``blocks`` (N, T).

    ``compression``: an attached :class:`~.compress.Compression`; the scorer changes its ranks.
    ``nll_weight`` w > 0 scores KL + w * (NLL(compressed) - NLL(base)) instead, the NLL being the cross-entropy
    on the blocks' own next tokens: the same mix of distillation and language modelling that Matryoshka
    training minimises (kd_weight : lm_weight), for projections whose truncations were fitted to the text.
    """

    @torch.no_grad()
    def __init__(self, model, compression, blocks: torch.Tensor, batch_size: int = 4, nll_weight: float = 0.0,
                 offsets: torch.Tensor | None = None):
        if not nll_weight >= 0:
            raise ValueError(f"nll_weight must be >= 0, not {nll_weight!r}")
        self.model, self.compression, self.nll_weight = model, compression, float(nll_weight)
        device = next(model.parameters()).device
        self.chunks = [blocks[i:i + batch_size].to(device) for i in range(0, len(blocks), batch_size)]
        # each chunk's position offsets (None: from 0); captured position embeddings carry them into every replay
        self.offsets = [None if offsets is None else offsets[i:i + batch_size] for i in range(0, len(blocks),
                                                                                               batch_size)]
        self.targets = [ids[:, 1:].flatten() for ids in self.chunks]
        self.replays = [LayerReplay(model) for _ in self.chunks]
        self.base_logp, self.base_probs, self.base_nll = [], [], []
        self.tokens = sum(c.shape[0] * (c.shape[1] - 1) for c in self.chunks)
        enabled = compression.enabled
        compression.enabled = False
        try:
            for i in range(len(self.chunks)):
                logp = self._capture(i)                                    # (B*(T-1), vocab)
                self.base_logp.append(logp)
                self.base_probs.append(logp.exp())
                self.base_nll.append(self._nll(len(self.base_nll), logp))
        finally:
            compression.enabled = enabled
        self.state = None          # the ranks whose layer inputs the replays hold (None: base model)
        self.kl = None             # the KL at ``state`` (set by set_state)
        self.evaluations = 0       # candidate scorings, each a partial forward pass

    def _capture(self, i: int) -> torch.Tensor:
        """Chunk ``i``'s log-probs from a full pass at its position offsets, recording every layer's input."""
        with shifted(self.model, self.offsets[i]):
            return self.replays[i].capture(self.chunks[i])

    def _nll(self, i: int, logp: torch.Tensor) -> float:
        return float(-logp.gather(1, self.targets[i][:, None]).sum())

    def _kl(self, i: int, logp: torch.Tensor) -> float:
        """Chunk ``i``'s summed objective: KL to base, plus the weighted NLL change when ``nll_weight`` is set."""
        kl = float((self.base_probs[i] * (self.base_logp[i] - logp)).sum())
        if self.nll_weight:
            kl += self.nll_weight * (self._nll(i, logp) - self.base_nll[i])
        return kl

    @torch.no_grad()
    def set_state(self, ranks: torch.Tensor) -> float:
        """Capture every layer's input with ``ranks`` applied; return the KL at ``ranks``."""
        self.compression.set_ranks(ranks)
        total = sum(self._kl(i, self._capture(i)) for i in range(len(self.chunks)))
        self.state = ranks.clone()
        self.kl = total / self.tokens
        return self.kl

    @torch.no_grad()
    def score(self, ranks: torch.Tensor, layer: int) -> float:
        """KL at ``ranks``, which must equal the captured state in every layer below ``layer``."""
        if self.state is None or not torch.equal(self.state[:layer], ranks[:layer]):
            raise RuntimeError("score() needs ranks that agree with the captured state below the candidate's "
                               "layer; call set_state(ranks) first")
        self.compression.set_ranks(ranks)
        self.evaluations += 1
        total = sum(self._kl(i, rp.logprobs_from(layer)) for i, rp in enumerate(self.replays))
        return total / self.tokens

    def harm(self, entry: Entry, rank: int) -> float:
        """How much moving one ``entry`` of the captured state to ``rank`` raises the KL: the score of that
        move (replayed from the entry's layer) minus the KL at the state. Call :meth:`set_state` first."""
        if self.state is None:
            raise RuntimeError("harm() scores a move away from the captured state; call set_state(ranks) first")
        return self.score(with_rank(self.state, entry, rank), entry[0]) - self.kl


@contextmanager
def calibration_scorer(model, projections, blocks: torch.Tensor, batch_size: int = 4, nll_weight: float = 0.0,
                       offsets: torch.Tensor | None = None, keep_first: int = 0, keep_recent: int = 0):
    """A :class:`KLScorer` on ``blocks`` (N, T) with ``projections`` attached to ``model`` at full rank; the
    model is left as it was on exit. ``projections``: an object, a path, or 'pca'/'trained' (shipped).
    ``offsets``: (N,) position offsets of the blocks (:mod:`.positions`), or None for positions from 0.
    ``keep_first``/``keep_recent``: tokens every candidate reads whole (:meth:`.compress.Compression.keep_whole`)."""
    with attach(model, projections, 1.0, keep_first=keep_first, keep_recent=keep_recent) as comp:
        yield KLScorer(model, comp, blocks, batch_size, nll_weight, offsets)


class Exact:
    """Every candidate scored each pass by its exact calibration KL (the paper's search). Answers the loop of
    :func:`.greedy.algorithm1`: ``score(ranks, movable)`` scores the one-step lowerings ``movable`` ({entry: new
    rank}); ``best(options)`` is the least harmful of ``options`` as ``(entry, KL after)`` (ties: the lowest
    entry), or None; ``advance(ranks, chosen, more)`` moves on to the ranks after the steps ``chosen``. ``kl``: the
    calibration KL at the current ranks, starting with every rank at d."""

    def __init__(self, scorer: KLScorer, geom: KVGeometry):
        self.scorer, self.geom = scorer, geom
        self.kl = scorer.set_state(uniform_ranks(geom, 1.0))
        self.harms: dict = {}

    def score(self, ranks: torch.Tensor, movable: dict) -> None:
        self.harms = {e: self.scorer.harm(e, r) for e, r in movable.items()}

    def best(self, options: dict):
        scored = [e for e in options if e in self.harms]
        if not scored:
            return None
        entry = min(scored, key=lambda e: (self.harms[e], e))
        return entry, self.kl + self.harms[entry]

    def advance(self, ranks: torch.Tensor, chosen: list, more: bool) -> None:
        self.kl = self.scorer.set_state(ranks)

    def meta(self) -> dict:
        return {"proxy_sensitivity": None}

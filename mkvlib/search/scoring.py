"""Scores for lowering one entry (layer, KV head, K or V): the exact calibration KL, and a cheap proxy.

:class:`KLScorer` holds the base model's next-token distributions on the calibration blocks (computed once,
compression switched off) and the captured layer inputs of the current state, so scoring a candidate in layer l
re-runs only layers l..L-1 (:mod:`mkvlib.search.replay`); the result equals a full forward pass. It can add an
NLL term on the calibration text's own next tokens (``nll_weight``). ``harm(entry, rank)``: how much moving one
entry of the captured state raises the KL; :func:`calibration_scorer` attaches projections and builds one.
:class:`LocalProxy` scores without any forward pass through later layers: the mean squared change of layer l's
attention output caused by that entry alone (on the uncompressed model's inputs), times a sensitivity per
layer and kind (K or V) measured once by the exact KL. Introduced in notebook 03.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from ..runtime import progress_bar as tqdm

from ..geometry import KVGeometry
from ..positions import shifted
from .replay import LayerReplay

Entry = tuple  # (layer, kv_head, kind) with kind 0 = K, 1 = V


def with_rank(ranks: torch.Tensor, entry: Entry, rank: int) -> torch.Tensor:
    """A copy of ``ranks`` (L, G, 2) with one entry changed."""
    out = ranks.clone()
    out[entry] = rank
    return out


class KLScorer:
    """KL(base || compressed), mean over the next-token predictions of ``blocks`` (N, T).

    ``compression``: an attached :class:`~mkvlib.compress.Compression`; the scorer changes its ranks.
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
                       offsets: torch.Tensor | None = None):
    """A :class:`KLScorer` on ``blocks`` (N, T) with ``projections`` attached to ``model`` at full rank; the
    model is left as it was on exit. ``projections``: an object, a path, or 'pca'/'trained' (shipped).
    ``offsets``: (N,) position offsets of the blocks (:mod:`mkvlib.positions`), or None for positions from 0."""
    from ..compress import attach

    with attach(model, projections, 1.0) as comp:
        yield KLScorer(model, comp, blocks, batch_size, nll_weight, offsets)


class LocalProxy:
    """Separable proxy around a state: harm(l, g, c: r -> r') = s_{l,c} * (e_{l,g,c}(r') - e_{l,g,c}(r)).

    e(r): mean squared change of layer l's attention output (B, T, D) when only that entry moves from its rank
    in ``state`` to r (on the inputs layer l gets at ``state``). s_{l,c}: the exact KL increase of moving every
    key (c = K) or every value (c = V) entry of layer l halfway down its remaining ``path`` (d, d - step, ...,
    floor), divided by that move's output error. Keys and values get separate sensitivities because a key error
    reshapes the attention pattern while a value error only shifts the output, so the same output error costs
    them differently downstream. A measured sensitivity at or below zero (a small move whose KL change drowned in
    calibration noise) is raised to the smallest positive one, so no layer looks free to cut. ``state``
    defaults to full ranks (the uncompressed model); ``layers``: only these (default all).
    """

    @torch.no_grad()
    def __init__(self, scorer: KLScorer, path: list[int], state: torch.Tensor | None = None,
                 progress: bool = False, layers: list[int] | None = None):
        self.scorer = scorer
        comp = scorer.compression
        geom: KVGeometry = comp.geometry
        if state is None:
            state = torch.full(geom.shape, geom.head_dim, dtype=torch.long)
        kl_state = scorer.set_state(state)
        comp.set_ranks(state)
        layers = list(range(geom.layers)) if layers is None else list(layers)
        reference = [{l: rp.attention_output(l) for l in layers} for rp in scorer.replays]

        def error(ranks, layer):
            comp.set_ranks(ranks)
            num = sum(float((rp.attention_output(layer) - ref[layer]).pow(2).sum())
                      for rp, ref in zip(scorer.replays, reference))
            return num / scorer.tokens

        self.errors = {}                                  # (l, g, c) -> {rank: error}
        probe = state.clone()
        for l in tqdm(layers, desc="proxy: output errors", disable=not progress):
            for g in range(geom.kv_heads):
                for c in (0, 1):
                    now = int(state[l, g, c])
                    below = path[path.index(now):]
                    probe[l, g, c] = below[len(below) // 2]
                    self.errors[(l, g, c)] = {r: (0.0 if r == now else error(with_rank(state, (l, g, c), r), l))
                                              for r in below}
        self.raw_sensitivity = {}                         # (l, c) -> measured KL per unit output error
        for l in tqdm(layers, desc="proxy: sensitivities", disable=not progress):
            for c in (0, 1):
                trial = state.clone()
                trial[l, :, c] = probe[l, :, c]
                if torch.equal(trial[l], state[l]):       # every entry of this kind already at the floor
                    self.raw_sensitivity[(l, c)] = 0.0
                    continue
                err = error(trial, l)
                self.raw_sensitivity[(l, c)] = (scorer.score(trial, l) - kl_state) / err if err > 0 else 0.0
        positive = [s for s in self.raw_sensitivity.values() if s > 0]
        floor = min(positive) if positive else 1.0
        self.sensitivity = {k: max(s, floor) for k, s in self.raw_sensitivity.items()}
        self.kl_state = kl_state
        comp.set_ranks(state)

    def harm(self, entry: Entry, rank: int, new_rank: int) -> float:
        errs = self.errors[entry]
        return self.sensitivity[(entry[0], entry[2])] * (errs[new_rank] - errs[rank])

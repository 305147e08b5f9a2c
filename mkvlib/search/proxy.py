"""A cheap proxy for the exact calibration KL of :mod:`mkvlib.core.scoring`: the greedy search's ``proxy``
strategy. :class:`LocalProxy` scores without any forward pass through later layers: the mean squared change of
layer l's attention output caused by that entry alone (on the uncompressed model's inputs), times a sensitivity
per layer and kind (K or V) measured once by the exact KL. Introduced in notebook 03.
"""
from __future__ import annotations

import torch

from ..core.env import progress_bar as tqdm
from ..core.geometry import KVGeometry
from ..core.scoring import Entry, KLScorer, with_rank


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

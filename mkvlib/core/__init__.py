"""The method of the paper (MatryoshkaKV, Lin et al., ICLR 2025) and nothing else: every module here imports only
torch, transformers, the standard library and other modules of this package. docs/design.md maps it section by
section; read it in this order:

1. ``geometry.py``, ``checks.py``: the notation, (L, G, d) and ranks (L, G, 2), and the one validation of budgets,
   ranks and schedules (design.md sections 1 and 3).
2. ``attention.py``: the one hook into transformers' attention.
3. ``projections.py``, ``compress.py``: one orthogonal basis per (layer, KV head) for keys and for values, its
   Cayley parametrisation, and compression simulated through the hook (section 2).
4. ``ranks.py``: ranks per entry and their budget, uniform or adaptive (section 3).
5. ``positions.py``, ``stats.py``, ``pca.py``: streaming KV statistics and the PCA initialisation (section 4).
6. ``sampler.py``, ``loss.py``: Matryoshka training, ranks sampled per step and the distillation loss (section 5;
   the training loop is :mod:`mkvlib.training`).
7. ``replay.py``, ``scoring.py``, ``greedy.py``, ``rules.py``, ``trajectory.py``: the greedy search of Algorithm 1,
   its exact calibration KL, the rules of which steps it takes and the trajectory it records (section 6; the lazy
   and proxy strategies and the driver from a config are :mod:`mkvlib.search`).
8. ``cache.py``: the real compressed cache, keys and values stored at their reduced widths (section 8).

``env.py`` and ``io.py`` are what the rest needs from outside: where the shipped artefacts live, a progress bar,
atomic file writes and safetensors. Nothing is imported here, so ``import mkvlib`` stays light.
"""

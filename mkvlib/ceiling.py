"""The ceiling of fixed projections on the out-of-domain suite: bases fitted on the suite itself, and an oracle.

Two references, measured with the suite's own metrics (:func:`mkvlib.suite.evaluate_suite`: KL to the
uncompressed model in nats per token, perplexity ratio, top-1 agreement, mean over domains). Neither is a method:
both read the text they are judged on, and neither is ever shipped.

- **In-sample fixed bases**: projections fitted on the suite's own blocks, the very text they are then measured
  on (:func:`fit_suite_pca`, :func:`fit_suite_layerwise`, :func:`fit_suite_kd`). A basis fitted on other text
  sees this text only out of sample, so these show how far a fixed per-head basis can go for this model when
  the training text is no obstacle (the KD run is short: they bound that best basis from below, not above).
- **The per-sequence oracle** (:class:`SequenceSVDOracle`, :func:`oracle_hook`): per sequence and per (layer,
  KV head), the keys (post-RoPE) and the values are replaced by their best rank-r reconstruction from that
  sequence's own SVD, after centring by the sequence's own mean (added back). By Eckart-Young no fixed
  orthogonal basis reconstructs a sequence better in Frobenius norm (centring only lowers the error; the key
  mean costs a fixed basis nothing under softmax either). It bounds the *reconstruction* error, not the KL: the
  error weighs every token alike and attention does not (centring values moves the near-zero values of
  attention-sink tokens, as :func:`mkvlib.core.pca.fit_pca` explains; ``center_values=False`` is the variant
  without), and a basis trained on the model's output may beat it in KL (docs/results.md shows both). It is
  causal-leaky: each token is compressed with a basis that saw the tokens after it.

    blocks = suite_blocks(tokenizer, 1024, 512)
    with SequenceSVDOracle(model, 0.5) as oracle:
        rows = evaluate_suite(model, oracle, [0.5, 0.375], blocks)

``python -m mkvlib.ceiling --out FILE`` measures every row (the shipped projections too, on the same blocks)
and writes one record; docs/results.md shows it ("The ceiling of fixed projections").
"""
from __future__ import annotations

import argparse
import numbers
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from .core import attention
from .core.checks import check_budget, check_budgets
from .core.compress import RankedHook
from .core.geometry import KVGeometry
from .core.ranks import resolve_ranks
from .runtime import note

ORACLE = "per-sequence SVD (oracle)"
ORACLE_UNCENTRED = "per-sequence SVD, values uncentred (oracle)"
PCA_IN_SAMPLE = "PCA fitted on the suite (in-sample)"
LAYERWISE_IN_SAMPLE = "layer-wise fitted on the suite (in-sample)"
KD_IN_SAMPLE = "layer-wise + KD on the suite (in-sample)"
SHIPPED_LABELS = {"pca": "PCA (shipped)", "trained": "MatryoshkaKV (shipped)"}
SUITE_TEXT = "the out-of-domain suite's own blocks (in-sample)"

# The targets for the shipped projections, written into every record so that the documents judge them
# against the measured ceiling from data: (allocation, budget, metric, "at_most" or "at_least", bound).
TARGETS = (("uniform", 0.5, "kl_to_base", "at_most", 0.55),
           ("uniform", 0.5, "perplexity_ratio", "at_most", 1.5),
           ("adaptive", 0.5, "kl_to_base", "at_most", 0.45),
           ("adaptive", 0.5, "perplexity_ratio", "at_most", 1.4),
           ("adaptive", 0.5, "top1_agreement", "at_least", 0.75),
           ("adaptive", 0.375, "perplexity_ratio", "at_most", 2.0))


# --- the per-sequence oracle -------------------------------------------------------------------------------

def best_rank_reconstruction(x: torch.Tensor, ranks, center: bool = True) -> torch.Tensor:
    """Each sequence's best rank-r reconstruction per head, for ``x`` (B, G, T, d) and ``ranks`` (one int or (G,)).

    Per (b, g): with m the mean over the T tokens (zero when ``center`` is False) and V_r the top-r right singular
    vectors of X - m, returns m + (X - m) V_r V_r^T, the rank-r (affine) matrix closest to X in Frobenius norm.
    Computed in float64, returned in ``x``'s dtype; at r = d it is X to rounding error.
    """
    if x.dim() != 4:
        raise ValueError(f"expected (B, G, T, d) keys or values, not shape {tuple(x.shape)}")
    G, d = x.shape[1], x.shape[-1]
    ranks = torch.as_tensor(ranks, dtype=torch.long, device=x.device)
    ranks = ranks.expand(G) if ranks.dim() == 0 else ranks
    if ranks.shape != (G,) or int(ranks.min()) < 0 or int(ranks.max()) > d:
        raise ValueError(f"ranks must be one int or {G} ints in [0, {d}], not {ranks.tolist()}")
    xd = x.double()
    mean = xd.mean(dim=2, keepdim=True) if center else torch.zeros_like(xd[:, :, :1])
    centred = xd - mean
    vh = torch.linalg.svd(centred, full_matrices=False).Vh                       # (B, G, k, d), k = min(T, d)
    keep = (torch.arange(vh.shape[-2], device=x.device) < ranks[:, None]).double()   # (G, k)
    basis = vh.transpose(-1, -2) * keep[None, :, None, :]                        # (B, G, d, k), columns beyond r zero
    return (mean + centred @ basis @ basis.transpose(-1, -2)).to(x.dtype)


def _reconstructed(query, key, value, key_ranks, value_ranks, center_keys: bool, center_values: bool) -> tuple:
    """(query, keys, values) with keys and values at their best rank from the sequence's own SVD."""
    if query.shape[2] != key.shape[2]:
        raise RuntimeError(f"the per-sequence oracle needs each whole sequence in one forward pass (use_cache=False): "
                           f"it got {query.shape[2]} query positions over {key.shape[2]} keys")
    return (query, best_rank_reconstruction(key, key_ranks, center_keys),
            best_rank_reconstruction(value, value_ranks, center_values))


def oracle_hook(fraction: float, center_keys: bool = True, center_values: bool = True):
    """The per-sequence oracle as an attention hook (for :func:`mkvlib.core.attention.install`) at uniform ranks
    r = round(fraction * d), ``fraction`` in (0, 1]; each sequence's mean is removed first and added back unless
    ``center_keys`` / ``center_values`` is False. Causal-leaky: a bound on reconstruction, not a method."""
    fraction = check_budget(fraction, "the oracle's fraction")

    def hook(module, query, key, value):
        rank = int(round(fraction * key.shape[-1]))
        return _reconstructed(query, key, value, rank, rank, center_keys, center_values)
    return hook


class SequenceSVDOracle(RankedHook):
    """The per-sequence oracle attached to a model with the interface of :class:`mkvlib.core.compress.Compression`
    that :func:`mkvlib.suite.evaluate_suite` uses (``ranks``, ``enabled``, :meth:`set_ranks`, ``geometry``). Use as
    a context manager, or call :meth:`detach`."""

    def __init__(self, model, ranks=1.0, center_keys: bool = True, center_values: bool = True):
        self.model, self.geometry = model, KVGeometry.of(model)
        self.center_keys, self.center_values = center_keys, center_values
        self.enabled = True
        self.set_ranks(ranks)                      # validated before anything is installed
        self._handle = attention.install(model, hook=self)

    def set_ranks(self, ranks) -> None:
        """An int (every entry), a budget in (0, 1] (uniform ranks) or a (L, G, 2) tensor; checked first."""
        if not isinstance(ranks, (numbers.Real, torch.Tensor)) or (isinstance(ranks, numbers.Real)
                                                                    and not ranks == ranks):
            raise ValueError(f"the oracle's ranks must be an int, a budget in (0, 1] or a (L, G, 2) tensor, "
                             f"not {ranks!r}")
        self.ranks = resolve_ranks(ranks, self.geometry)

    def __call__(self, module, query, key, value):
        if not self.enabled:
            return query, key, value
        ranks = self.ranks[module.layer_idx]
        return _reconstructed(query, key, value, ranks[:, 0], ranks[:, 1], self.center_keys, self.center_values)


# --- evaluation on the suite ---------------------------------------------------------------------------------

def _settings(budgets, searched: dict | None) -> tuple[list, list[tuple[str, float]]]:
    """Rank specs (uniform budgets, then the searched ranks per budget) and their (allocation, target budget)."""
    settings = list(budgets) + [searched[b] for b in budgets if searched and b in searched]
    labels = [("uniform", b) for b in budgets] + [("adaptive", b) for b in budgets if searched and b in searched]
    return settings, labels


def _labelled(rows: list[dict], method: str, fingerprint, labels) -> list[dict]:
    return [dict(r, method=method, allocation=labels[r["setting"]][0], target_budget=labels[r["setting"]][1],
                 projections=fingerprint) for r in rows]


def evaluate_bases(model, projections, label: str, budgets, blocks_by_domain: dict, searched: dict | None = None,
                   batch_size: int = 4) -> list[dict]:
    """Suite rows of fixed ``projections`` at uniform ``budgets`` and at ``searched`` ranks ({budget: (L, G, 2)}),
    in one attachment (the uncompressed pass runs once per batch). Rows as :func:`mkvlib.suite.compare_suite`'s:
    method (``label``), allocation ('uniform' or 'adaptive'), target_budget, projections (the fingerprint)."""
    from .core.compress import attach
    from .core.projections import resolve_projections
    from .suite import evaluate_suite

    proj = resolve_projections(projections, model)
    settings, labels = _settings(check_budgets(budgets), searched)
    with attach(model, proj, settings[0]) as comp:
        rows = evaluate_suite(model, comp, settings, blocks_by_domain, batch_size)
    return _labelled(rows, label, proj.fingerprint(), labels)


def evaluate_oracle(model, budgets, blocks_by_domain: dict, searched: dict | None = None, batch_size: int = 4,
                    label: str = ORACLE, center_values: bool = True) -> list[dict]:
    """Suite rows of the per-sequence oracle (:class:`SequenceSVDOracle`), like :func:`evaluate_bases`'s;
    ``projections`` is None (there is no fixed basis)."""
    from .suite import evaluate_suite

    settings, labels = _settings(check_budgets(budgets), searched)
    with SequenceSVDOracle(model, settings[0], center_values=center_values) as oracle:
        rows = evaluate_suite(model, oracle, settings, blocks_by_domain, batch_size)
    return _labelled(rows, label, None, labels)


# --- the oracle on passkey retrieval ---------------------------------------------------------------------------

def passkey_settings(model, budget: float, projections: str = "trained", allocations=("uniform", "adaptive")):
    """(label, allocation, context factory) of each compressed row of the passkey ceiling at ``budget``: the
    oracle with and without centred values, and the shipped ``projections`` at each of ``allocations``."""
    from .core.compress import attach
    from .core.projections import resolve_projections
    from .core.ranks import ranks_for

    proj = resolve_projections(projections, model)
    shipped = SHIPPED_LABELS.get(projections, Path(projections).stem)
    return [(ORACLE, "uniform", lambda: attention.install(model, hook=oracle_hook(budget))),
            (ORACLE_UNCENTRED, "uniform",
             lambda: attention.install(model, hook=oracle_hook(budget, center_values=False))),
            *[(shipped, a, lambda r=ranks_for(model, proj, a, budget): attach(model, proj, ranks=r))
              for a in allocations]]


def passkey_ceiling(model, tokenizer, lengths, n: int, budgets, seed: int = 0, projections: str = "trained",
                    allocations=("uniform", "adaptive")) -> list[dict]:
    """Rows {method, allocation, budget, length, n, correct, mean_key_logp, key_logp, found}: per length the
    uncompressed model, then :func:`passkey_settings` at each of ``budgets``, on ``n`` standard passkey prompts
    (:func:`mkvlib.retrieval.passkey_prompts`, ``seed``), scored teacher-forced without a cache, as the oracle needs
    (:func:`mkvlib.retrieval.key_margins`: found = every key token the most probable one)."""
    import contextlib

    from .retrieval import key_margins, passkey_prompts

    rows = []
    for length in lengths:
        prompts = passkey_prompts(tokenizer, length, n, seed)
        settings = [("uncompressed", None, 1.0, contextlib.nullcontext)] + [
            (label, allocation, b, context) for b in budgets
            for label, allocation, context in passkey_settings(model, b, projections, allocations)]
        for label, allocation, budget, context in settings:
            with context():
                scores = key_margins(model, prompts, tokenizer)
            rows.append(dict(method=label, allocation=allocation, budget=budget, length=length, n=n,
                             correct=sum(scores["found"]), found=scores["found"], key_logp=scores["key_logp"],
                             mean_key_logp=scores["mean_key_logp"]))
            note(f"{length:,} tokens, {label} {allocation or ''} at {budget:.1%}: {rows[-1]['correct']}/{n}, "
                 f"mean key log p {rows[-1]['mean_key_logp']:.2f}")
    return rows


def passkey_main(args, argv) -> int:
    """``--passkey-lengths``: the oracle and the shipped projections on passkey prompts, teacher-forced."""
    from .commands.common import hardware
    from .core.io import write_json
    from .models import load_model
    from .retrieval import passkey_setting

    started = time.perf_counter()
    model, tokenizer = load_model(args.model, device=args.device)
    rows = passkey_ceiling(model, tokenizer, args.passkey_lengths, args.passkey_n, args.budgets, args.seed,
                           args.projections[-1], args.allocation)
    write_json(args.out, dict(
        what="Passkey retrieval teacher-forced: the per-sequence SVD oracle beside the shipped projections",
        model=model.mkv_name, budgets=args.budgets, lengths=args.passkey_lengths, n=args.passkey_n, seed=args.seed,
        depths=[passkey_setting(args.seed * 1000 + i)[1] for i in range(args.passkey_n)], rows=rows,
        command="python -m mkvlib.ceiling " + shlex.join(argv), wall_time_s=round(time.perf_counter() - started),
        hardware=hardware(model.device)))
    note(f"wrote {args.out}")
    return 0


# --- in-sample fixed bases (never shipped) -------------------------------------------------------------------

def suite_text(blocks_by_domain: dict) -> torch.Tensor:
    """Every domain's blocks in one (N, T) tensor, in domain order: the text the in-sample bases are fitted on."""
    if not blocks_by_domain:
        raise ValueError("no suite blocks to fit on")
    return torch.cat([b.long() for b in blocks_by_domain.values()])


def fit_suite_pca(model, blocks: torch.Tensor, batch_size: int = 4):
    """PCA (keys centred, values uncentred, as shipped) of ``blocks`` fed from position 0, as the suite is read."""
    from .core.pca import fit_pca
    from .core.stats import collect_kv_stats

    stats = collect_kv_stats(model, blocks, batch_size, progress=False, positions="start", corpus=SUITE_TEXT)
    return fit_pca(stats, model_name=model.mkv_name)


def fit_suite_layerwise(model, blocks: torch.Tensor, config=None, batch_size: int = 4):
    """The layer-wise warm start (:mod:`mkvlib.training.layerwise`) fitted on ``blocks`` from position 0, starting
    from the query-aware basis of the same blocks."""
    from .core.pca import query_aware_projections
    from .training.layerwise import capture_layer_inputs, fit_layerwise

    capture = capture_layer_inputs(model, blocks, batch_size=batch_size, positions="start", corpus=SUITE_TEXT)
    init = query_aware_projections(capture.stats(), model_name=model.mkv_name)
    return fit_layerwise(model, capture, init, config, init_name="query-aware", corpus=SUITE_TEXT)


def fit_suite_kd(model, blocks: torch.Tensor, init, config=None):
    """KD-only training (:class:`mkvlib.training.Trainer`) on ``blocks`` from position 0, starting at ``init``.
    Returns (projections, first loss, last loss)."""
    from .training import TrainConfig, Trainer

    config = config or TrainConfig(positions="start", kd_weight=1.0, lm_weight=0.0, eval_every=0,
                                   checkpoint_every=0, progress=False)
    if config.lm_weight or config.positions != "start":
        raise ValueError("the in-sample KD run is KD only (lm_weight 0) on blocks from position 0 (positions 'start')")
    trainer = Trainer(model, init, blocks, config)
    try:
        trainer.train()
    finally:
        trainer.close()
    losses = [row["loss"] for row in trainer.history]
    return trainer.result(corpus=SUITE_TEXT), losses[0], losses[-1]


# --- the command -----------------------------------------------------------------------------------------------

def budget_schedule(budgets, head_dim: int) -> tuple[int, ...]:
    """The ranks the budgets use (uniform), as a training schedule: the in-sample fits train where they are judged."""
    return tuple(sorted({max(1, int(round(b * head_dim))) for b in budgets}))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m mkvlib.ceiling", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the results record (JSON), written atomically")
    p.add_argument("--tokens", type=int, default=1024, help="tokens per domain (default 1024, as "
                   "data/results/ood_suite.json)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per block (default 512; 64 with MKV_FAST=1)")
    p.add_argument("--budgets", default="0.5,0.375", help="comma-separated budgets (default 0.5,0.375)")
    p.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--projections", default="pca,trained",
                   help="shipped projections measured beside the ceiling ('pca', 'trained' or files; default "
                        "pca,trained)")
    p.add_argument("--allocation", default="uniform,adaptive",
                   help="uniform and/or adaptive ranks (default both; adaptive: each shipped projections' own "
                        "trajectory, and --searched-ranks' for the oracle and the in-sample bases)")
    p.add_argument("--searched-ranks", default="trained",
                   help="shipped projections whose trajectory gives the searched ranks of the oracle and the "
                        "in-sample bases (default trained)")
    p.add_argument("--layerwise-steps", type=int, default=200, help="layer-wise steps per layer (default 200; 0: skip "
                   "the layer-wise and KD rows)")
    p.add_argument("--kd-steps", type=int, default=40, help="KD steps from the layer-wise bases (default 40; 0: skip)")
    p.add_argument("--kd-batch", type=int, default=2, help="blocks per KD step (default 2)")
    p.add_argument("--schedule", default="budgets", help="ranks the in-sample fits sample: 'budgets' (the ranks of "
                   "--budgets, default), 'default' (d/8, ..., d) or comma-separated ranks")
    p.add_argument("--batch-size", type=int, default=4, help="blocks per evaluation pass (default 4)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--passkey-lengths", default=None, help="instead of the suite: the oracle and the last of "
                   "--projections on passkey prompts of these lengths (e.g. 1024,4096,8192), teacher-forced, at "
                   "each of --budgets")
    p.add_argument("--passkey-n", type=int, default=6, help="passkey prompts per length (default 6)")
    p.add_argument("--seed", type=int, default=0, help="passkey prompt seed (default 0, as the retrieval records)")
    return _checked(p, p.parse_args(argv))


def _checked(p, args):
    """``args`` with budgets, lists and sizes checked and parsed (``p.error`` on bad input)."""
    try:
        args.budgets = list(check_budgets(args.budgets, "--budgets"))
    except ValueError as err:
        p.error(str(err))
    args.projections = [s.strip() for s in args.projections.split(",") if s.strip()]
    args.allocation = [s.strip() for s in args.allocation.split(",") if s.strip()]
    bad = [a for a in args.allocation if a not in ("uniform", "adaptive")]
    if bad or not args.allocation:
        p.error(f"--allocation takes uniform and/or adaptive, not {bad or args.allocation}")
    if "uniform" not in args.allocation:
        p.error("--allocation must include uniform (the oracle and the in-sample rows are measured uniform first)")
    if args.seq_len is None:
        from .runtime import pick

        args.seq_len = pick(64, 512)
    for name, least in (("tokens", 2), ("seq_len", 2), ("layerwise_steps", 0), ("kd_steps", 0), ("kd_batch", 1),
                        ("batch_size", 1)):
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} must be >= {least}")
    if args.passkey_lengths is not None:
        try:
            args.passkey_lengths = [int(x) for x in args.passkey_lengths.split(",")]
        except ValueError:
            p.error(f"--passkey-lengths takes comma-separated token counts such as 1024,8192, "
                    f"not {args.passkey_lengths!r}")
        if not args.passkey_lengths or min(args.passkey_lengths) < 64 or args.passkey_n < 1:
            p.error("--passkey-lengths must be token counts >= 64 and --passkey-n >= 1")
    if args.kd_steps and not args.layerwise_steps:
        p.error("--kd-steps starts from the layer-wise bases: give --layerwise-steps too (or --kd-steps 0)")
    labels = [SHIPPED_LABELS.get(name, Path(name).stem) for name in args.projections]
    if len(set(labels)) < len(labels):
        p.error(f"--projections names the same projections twice ({labels})")
    return args


def _schedule(args, head_dim: int):
    if args.schedule == "budgets":
        return budget_schedule(args.budgets, head_dim)
    if args.schedule == "default":
        return None
    from .core.checks import check_schedule

    try:
        return check_schedule([int(x) for x in args.schedule.split(",") if x.strip()], head_dim)
    except ValueError as err:
        raise SystemExit(f"python -m mkvlib.ceiling: --schedule: {err}") from None


class _Clock:
    """CPU seconds (this process) and wall seconds of named stages."""

    def __init__(self):
        self.cpu, self.wall = {}, {}

    def __call__(self, name: str, fn, *args, **kwargs):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn(*args, **kwargs)
        self.cpu[name] = round(time.process_time() - c0, 1)
        self.wall[name] = round(time.perf_counter() - w0, 1)
        note(f"{name}: {self.cpu[name]:.0f} CPU-s, {self.wall[name]:.0f} s wall")
        return out


def in_sample_bases(model, text: torch.Tensor, args, schedule, clock):
    """(label, recipe, projections, how they were made) of each in-sample basis the options ask for, fitted in turn
    (each fit timed by ``clock``)."""
    from .training import TrainConfig
    from .training.layerwise import LayerwiseConfig

    ranks = list(schedule) if schedule else "d/8, ..., d"
    pca = clock(f"fit {PCA_IN_SAMPLE}", fit_suite_pca, model, text, args.batch_size)
    yield (PCA_IN_SAMPLE, f"PCA of the suite's {text.numel():,} tokens (keys centred, values uncentred, as shipped)",
           pca, dict(tokens=int(text.numel()), positions="start", center_keys=True, center_values=False))
    if not args.layerwise_steps:
        return
    config = LayerwiseConfig(steps=args.layerwise_steps, schedule=schedule)
    layerwise = clock(f"fit {LAYERWISE_IN_SAMPLE}", fit_suite_layerwise, model, text, config, args.batch_size)
    made = dict(layerwise.meta["layerwise"])
    objective = made.pop("objective_at_50")                       # per layer: (before, after); kept as means
    made["objective_at_50_mean"] = [round(sum(v[i] for v in objective.values()) / len(objective), 6) for i in (0, 1)]
    yield (LAYERWISE_IN_SAMPLE, f"layer-wise warm start from the query-aware basis, both fitted on the suite "
           f"({args.layerwise_steps} steps per layer, sampled ranks {ranks})", layerwise, made)
    if not args.kd_steps:
        return
    batch = min(args.kd_batch, len(text))           # without a data folder the suite may be a single block
    config = TrainConfig(steps=args.kd_steps, batch_size=batch, warmup_steps=min(4, args.kd_steps - 1),
                         schedule=schedule, positions="start", kd_weight=1.0, lm_weight=0.0, eval_every=0,
                         checkpoint_every=0, progress=False)
    kd, first, last = clock(f"fit {KD_IN_SAMPLE}", fit_suite_kd, model, text, layerwise, config)
    yield (KD_IN_SAMPLE, f"KD only on the suite, {args.kd_steps} steps of {batch} blocks from the layer-wise "
           f"bases (sampled ranks {ranks})", kd,
           dict(kd.meta["training"], init_fingerprint=kd.meta.get("init_fingerprint"), first_loss=round(first, 6),
                last_loss=round(last, 6)))


def _record(args, argv, model, blocks, schedule, searched, methods, rows, clock, started) -> dict:
    """The result file's content; ``started``: (CPU time, wall time, load average) at the start."""
    from .commands.common import hardware
    from .suite import DOMAINS

    cpu0, wall0, load0 = started
    return dict(
        what="The ceiling of fixed projections on the out-of-domain suite: the shipped projections beside bases "
             "fitted on the suite's own text (in-sample, never shipped; only their fingerprints are kept) and the "
             "per-sequence SVD oracle",
        model=model.mkv_name, suite="ood", seq_len=args.seq_len, tokens_per_domain=args.tokens, domains=list(blocks),
        skipped=[d for d in DOMAINS if d not in blocks], budgets=args.budgets, schedule=list(schedule or []),
        searched_ranks=args.searched_ranks if searched else None, methods=methods, rows=rows,
        targets=[dict(allocation=a, budget=b, metric=m, direction=d, bound=v) for a, b, m, d, v in TARGETS],
        command="python -m mkvlib.ceiling " + shlex.join(argv),
        cpu_time_s=dict(clock.cpu, total=round(time.process_time() - cpu0, 1)),
        wall_time_s=round(time.perf_counter() - wall0, 1),
        hardware=dict(hardware(model.device), cpu_count=os.cpu_count(),
                      load_average_start=[round(x, 2) for x in load0],
                      load_average_end=[round(x, 2) for x in os.getloadavg()]))


def main(argv=None) -> int:
    from .core.io import write_json
    from .models import load_model
    from .core.projections import resolve_projections
    from .core.ranks import ranks_for
    from .suite import suite_blocks

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.passkey_lengths:
        return passkey_main(args, argv)
    started = time.process_time(), time.perf_counter(), os.getloadavg()
    clock = _Clock()
    model, tokenizer = load_model(args.model, device=args.device)
    schedule = _schedule(args, KVGeometry.of(model).head_dim)
    adaptive = "adaptive" in args.allocation
    shipped = [(name, resolve_projections(name, model)) for name in args.projections]
    # every trajectory is looked up before any work, so a missing one fails at once
    own_ranks = {name: {b: ranks_for(model, proj, "adaptive", b) for b in args.budgets} if adaptive else None
                 for name, proj in shipped}
    searched = ({b: ranks_for(model, args.searched_ranks, "adaptive", b) for b in args.budgets}
                if adaptive and args.searched_ranks != "none" else None)
    searched_how = f"; searched: the ranks of the shipped trajectory of {args.searched_ranks!r}" if searched else ""
    blocks = suite_blocks(tokenizer, args.tokens, args.seq_len)
    text = suite_text(blocks)
    methods, rows = [], []

    def measure(label, kind, recipe, proj, ranks, made=None, fit=None, center_values=True):
        if proj is None:
            found = clock(f"evaluate {label}", evaluate_oracle, model, args.budgets, blocks, ranks, args.batch_size,
                          label, center_values)
        else:
            found = clock(f"evaluate {label}", evaluate_bases, model, proj, label, args.budgets, blocks, ranks,
                          args.batch_size)
        rows.extend(found)
        # ``fingerprint`` names committed projections (the shipped rows); bases this command fits are never written,
        # and their fingerprint is ``fit_fingerprint`` (remade by the same command); the oracle has no basis
        key = "fingerprint" if kind == "shipped" else "fit_fingerprint"
        methods.append({"label": label, "kind": kind, "recipe": recipe, key: proj.fingerprint() if proj else None,
                        "allocations": ["uniform"] + (["adaptive"] if ranks else []), "made": made or {},
                        "fit_cpu_s": clock.cpu.get(f"fit {fit}") if fit else None,
                        "evaluate_cpu_s": clock.cpu[f"evaluate {label}"]})

    for name, proj in shipped:
        measure(SHIPPED_LABELS.get(name, Path(name).stem), "shipped", f"the shipped projections {name!r}"
                + ("; searched: their own shipped trajectory" if adaptive else ""), proj, own_ranks[name])
    for label, recipe, proj, made in in_sample_bases(model, text, args, schedule, clock):
        measure(label, "in-sample", recipe + ", blocks from position 0 as the suite reads them" + searched_how, proj,
                searched, made, label)
    for label, centred in ((ORACLE, True), (ORACLE_UNCENTRED, False)):
        measure(label, "oracle", "each sequence's own SVD per (layer, KV head), keys centred by the sequence's mean "
                f"(added back), values {'likewise' if centred else 'uncentred'}; causal-leaky, a bound on "
                f"reconstruction, not on KL{searched_how}", None, searched,
                dict(center_keys=True, center_values=centred), center_values=centred)
    record = _record(args, argv, model, blocks, schedule, searched, methods, rows, clock, started)
    write_json(args.out, record)
    note(f"wrote {args.out} ({record['cpu_time_s']['total'] / 60:.1f} CPU-minutes, "
         f"{record['wall_time_s'] / 60:.1f} minutes wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

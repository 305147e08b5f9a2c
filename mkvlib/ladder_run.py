"""``python -m mkvlib.ladder_run search|frontier``: the precision ladder's search and its frontier on held-out text.

``search`` runs Algorithm 1 over bytes (:func:`mkvlib.ladder.search`) on calibration text of the training
mixture (blocks at spread positions, optionally recall blocks) and writes the trajectory. ``frontier`` measures,
on the out-of-domain suite (mean KL over domains) with in-domain held-out text beside it, every way to spend
about 4, 2 and 1 bits per element: features only (MatryoshkaKV uniform and adaptive ranks), bits only (4- and
2-bit per-token quantization of the cache's own coordinates, every token quantized), the uniform composition
(a rank and one bit width) and the searched ladder; then passkey retrieval through the real
:class:`~mkvlib.ladder.LadderCache` for the ladder, with the bytes that cache held. Notebook 08 reads the result.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import torch

from .core.ranks import check_whole_tokens
from .runtime import pick

FRONTIER_BITS = (4.0, 2.0, 1.0)
PASSKEY_BITS = (4.0, 2.0)


def _hardware(model) -> dict:
    device = next(model.parameters()).device
    return {"device": str(device), "torch_threads": torch.get_num_threads(), "cpu": platform.machine(),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}


def _command() -> str:
    return "python -m mkvlib.ladder_run " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def calibration(model, tokenizer, tokens: int, seq_len: int, recall_span: int):
    """Calibration blocks of the training mixture and their spread position offsets."""
    from .corpora import DEFAULT_TRAINING_MIXTURE, check_not_heldout, mixture_blocks
    from .core.positions import block_offsets
    from .recall import recall_blocks

    check_not_heldout(DEFAULT_TRAINING_MIXTURE)
    blocks = mixture_blocks(tokenizer, DEFAULT_TRAINING_MIXTURE, seq_len, tokens, seed=0)
    if recall_span:
        blocks = recall_blocks(blocks, recall_span)
    return blocks, block_offsets("spread", len(blocks), seq_len, model)


def run_search(args) -> None:
    from . import ladder
    from .models import load_model

    model, tokenizer = load_model()
    blocks, offsets = calibration(model, tokenizer, args.tokens, args.seq_len, args.recall_span)
    traj = ladder.search(model, args.projections, blocks, args.segment, args.group, offsets=offsets,
                         batch_size=args.batch_size, progress=True)
    checks = {}
    for bits in (8.0,) + FRONTIER_BITS:
        lad = traj.at(bits)
        checks[str(bits)] = {"bits_per_element": lad.bits_per_element(),
                             "kl": ladder.calibration_kl(model, args.projections, lad, blocks, offsets)}
    traj.meta.update(calibration={"corpus": "training mixture", "tokens": int(blocks.numel()),
                                  "seq_len": args.seq_len, "recall_span": args.recall_span, "positions": "spread"},
                     exact_kl_at=checks, projections=args.projections)
    traj.save(args.out, command=_command(), hardware=_hardware(model),
              created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(f"{len(traj.steps)} steps to {traj.steps[-1][5]:.3f} bits per element; exact calibration KL: "
          + ", ".join(f"{k} bits {v['kl']:.4f}" for k, v in checks.items()))


def settings(model, traj, projections) -> list[dict]:
    """Every (label, family, projections, ladder or ranks) measured on the frontier."""
    from .core.geometry import KVGeometry
    from .ladder import Ladder, dtype_bits, identity_projections

    geom, full = KVGeometry.of(model), dtype_bits(model)
    d = geom.head_dim
    out = [{"family": "uncompressed", "label": "uncompressed", "ladder": Ladder.uniform(geom, full),
            "projections": identity_projections(model)}]
    for bits in FRONTIER_BITS:                                    # features only, stored in the model's dtype
        out.append({"family": "features only", "label": f"matryoshka uniform {bits / full:.4g}",
                    "ranks": round(bits / full * d), "projections": projections})
    out.append({"family": "features only", "label": "matryoshka adaptive 0.25 (its trajectory's floor)",
                "adaptive": 0.25, "projections": projections})
    for nbits in (4, 2):                                          # bits only: the cache's own coordinates
        lad = Ladder.uniform(geom, full, nbits, None, d, d, full // 8)       # scales in the model's dtype
        out.append({"family": "bits only", "label": f"{nbits}-bit, groups of {d}, every token",
                    "ladder": lad, "projections": identity_projections(model)})
    for features, nbits in ((48, 4), (24, 4), (16, 2), (8, 4)):      # the uniform composition
        lad = Ladder.uniform(geom, full, nbits, features)
        out.append({"family": "uniform composition", "label": f"{features} features at {nbits} bits",
                    "ladder": lad, "projections": projections})
    for bits in (5.0, 3.0) + FRONTIER_BITS:                      # 5 and 3: the bytes of the 4- and 2-bit quantizer
        out.append({"family": "searched ladder", "label": f"ladder {bits:g} bits", "ladder": traj.at(bits),
                    "projections": projections})
    return out


def setting_ranks(model, setting: dict, proj) -> torch.Tensor:
    """The (L, G, 2) ranks of a features-only frontier setting (uniform, or the shipped adaptive trajectory)."""
    from .core.geometry import KVGeometry
    from .core.ranks import ranks_for, resolve_ranks

    geom = KVGeometry.of(model)
    if "ranks" in setting:
        return resolve_ranks(ranks_for(model, proj, "uniform", setting["ranks"] / geom.head_dim), geom)
    return resolve_ranks(ranks_for(model, proj, "adaptive", setting["adaptive"]), geom)


@torch.no_grad()
def real_bits(model, setting: dict, proj, ids: torch.Tensor) -> float:
    """Bits per element the real cache of a frontier setting holds after storing ``ids`` (1, T)."""
    from .core.cache import CompressedCache, disable
    from .compat import cache_kwargs
    from .core.geometry import KVGeometry
    from .ladder import LadderCache

    geom = KVGeometry.of(model)
    if "ladder" in setting:
        cache = LadderCache(model, setting["projections"], setting["ladder"])
    else:
        cache = CompressedCache(model, proj, setting_ranks(model, setting, proj))
    model(ids, **cache_kwargs(cache))
    disable(model)
    return cache.stored_bytes() * 8 / (ids.numel() * geom.layers * geom.kv_heads * 2 * geom.head_dim)


@torch.no_grad()
def kl_table(model, factories: list, blocks_by_domain: dict, batch_size: int) -> list[dict]:
    """Per setting (a factory of an attached hook), {domain: (KL to the uncompressed model, top-1 agreement)}
    per token of each domain's blocks; the uncompressed log-probs are computed once per batch."""
    from .core.replay import logprobs

    device = next(model.parameters()).device
    sums = [{d: [0.0, 0.0, 0] for d in blocks_by_domain} for _ in factories]
    for domain, blocks in blocks_by_domain.items():
        for i in range(0, len(blocks), batch_size):
            ids = blocks[i:i + batch_size].to(device)
            base = logprobs(model(ids, use_cache=False).logits)
            probs = base.exp()
            for acc, factory in zip(sums, factories):
                with factory():
                    logp = logprobs(model(ids, use_cache=False).logits)
                acc[domain][0] += float((probs * (base - logp)).sum())
                acc[domain][1] += float((base.argmax(-1) == logp.argmax(-1)).sum())
                acc[domain][2] += base.shape[0]
    return [{d: (kl / n, top / n) for d, (kl, top, n) in acc.items()} for acc in sums]


def quanto_check(model, tokenizer, traj, proj, n: int = 4, length: int = 1024) -> list[dict]:
    """The comparison bench's ppl task (the last 128 tokens of held-out blocks scored after their prefix is
    stored): quanto's QuantizedCache as shipped (a full-precision residual window, so the scored tokens attend
    to each other unquantized), the same per-token quantizer applied to every token (a ladder on the standard
    basis in the real cache), and the searched ladder, all on the same items."""
    from .compare import Runner, get_method
    from .compare.layers import cache_runner
    from .compare.run import ppl_result
    from .compare.tasks import make_items
    from .core.geometry import KVGeometry
    from .ladder import Ladder, LadderCache, dtype_bits, identity_projections

    geom, full = KVGeometry.of(model), dtype_bits(model)
    items = make_items("ppl", tokenizer, length, n)
    base = [ppl_result(Runner(model), it, None)[1] for it in items]
    runs = []
    quant = get_method("quant")
    for setting in quant.settings(model):
        runs.append((f"quanto {setting.get('nbits')}-bit, residual {setting.get('residual')} (as shipped)",
                     quant.bytes(model, setting, length).per_token * 8 / (geom.layers * geom.kv_heads * 2 *
                                                                          geom.head_dim),
                     lambda setting=setting: quant.runner(model, setting)))
    eye = identity_projections(model)
    for nbits in (4, 2):
        lad = Ladder.uniform(geom, full, nbits, None, geom.head_dim, geom.head_dim, full // 8)
        runs.append((f"{nbits}-bit, groups of {geom.head_dim}, every token (no residual)", lad.bits_per_element(),
                     lambda lad=lad: cache_runner(model, lambda b, t: LadderCache(model, eye, lad))))
    for bits in PASSKEY_BITS:
        lad = traj.at(bits)
        runs.append((f"ladder {bits:g} bits", lad.bits_per_element(),
                     lambda lad=lad: cache_runner(model, lambda b, t: LadderCache(model, proj, lad))))
    out = []
    for label, bpe, make in runs:
        with make() as run:
            kls = [ppl_result(run, it, b)[0]["kl"] for it, b in zip(items, base)]
        out.append({"label": label, "bits_per_element": round(bpe, 4), "kl": sum(kls) / len(kls), "n": n,
                    "length": length})
        print(f"compare-bench ppl: {label:<50} {bpe:6.3f} bits  KL {out[-1]['kl']:.4f}", flush=True)
    return out


def frontier_blocks(tokenizer, args) -> dict:
    """The out-of-domain suite's blocks by domain, and unseen text of the training mixture as 'in-domain'."""
    from .corpora import DEFAULT_TRAINING_MIXTURE, mixture_blocks
    from .suite import IN_DOMAIN_SEED, IN_DOMAIN_SKIP, suite_blocks

    blocks = suite_blocks(tokenizer, args.tokens, args.seq_len)
    blocks["in-domain"] = mixture_blocks(tokenizer, DEFAULT_TRAINING_MIXTURE, args.seq_len, args.in_domain,
                                         seed=IN_DOMAIN_SEED, skip_tokens=IN_DOMAIN_SKIP)
    return blocks


def frontier_rows(model, chosen: list[dict], proj, blocks: dict, batch_size: int) -> list[dict]:
    """A row per frontier setting: bits per element (planned and held by the real cache), KL and top-1 agreement
    on the suite (mean over domains) and on the in-domain text."""
    from . import ladder
    from .core.compress import attach
    from .core.geometry import KVGeometry

    geom = KVGeometry.of(model)
    factories, sizes = [], []
    for s in chosen:
        if "ladder" in s:
            lad = s["ladder"]
            factories.append(lambda s=s, lad=lad: ladder.attach(model, s["projections"], lad))
            sizes.append((lad.bits_per_element(), lad.fraction()))
        else:
            ranks = setting_ranks(model, s, proj)
            factories.append(lambda ranks=ranks: attach(model, proj, ranks))
            fraction = float(ranks.sum()) / (geom.layers * geom.kv_heads * 2 * geom.head_dim)
            sizes.append((fraction * ladder.dtype_bits(model), fraction))
    table = kl_table(model, factories, blocks, batch_size)
    rows = []
    for s, (bpe, fraction), cells in zip(chosen, sizes, table):
        ood = {d: v for d, v in cells.items() if d != "in-domain"}
        real = real_bits(model, s, proj, blocks["in-domain"][:1, :64])
        rows.append({"family": s["family"], "label": s["label"], "bits_per_element": round(bpe, 4),
                     "measured_bits_per_element": round(real, 4), "fraction": round(fraction, 5),
                     "kl_ood": sum(v[0] for v in ood.values()) / len(ood), "kl_in_domain": cells["in-domain"][0],
                     "top1_ood": sum(v[1] for v in ood.values()) / len(ood),
                     "kl_by_domain": {d: v[0] for d, v in ood.items()}})
        print(f"{s['label']:<48} {bpe:6.3f} bits  KL ood {rows[-1]['kl_ood']:.4f}  in-domain "
              f"{rows[-1]['kl_in_domain']:.4f}", flush=True)
    return rows


def passkey_row(model, tokenizer, prompts: list, traj, proj, bits: float | None) -> dict:
    """Passkey answers through the real LadderCache at ``bits`` per element (None: uncompressed), with the bytes
    per token that cache held beside those planned."""
    from .core.geometry import KVGeometry
    from .ladder import LadderCache

    make = (lambda: None) if bits is None else (lambda: LadderCache(model, proj, traj.at(bits)))
    correct, held, tokens = passkey_count(model, tokenizer, prompts, make)
    row = {"bits": bits, "correct": correct, "n": len(prompts)}
    if bits is not None:
        geom = KVGeometry.of(model)
        row.update(measured_bytes_per_token=held / tokens, planned_bytes_per_token=traj.at(bits).token_bytes(),
                   measured_bits_per_element=held / tokens * 8 / (geom.layers * geom.kv_heads * 2 * geom.head_dim))
    return row


def passkey_rows(model, tokenizer, traj, proj, lengths, n: int) -> list[dict]:
    """:func:`passkey_row` uncompressed and at :data:`PASSKEY_BITS`, for ``n`` prompts at each length."""
    from .core.cache import disable
    from .retrieval import passkey_prompts

    rows = []
    for length in lengths:
        prompts = passkey_prompts(tokenizer, length, n)
        for bits in (None,) + PASSKEY_BITS:
            rows.append({"length": length, **passkey_row(model, tokenizer, prompts, traj, proj, bits)})
            print(f"passkey {length} tokens, {'uncompressed' if bits is None else f'ladder {bits:g} bits'}: "
                  f"{rows[-1]['correct']}/{len(prompts)}", flush=True)
        disable(model)
    return rows


def load_frontier(args):
    """(model, tokenizer, projections, ladder trajectory) of a frontier run, checked to belong together."""
    from .core.projections import resolve_projections
    from .ladder import LadderTrajectory
    from .models import load_model

    model, tokenizer = load_model()
    proj = resolve_projections(args.projections, model)
    traj = LadderTrajectory.load(args.trajectory)
    if traj.fingerprint != proj.fingerprint():
        raise ValueError(f"{args.trajectory} was searched for other projections than {args.projections!r}")
    return model, tokenizer, proj, traj


def run_frontier(args) -> None:
    from .core.io import write_json

    start = time.time()
    model, tokenizer, proj, traj = load_frontier(args)
    blocks = frontier_blocks(tokenizer, args)
    rows = frontier_rows(model, settings(model, traj, proj), proj, blocks, args.batch_size)
    check = quanto_check(model, tokenizer, traj, proj, args.compare_n)
    passkey = passkey_rows(model, tokenizer, traj, proj, args.passkey_lengths, args.passkey_n)
    write_json(args.out, {
        "model": getattr(model, "mkv_name", "?"), "projections": args.projections, "fingerprint": proj.fingerprint(),
        "trajectory": args.trajectory, "suite": {"tokens_per_domain": args.tokens, "seq_len": args.seq_len,
                                                 "domains": [k for k in blocks if k != "in-domain"],
                                                 "in_domain_tokens": args.in_domain},
        "layout": traj.layout, "rows": rows, "passkey": passkey, "compare_ppl": check, "command": _command(),
        "hardware": _hardware(model), "wall_time_s": round(time.time() - start, 1),
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})


def whole_settings(model, traj, proj, seq_len: int, first: int, recent: int) -> list[dict]:
    """The frontier with ``first`` + ``recent`` tokens kept whole (counted in the bytes of ``seq_len``-token blocks):
    bits only (the 4- and 2-bit quantizer, every token), the searched ladder alone, the ladder with whole tokens
    at the same bytes in all (``reason`` says why where the whole tokens alone take them), and the ladder with
    the whole tokens added on top of its bytes."""
    from .core.geometry import KVGeometry
    from .ladder import Ladder, bits_for_bytes, dtype_bits, identity_projections

    geom, full = KVGeometry.of(model), dtype_bits(model)
    d, whole = geom.head_dim, f"{first} first + {recent} recent tokens whole"
    out = [{"family": "bits only", "label": f"{n}-bit, groups of {d}, every token", "first": 0, "recent": 0,
            "ladder": Ladder.uniform(geom, full, n, None, d, d, full // 8), "projections": identity_projections(model)}
           for n in (4, 2)]
    for bits in PASSKEY_BITS:
        out.append({"family": "searched ladder", "label": f"ladder {bits:g} bits", "ladder": traj.at(bits),
                    "projections": proj, "first": 0, "recent": 0, "target_bits": bits})
        row = {"family": "ladder, tokens whole, equal bytes", "label": f"ladder {bits:g} bits in all, {whole}",
               "projections": proj, "first": first, "recent": recent, "target_bits": bits}
        try:
            row["ladder"] = traj.at(bits_for_bytes(bits, seq_len, first, recent, full))
        except ValueError as err:
            row["reason"] = str(err)
        out.append(row)
        out.append({"family": "ladder, tokens whole, added bytes", "label": f"ladder {bits:g} bits + {whole}",
                    "ladder": traj.at(bits), "projections": proj, "first": first, "recent": recent})
    return out


def whole_rows(model, settings: list, blocks: dict, batch_size: int, seq_len: int) -> list[dict]:
    """KL to the uncompressed model of every setting of :func:`whole_settings` on ``blocks`` (the held-out suite
    and 'in-domain'), with its bits per element, whole tokens counted (planned, and measured from the real cache
    on one block)."""
    from . import ladder

    run = [s for s in settings if "ladder" in s]
    factories = [lambda s=s: ladder.attach(model, s["projections"], s["ladder"], s["first"], s["recent"])
                 for s in run]
    table = dict(zip(map(id, run), kl_table(model, factories, blocks, batch_size)))
    rows = []
    for s in settings:
        row = {k: s[k] for k in ("family", "label", "first", "recent") if k in s}
        row.update(target_bits=s.get("target_bits"), seq_len=seq_len)
        if "ladder" not in s:
            rows.append(dict(row, reason=s["reason"]))
            continue
        cells = table[id(s)]
        ood = {d: v for d, v in cells.items() if d != "in-domain"}
        ids = blocks["in-domain"][:1, :seq_len]
        row.update(ladder_bits_per_element=round(s["ladder"].bits_per_element(), 4),
                   bits_per_element=round(ladder.stored_bits(s["ladder"], seq_len, s["first"], s["recent"]), 4),
                   measured_bits_per_element=round(whole_real_bits(model, s, ids), 4),
                   kl_ood=sum(v[0] for v in ood.values()) / len(ood), kl_in_domain=cells["in-domain"][0],
                   top1_ood=sum(v[1] for v in ood.values()) / len(ood), kl_by_domain={d: v[0] for d, v in ood.items()})
        rows.append(row)
        print(f"{row['label']:<60} {row['bits_per_element']:6.3f} bits  KL ood {row['kl_ood']:.4f}", flush=True)
    return rows


@torch.no_grad()
def whole_real_bits(model, setting: dict, ids: torch.Tensor) -> float:
    """Bits per element the real ladder cache of a setting (whole tokens included) holds after storing ``ids``."""
    from .compat import cache_kwargs
    from .core.cache import disable
    from .core.geometry import KVGeometry
    from .ladder import LadderCache

    geom = KVGeometry.of(model)
    cache = LadderCache(model, setting["projections"], setting["ladder"], setting["first"], setting["recent"])
    model(ids, **cache_kwargs(cache))
    disable(model)
    return cache.stored_bytes() * 8 / (ids.numel() * geom.layers * geom.kv_heads * 2 * geom.head_dim)


@torch.no_grad()
def passkey_count(model, tokenizer, prompts, make_cache) -> tuple[int, int, int]:
    """(correct answers, bytes the caches held, tokens they held) of greedy 8-token answers to ``prompts``;
    ``make_cache``: () -> a fresh cache, or None for the model's own."""
    from .compat import cache_kwargs
    from .retrieval import score_answer

    correct = held = tokens = 0
    for p in prompts:
        cache = make_cache()
        kwargs = {} if cache is None else cache_kwargs(cache)
        out = model.generate(input_ids=p.ids, attention_mask=torch.ones_like(p.ids), max_new_tokens=8,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.eos_token_id, **kwargs)
        correct += score_answer(tokenizer.decode(out[0, p.ids.shape[1]:], skip_special_tokens=True), p.key)
        if cache is not None:
            held, tokens = held + cache.stored_bytes(), tokens + cache.get_seq_length()
    return correct, held, tokens


def whole_passkey(model, tokenizer, traj, proj, args) -> list[dict]:
    """Passkey retrieval at each length: uncompressed, and the ladder with tokens kept whole at the same bytes in
    all as the ladder alone at 4 and 2 bits per element (whole tokens counted over the prompt's length), through
    the real cache, with the bytes it held."""
    from .core.cache import disable
    from .core.geometry import KVGeometry
    from .ladder import LadderCache, bits_for_bytes, dtype_bits
    from .retrieval import passkey_prompts

    geom, full, first, recent = KVGeometry.of(model), dtype_bits(model), args.keep_first, args.keep_recent
    rows = []
    for length in args.passkey_lengths:
        prompts = passkey_prompts(tokenizer, length, args.passkey_n)
        rows.append({"length": length, "bits": None, "n": len(prompts),
                     "correct": passkey_count(model, tokenizer, prompts, lambda: None)[0]})
        tokens = min(p.ids.shape[1] for p in prompts)
        for bits in PASSKEY_BITS:
            row = {"length": length, "bits": bits, "n": len(prompts), "first": first, "recent": recent}
            try:
                lad = traj.at(bits_for_bytes(bits, tokens, first, recent, full))
            except ValueError as err:
                rows.append(dict(row, reason=str(err)))
                continue
            correct, held, stored = passkey_count(model, tokenizer, prompts,
                                                  lambda lad=lad: LadderCache(model, proj, lad, first, recent))
            rows.append(dict(row, correct=correct, ladder_bits_per_element=round(lad.bits_per_element(), 4),
                             measured_bits_per_element=held / stored * 8 / (geom.layers * geom.kv_heads * 2 *
                                                                             geom.head_dim)))
            print(f"passkey {length} tokens, ladder {bits:g} bits in all with whole tokens: {correct}/{len(prompts)}",
                  flush=True)
        disable(model)
    return rows


def run_whole_frontier(args) -> None:
    """``frontier --keep-first F --keep-recent W``: :func:`whole_settings` on the held-out suite, then passkey."""
    from .core.io import write_json

    start = time.time()
    model, tokenizer, proj, traj = load_frontier(args)
    blocks = frontier_blocks(tokenizer, args)
    chosen = whole_settings(model, traj, proj, args.seq_len, args.keep_first, args.keep_recent)
    rows = whole_rows(model, chosen, blocks, args.batch_size, args.seq_len)
    passkey = whole_passkey(model, tokenizer, traj, proj, args)
    write_json(args.out, {
        "model": getattr(model, "mkv_name", "?"), "projections": args.projections, "fingerprint": proj.fingerprint(),
        "trajectory": args.trajectory, "keep_first": args.keep_first, "keep_recent": args.keep_recent,
        "suite": {"tokens_per_domain": args.tokens, "seq_len": args.seq_len,
                  "domains": [k for k in blocks if k != "in-domain"], "in_domain_tokens": args.in_domain},
        "layout": traj.layout, "rows": rows, "passkey": passkey, "command": _command(),
        "hardware": _hardware(model), "wall_time_s": round(time.time() - start, 1),
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mkvlib.ladder_run", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("search", help="Algorithm 1 over bytes: the ladder trajectory")
    s.add_argument("--tokens", type=int, default=pick(256, 2048))          # fast mode (MKV_FAST=1): CI-sized
    s.add_argument("--seq-len", type=int, default=pick(128, 512))
    s.add_argument("--recall-span", type=int, default=pick(32, 128))
    s.add_argument("--segment", type=int, default=8)
    s.add_argument("--group", type=int, default=32)
    f = sub.add_parser("frontier", help="quality per byte on the held-out suite, and passkey for the ladder")
    f.add_argument("--trajectory", required=True)
    f.add_argument("--tokens", type=int, default=pick(128, 1024), help="suite tokens per domain")
    f.add_argument("--seq-len", type=int, default=pick(128, 512))
    f.add_argument("--in-domain", type=int, default=pick(128, 1024), help="tokens of unseen training-mixture text")
    f.add_argument("--passkey-lengths", type=lambda t: [int(x) for x in t.split(",")],
                   default=pick([256], [1024, 4096]))
    f.add_argument("--passkey-n", type=int, default=pick(1, 8))
    f.add_argument("--compare-n", type=int, default=pick(1, 4), help="ppl items of the comparison bench's task")
    f.add_argument("--keep-first", type=int, default=0, help="first tokens kept whole (with --keep-recent: the "
                   "ladder with tokens kept whole at equal bytes instead of the whole frontier)")
    f.add_argument("--keep-recent", type=int, default=0, help="latest tokens kept whole, for each query")
    for q in (s, f):
        q.add_argument("--projections", default="trained")
        q.add_argument("--batch-size", type=int, default=2)
        q.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.what == "search":
        run_search(args)
    elif args.keep_first or args.keep_recent:
        check_whole_tokens(args.keep_first, args.keep_recent)
        run_whole_frontier(args)
    else:
        run_frontier(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

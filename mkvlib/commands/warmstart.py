"""mkv warmstart: the layer-wise warm start (mkvlib.training.layerwise): one uncompressed pass over training text,
then each layer's key/value rotations fitted to that layer's attention output at Matryoshka-sampled ranks."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..cli import add_options
from ..runtime import pick
from .common import (add_model_args, add_positions_arg, check_suffix, emit, hardware, invocation, parse_schedule,
                     utc_now)


def register(sub) -> None:
    p = sub.add_parser("warmstart", help="fit each layer's rotations to its own attention output (a warm start "
                       "for mkv train), from PCA or the query-aware basis")
    add_model_args(p, tokens_fast=2048, tokens_full=32768, seq_len=512, role="calibration",
                   corpus_help="training text: a name or a mixture such as books:2,peps (default: the training "
                   "mixture with MKV_DATA_DIR). Never held-out or evaluation text")
    p.add_argument("--init", default="pca", help="'pca' (shipped), 'query-aware' (fitted on the same text), "
                   "'trained' or a .safetensors file")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per layer (default 200; 4 with MKV_FAST=1)")
    p.add_argument("--lr", type=float, default=5e-3, help="AdamW learning rate, cosine decay (default 5e-3)")
    p.add_argument("--batch", type=int, default=2, help="captured sequences per step (default 2)")
    p.add_argument("--queries", type=int, default=128,
                   help="query positions drawn per sequence and step (default 128; 0: all)")
    p.add_argument("--rank-samples", type=int, default=1, help="rank draws averaged per step (default 1)")
    add_options(p, "schedule")
    p.add_argument("--layers", default=None, help="layers to fit, e.g. 0-9,12 (default: all); the others keep --init")
    add_options(p, "seed")
    add_positions_arg(p)
    p.add_argument("--capture", default=None, metavar="FILE",
                   help="keep the captured layer inputs in this .safetensors file (read back if it exists)")
    add_options(p, resume="continue an interrupted run: layers already in OUT.layers/ are read, not fitted again")
    p.add_argument("--out", required=True, help="output .safetensors file (a JSON record and a folder of finished "
                   "layers, OUT.layers/, are written beside it)")
    add_options(p, "json")
    p.set_defaults(func=run)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_args(args):
    """(training corpus, tokens, LayerwiseConfig) after refusing what cannot work, before the model loads."""
    from ..corpora import check_not_heldout, default_corpus, load_text
    from ..training.layerwise import finished_layers

    check_suffix(args.out, ".safetensors")
    if args.capture:
        check_suffix(args.capture, ".safetensors", "--capture")
    corpus = check_not_heldout(args.corpus or default_corpus("calibration"))
    config = layerwise_config(args)
    tokens = args.tokens or pick(*args._tokens)
    if tokens < args.seq_len:
        raise ValueError(f"--tokens ({tokens}) must be at least --seq-len ({args.seq_len})")
    folder = Path(args.out).with_suffix(".layers")
    if finished_layers(folder) and not args.resume:
        raise ValueError(f"{folder} holds finished layers {finished_layers(folder)} of an earlier run: pass --resume "
                         "to continue it, or remove the folder to start again")
    if args.init not in ("pca", "query-aware", "trained") and not Path(args.init).is_file():
        raise FileNotFoundError(f"--init {args.init!r}: not 'pca', 'query-aware', 'trained' or a projections file")
    load_text(corpus)   # a missing corpus fails here, before the model loads
    return corpus, tokens, config


def layerwise_config(args):
    """The LayerwiseConfig of ``mkv warmstart``'s options."""
    from ..training.layerwise import LayerwiseConfig

    return LayerwiseConfig(steps=args.steps or pick(4, 200), lr=args.lr, batch_size=args.batch,
                           queries=args.queries or None, rank_samples=args.rank_samples,
                           schedule=parse_schedule(args.schedule), seed=args.seed)


def read_capture(args, path: str, model, blocks, need: list[int], corpus: str, tokens: int, seq_len: int):
    """The layer inputs kept in ``path`` by an earlier run, checked to be of the same text and to hold ``need``."""
    from ..training.layerwise import Capture
    from ..training.trainer import blocks_fingerprint

    capture = Capture.load(path, model)
    if capture.info.get("data") is not None and capture.info["data"] != blocks_fingerprint(blocks):
        raise ValueError(f"{path} was captured over other text than --corpus {corpus} --tokens "
                         f"{tokens} --seq-len {seq_len}: remove it or give the same settings")
    positions = capture.info.get("positions", "start")
    if positions != args.positions:
        raise ValueError(f"{path} was captured with --positions {positions}, not {args.positions}: remove it or "
                         f"give --positions {positions}")
    lacking = [l for l in need if l not in capture.layers]
    if lacking:
        raise ValueError(f"{path} lacks layers {lacking}: remove it to capture again")
    _log(f"read the captured inputs of {len(capture.layers)} layers from {path}")
    return capture


def layer_inputs(args, model, blocks, need: list[int], corpus: str, tokens: int):
    """The captured inputs of layers ``need``: read from --capture when it exists, else captured (and kept in
    --capture when given)."""
    from ..training.layerwise import capture_layer_inputs

    if args.capture and Path(args.capture).is_file():
        return read_capture(args, args.capture, model, blocks, need, corpus, tokens, args.seq_len)
    _log(f"capturing layers {_span(need) if need else '(none)'} over {blocks.shape[0]} x {blocks.shape[1]} "
         f"tokens of {corpus}")
    capture = capture_layer_inputs(model, blocks, need, batch_size=args.batch_size, corpus=corpus,
                                   progress=_log if not args.json else None, positions=args.positions)
    if args.capture:
        capture.save(args.capture)
    return capture


def run(args) -> int:
    from ..corpora import token_blocks
    from ..core.geometry import KVGeometry
    from ..core.io import write_json
    from ..models import load_model
    from ..core.pca import query_aware_projections
    from ..core.projections import resolve_projections
    from ..training.layerwise import finished_layers, fit_layerwise, parse_layers

    t_start, cpu_start = time.perf_counter(), time.process_time()
    corpus, tokens, config = check_args(args)
    out = Path(args.out)
    folder = out.with_suffix(".layers")
    query_aware = args.init == "query-aware"
    model, tokenizer = load_model(args.model, device=args.device)
    geom = KVGeometry.of(model)
    layers = parse_layers(args.layers, geom.layers)
    init = None if query_aware else resolve_projections(args.init, model)
    blocks = token_blocks(tokenizer, corpus, args.seq_len, tokens, seed=args.seed)
    done = finished_layers(folder)
    capture = layer_inputs(args, model, blocks, list(range(geom.layers)) if query_aware else
                           [l for l in layers if l not in done], corpus, tokens)
    if query_aware:
        init = query_aware_projections(capture.stats(), model_name=model.mkv_name)
        init.meta["calibration"] = {"corpus": corpus, "tokens": int(blocks.numel()), "seq_len": args.seq_len,
                                    "positions": args.positions}
    try:
        proj = fit_layerwise(model, capture, init, config, layers, folder=folder, log=_log, init_name=args.init,
                             corpus=corpus)
    except KeyboardInterrupt:
        _log(f"mkv warmstart: interrupted; finished layers are in {folder}: rerun with --resume")
        return 130
    proj.save(out)
    record = warmstart_record(args, proj, model, corpus, blocks, layers, config, capture,
                              time.perf_counter() - t_start, time.process_time() - cpu_start)
    write_json(out.with_suffix(".json"), record)
    emit(warmstart_summary(record, len(layers)), args.json)
    return 0


def warmstart_record(args, proj, model, corpus: str, blocks, layers: list[int], config, capture, wall: float,
                     cpu: float) -> dict:
    """The JSON record written beside the projections: what was fitted, on what, how long it took."""
    lw = proj.meta["layerwise"]
    return {
        "out": str(Path(args.out)), "fingerprint": proj.fingerprint(), "model": model.mkv_name,
        "command": invocation(), "init": args.init, "init_fingerprint": lw["init_fingerprint"], "corpus": corpus,
        "tokens": int(blocks.numel()), "seq_len": args.seq_len, "positions": args.positions, "layers": layers,
        "resumed_layers": lw["resumed_layers"], "steps_per_layer": config.steps,
        "config": config.to_dict(), "capture_wall_time_s": capture.info.get("wall_time_s"),
        "fit_wall_time_s": lw["fit_wall_time_s"],
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(cpu, 1),   # this process, all threads (model load included)
        "hardware": hardware(next(model.parameters()).device),
        "objective_at_50": lw["objective_at_50"],
        "finished": utc_now(),
    }


def warmstart_summary(record: dict, layers_fitted: int) -> dict:
    """The printed summary: the record's headline fields and the mean objective at 50% before and after."""
    summary = {k: record[k] for k in ("out", "fingerprint", "init", "corpus", "tokens", "steps_per_layer",
                                      "capture_wall_time_s", "fit_wall_time_s", "wall_time_s", "cpu_time_s")}
    summary["layers_fitted"] = layers_fitted
    before = [v[0] for v in record["objective_at_50"].values()]
    after = [v[1] for v in record["objective_at_50"].values()]
    if before:
        summary["mean_objective_at_50_before"] = sum(before) / len(before)
        summary["mean_objective_at_50_after"] = sum(after) / len(after)
    return summary


def _span(layers) -> str:
    if len(layers) > 1 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))

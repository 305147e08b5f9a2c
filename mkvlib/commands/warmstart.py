"""mkv warmstart: the layer-wise warm start (mkvlib.training.layerwise): one uncompressed pass over training text,
then each layer's key/value rotations fitted to that layer's attention output at Matryoshka-sampled ranks."""
from __future__ import annotations

import platform
import shlex
import sys
import time
from pathlib import Path

from ..runtime import pick
from .common import add_schedule_arg, emit, parse_schedule


def register(sub) -> None:
    p = sub.add_parser("warmstart", help="fit each layer's rotations to its own attention output (a warm start "
                       "for mkv train), from PCA or the query-aware basis")
    p.add_argument("--model", default=None, help="Hugging Face id or folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--init", default="pca", help="'pca' (shipped), 'query-aware' (fitted on the same text), "
                   "'trained' or a .safetensors file")
    p.add_argument("--corpus", default=None, help="training text: a name or a mixture such as books:2,peps "
                   "(default: the training mixture with MKV_DATA_DIR). Never held-out or evaluation text")
    p.add_argument("--tokens", type=int, default=None, help="tokens captured (default 32768; 2048 with MKV_FAST=1)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per captured sequence (default 512)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per layer (default 200; 4 with MKV_FAST=1)")
    p.add_argument("--lr", type=float, default=5e-3, help="AdamW learning rate, cosine decay (default 5e-3)")
    p.add_argument("--batch", type=int, default=2, help="captured sequences per step (default 2)")
    p.add_argument("--queries", type=int, default=128,
                   help="query positions drawn per sequence and step (default 128; 0: all)")
    p.add_argument("--rank-samples", type=int, default=1, help="rank draws averaged per step (default 1)")
    add_schedule_arg(p)
    p.add_argument("--layers", default=None, help="layers to fit, e.g. 0-9,12 (default: all); the others keep --init")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--capture", default=None, metavar="FILE",
                   help="keep the captured layer inputs in this .safetensors file (read back if it exists)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: layers already in OUT.layers/ are read, not fitted again")
    p.add_argument("--out", required=True, help="output .safetensors file (a JSON record and a folder of finished "
                   "layers, OUT.layers/, are written beside it)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per forward pass of the capture")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args) -> int:
    import torch

    from ..corpora import default_corpus, load_text, token_blocks
    from ..geometry import KVGeometry
    from ..io import write_json
    from ..models import load_model
    from ..pca import query_aware_projections
    from ..projections import resolve_projections
    from ..training.layerwise import (Capture, LayerwiseConfig, capture_layer_inputs, finished_layers,
                                      fit_layerwise, parse_layers)
    from .train import check_training_corpus

    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, not {args.out!r}")
    if args.capture and not args.capture.endswith(".safetensors"):
        raise ValueError(f"--capture must end in .safetensors, not {args.capture!r}")
    corpus = check_training_corpus(args.corpus or default_corpus("calibration"))
    config = LayerwiseConfig(steps=args.steps or pick(4, 200), lr=args.lr, batch_size=args.batch,
                             queries=args.queries or None, rank_samples=args.rank_samples,
                             schedule=parse_schedule(args.schedule), seed=args.seed)
    tokens = args.tokens or pick(2048, 32768)
    if tokens < args.seq_len:
        raise ValueError(f"--tokens ({tokens}) must be at least --seq-len ({args.seq_len})")
    folder = out.with_suffix(".layers")
    done = finished_layers(folder)
    if done and not args.resume:
        raise ValueError(f"{folder} holds finished layers {done} of an earlier run: pass --resume to continue it, "
                         "or remove the folder to start again")
    query_aware = args.init == "query-aware"
    if not query_aware and args.init not in ("pca", "trained") and not Path(args.init).is_file():
        raise FileNotFoundError(f"--init {args.init!r}: not 'pca', 'query-aware', 'trained' or a projections file")
    load_text(corpus)   # a missing corpus fails here, before the model loads

    model, tokenizer = load_model(args.model, device=args.device)
    geom = KVGeometry.of(model)
    layers = parse_layers(args.layers, geom.layers)
    init = None if query_aware else resolve_projections(args.init, model)
    blocks = token_blocks(tokenizer, corpus, args.seq_len, tokens, seed=args.seed)
    todo = [l for l in layers if l not in done]
    need = list(range(geom.layers)) if query_aware else todo
    capture = None
    if args.capture and Path(args.capture).is_file():
        capture = Capture.load(args.capture, model)
        if capture.info.get("data") is not None:
            from ..training.trainer import blocks_fingerprint

            if capture.info["data"] != blocks_fingerprint(blocks):
                raise ValueError(f"{args.capture} was captured over other text than --corpus {corpus} --tokens "
                                 f"{tokens} --seq-len {args.seq_len}: remove it or give the same settings")
        lacking = [l for l in need if l not in capture.layers]
        if lacking:
            raise ValueError(f"{args.capture} lacks layers {lacking}: remove it to capture again")
        _log(f"read the captured inputs of {len(capture.layers)} layers from {args.capture}")
    else:
        _log(f"capturing layers {_span(need) if need else '(none)'} over {blocks.shape[0]} x {blocks.shape[1]} "
             f"tokens of {corpus}")
        capture = capture_layer_inputs(model, blocks, need, batch_size=args.batch_size, corpus=corpus,
                                       progress=_log if not args.json else None)
        if args.capture:
            capture.save(args.capture)
    if query_aware:
        init = query_aware_projections(capture.stats(), model_name=model.mkv_name)
        init.meta["calibration"] = {"corpus": corpus, "tokens": int(blocks.numel()), "seq_len": args.seq_len}
    try:
        proj = fit_layerwise(model, capture, init, config, layers, folder=folder, log=_log, init_name=args.init,
                             corpus=corpus)
    except KeyboardInterrupt:
        _log(f"mkv warmstart: interrupted; finished layers are in {folder}: rerun with --resume")
        return 130
    proj.save(out)
    record_lw = proj.meta["layerwise"]
    command = "mkv " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if Path(sys.argv[0]).name in (
        "mkv", "__main__.py") else None
    record = {
        "out": str(out), "fingerprint": proj.fingerprint(), "model": model.mkv_name, "command": command,
        "init": args.init, "init_fingerprint": record_lw["init_fingerprint"], "corpus": corpus,
        "tokens": int(blocks.numel()), "seq_len": args.seq_len, "layers": layers,
        "resumed_layers": record_lw["resumed_layers"], "steps_per_layer": config.steps,
        "config": config.to_dict(), "capture_wall_time_s": capture.info.get("wall_time_s"),
        "fit_wall_time_s": record_lw["fit_wall_time_s"],
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "cpu_time_s": round(time.process_time() - cpu_start, 1),   # this process, all threads (model load included)
        "hardware": {"device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine(), "platform": platform.platform(),
                     "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "objective_at_50": record_lw["objective_at_50"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out.with_suffix(".json"), record)
    before = [v[0] for v in record_lw["objective_at_50"].values()]
    after = [v[1] for v in record_lw["objective_at_50"].values()]
    summary = {k: record[k] for k in ("out", "fingerprint", "init", "corpus", "tokens", "steps_per_layer",
                                      "capture_wall_time_s", "fit_wall_time_s", "wall_time_s", "cpu_time_s")}
    summary["layers_fitted"] = len(layers)
    if before:
        summary["mean_objective_at_50_before"] = sum(before) / len(before)
        summary["mean_objective_at_50_after"] = sum(after) / len(after)
    emit(summary, args.json)
    return 0


def _span(layers) -> str:
    if len(layers) > 1 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))

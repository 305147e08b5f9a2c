"""mkv fit-pca: KV statistics over calibration text, then PCA projections saved to a file."""
from __future__ import annotations

from .common import add_model_args, emit, setup


def register(sub) -> None:
    p = sub.add_parser("fit-pca", help="fit PCA projections of post-RoPE keys and values")
    add_model_args(p, tokens_fast=4096, tokens_full=65536, role="calibration")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--center-values", action="store_true", help="centre values (mean added back after attention)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pca import fit_pca
    from ..stats import collect_kv_stats

    if not args.out.endswith(".safetensors"):
        raise ValueError(f"--out must end in .safetensors, not {args.out!r}")
    if args.corpus:
        from ..corpora import check_not_heldout

        check_not_heldout(args.corpus, role="calibration")
    model, _, blocks = setup(args)
    stats = collect_kv_stats(model, blocks, args.batch_size, model_name=model.mkv_name, corpus=args.corpus)
    proj = fit_pca(stats, center_values=args.center_values, model_name=model.mkv_name)
    proj.save(args.out)
    emit({"out": args.out, "model": model.mkv_name, "corpus": args.corpus, "tokens": int(blocks.numel()),
          "fingerprint": proj.fingerprint(), "orthogonality_error": proj.orthogonality_error()}, args.json)
    return 0

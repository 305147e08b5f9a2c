"""mkv fit-pca: KV statistics over calibration text, then PCA (or query-aware) projections saved to a file."""
from __future__ import annotations

from ..cli import add_options
from .common import add_model_args, add_positions_arg, check_suffix, emit, setup


def register(sub) -> None:
    from ..core.pca import KEY_BASES

    p = sub.add_parser("fit-pca", help="fit PCA projections of post-RoPE keys and values")
    add_model_args(p, tokens_fast=4096, tokens_full=65536, role="calibration")
    p.add_argument("--out", required=True, help="output .safetensors file")
    add_options(p, center_values="centre values (mean added back after attention)",
                query_aware="key bases that keep q.k scores given query and key second moments (values stay PCA)")
    p.add_argument("--key-basis", choices=KEY_BASES, default="query",
                   help="with --query-aware: which closed-form basis (default 'query'; see mkvlib.core.pca)")
    add_options(p, "json")
    add_positions_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.pca import fit_pca, query_aware_projections, score_error
    from ..core.stats import collect_kv_stats

    check_suffix(args.out, ".safetensors")
    if args.corpus:   # calibration text: never held-out or evaluation text
        from ..corpora import check_not_heldout

        check_not_heldout(args.corpus, role="calibration")
    model, _, blocks = setup(args)
    stats = collect_kv_stats(model, blocks, args.batch_size, queries=args.query_aware, model_name=model.mkv_name,
                             corpus=args.corpus, positions=args.positions)
    proj = fit_pca(stats, center_values=args.center_values, model_name=model.mkv_name)
    result = {}
    if args.query_aware:
        pca = proj
        proj = query_aware_projections(stats, args.key_basis, model_name=model.mkv_name,
                                       center_values=args.center_values)
        half = stats.geometry.head_dim // 2
        result = {"key_basis": args.key_basis,
                  "score_error_vs_pca@50%": float(score_error(stats, proj.keys, half).sum()
                                                  / score_error(stats, pca.keys, half).sum())}
    proj.save(args.out)
    emit({"out": args.out, "model": model.mkv_name, "kind": proj.meta["kind"], "corpus": args.corpus,
          "tokens": int(blocks.numel()), "fingerprint": proj.fingerprint(),
          "orthogonality_error": proj.orthogonality_error(), **result}, args.json)
    return 0

"""Retrieval heads: which KV heads carry a key from deep in the context to the answer, so that the rank search can
leave them whole (``mkv search --protect-heads FILE --protect-top N``). Introduced in notebook 03.

The score of a query head is the attention it pays, while the uncompressed model writes the key teacher-forced,
to the key's own tokens in the context: for each position that predicts a key token, the softmax mass on the
needle's key tokens, averaged over those positions and the prompts. A KV head's score is the mean over the query
heads that share it. Heads that copy the key score near 1; heads that look elsewhere near 0.

The prompts are calibration prompts: the standard passkey with another seed than the reported ones (the
evaluation uses seed 0, i.e. prompt seeds 0..n-1; the default here is seed 1, prompt seeds 1000..), and its
filler is one repeated sentence, so no held-out text is read.

``python -m mkvlib.retrieval_heads --lengths 8192 --n 4 --out FILE`` writes the scores and the KV heads ranked.
"""
from __future__ import annotations

import torch

from .core.attention import install
from .core.geometry import K, V, KVGeometry
from .retrieval import PasskeyPrompt, answer_ids, passkey_prompts

__all__ = ["key_positions", "key_attention", "head_scores", "protected_entries", "ranked_heads"]

CALIBRATION_SEED = 1   # prompt seeds 1000..: never the evaluation's (seed 0 -> prompt seeds 0..n-1)


def key_positions(tokenizer, prompt: PasskeyPrompt) -> list[int]:
    """Token positions in ``prompt.ids`` of the key's characters where it sits in the context (its only
    occurrence in the prompt's text). A ValueError when the key is not found or the tokenizer gives no offsets."""
    start = prompt.text.find(prompt.key)
    if start < 0 or prompt.text.find(prompt.key, start + 1) >= 0:
        raise ValueError(f"the key {prompt.key} must occur exactly once in the prompt's text")
    end = start + len(prompt.key)
    try:
        offsets = tokenizer(prompt.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, TypeError, KeyError) as err:
        raise ValueError("retrieval-head scores need a fast tokenizer with character offsets") from err
    found = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    if not found or found[-1] >= prompt.ids.shape[1]:
        raise ValueError(f"the key {prompt.key} was not found among the prompt's tokens")
    return found


class _KeyAttention:
    """A (query, key, value) hook that adds, per layer and query head, the attention mass from ``rows`` onto the
    ``cols`` (the key's tokens in the context); it leaves query, key and value unchanged."""

    def __init__(self, geom: KVGeometry, rows: torch.Tensor, cols: torch.Tensor):
        self.rows, self.cols = rows, cols
        self.mass = torch.zeros(geom.layers, geom.heads, dtype=torch.float64)

    def __call__(self, module, query, key, value):
        group = query.shape[1] // key.shape[1]
        keys = key.repeat_interleave(group, dim=1)[0].float()                      # (H, S, d)
        q = query[0, :, self.rows].float()                                          # (H, R, d)
        scale = getattr(module, "scaling", None) or q.shape[-1] ** -0.5
        logits = q @ keys.transpose(1, 2) * scale                                   # (H, R, S)
        future = torch.arange(keys.shape[1], device=q.device)[None, :] > self.rows[:, None].to(q.device)
        weights = logits.masked_fill(future, float("-inf")).softmax(-1)
        self.mass[module.layer_idx] += weights[:, :, self.cols].sum(-1).mean(-1).double().cpu()
        return query, key, value


@torch.no_grad()
def key_attention(model, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(L, H) float64: per layer and query head, the causal attention mass that the positions ``rows`` of ``ids``
    (1, T) pay to the positions ``cols``, averaged over the rows, in one forward pass."""
    hook = _KeyAttention(KVGeometry.of(model), rows, cols)
    with install(model, hook=hook):
        model(ids.to(next(model.parameters()).device), use_cache=False)
    return hook.mass


def head_scores(model, tokenizer, prompts: list[PasskeyPrompt]) -> torch.Tensor:
    """(L, G) float: each KV head's mean attention mass on the key's tokens while the key is written (see the
    module's docstring), averaged over ``prompts``. The model is left as it was."""
    geom = KVGeometry.of(model)
    total = torch.zeros(geom.layers, geom.heads, dtype=torch.float64)
    for p in prompts:
        ans = answer_ids(tokenizer, p)
        n = p.ids.shape[1]
        total += key_attention(model, torch.cat([p.ids, ans[None]], dim=1), torch.arange(n - 1, n - 1 + len(ans)),
                               torch.tensor(key_positions(tokenizer, p)))
    per_query = total / max(len(prompts), 1)
    return per_query.view(geom.layers, geom.kv_heads, geom.heads // geom.kv_heads).mean(-1).float()


def ranked_heads(scores: torch.Tensor) -> list[dict]:
    """[{layer, kv_head, score}] of every KV head, highest score first (ties: lowest layer, then head)."""
    cells = [(float(scores[l, g]), l, g) for l in range(scores.shape[0]) for g in range(scores.shape[1])]
    return [{"layer": l, "kv_head": g, "score": round(s, 6)}
            for s, l, g in sorted(cells, key=lambda c: (-c[0], c[1], c[2]))]


def protected_entries(heads: list[dict], top: int) -> tuple[tuple[int, int, int], ...]:
    """The (layer, KV head, kind) entries, keys and values, of the ``top`` first of ``heads`` (ranked as by
    :func:`ranked_heads`): what the rank search leaves at full rank."""
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= len(heads):
        raise ValueError(f"the number of heads to protect must be an integer from 0 to {len(heads)}, not {top!r}")
    return tuple((int(h["layer"]), int(h["kv_head"]), kind) for h in heads[:top] for kind in (K, V))


def load_protected(path: str, top: int) -> tuple[tuple[int, int, int], ...]:
    """:func:`protected_entries` of the ``top`` first heads of a file written by this module's command."""
    import json

    from .core.io import existing_file

    where = existing_file(path, "retrieval-heads file", "; make one with python -m mkvlib.retrieval_heads --out FILE")
    try:
        data = json.loads(where.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err}); make it again with python -m mkvlib.retrieval_heads") from None
    if not isinstance(data, dict) or not isinstance(data.get("heads"), list):
        raise ValueError(f"{path} is not a retrieval-heads file (no 'heads' list); make one with "
                         "python -m mkvlib.retrieval_heads --out FILE")
    return protected_entries(data["heads"], top)


def main(argv=None) -> int:
    """``python -m mkvlib.retrieval_heads --lengths 8192 --n 4 --out FILE``: the KV heads ranked by the attention
    they pay to a passkey while the uncompressed model answers it."""
    import argparse
    import sys
    import time

    from .commands.common import hardware
    from .core.io import write_json
    from .models import load_model, model_identity

    p = argparse.ArgumentParser(prog="python -m mkvlib.retrieval_heads", description=main.__doc__.split(": ", 1)[1])
    p.add_argument("--lengths", default="8192", help="prompt lengths in tokens, comma-separated")
    p.add_argument("--n", type=int, default=4, help="prompts per length")
    p.add_argument("--seed", type=int, default=CALIBRATION_SEED,
                   help=f"prompt seed (default {CALIBRATION_SEED}; 0 makes the evaluation's prompts: refused)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="output .json")
    args = p.parse_args(argv)
    if args.seed == 0:
        raise SystemExit("--seed 0 makes the prompts the retrieval evaluation reports; pick another seed")
    if args.n < 1:
        raise SystemExit("--n must be at least 1")
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model()
    start = time.time()
    prompts = [q for n in lengths for q in passkey_prompts(tokenizer, n, args.n, args.seed)]
    scores = head_scores(model, tokenizer, prompts)
    write_json(args.out, {
        "model": model_identity(model), "lengths": lengths, "n": args.n, "seed": args.seed,
        "scores": [[round(float(x), 6) for x in row] for row in scores], "heads": ranked_heads(scores),
        "command": "python -m mkvlib.retrieval_heads " + " ".join(sys.argv[1:] if argv is None else argv),
        "wall_time_s": round(time.time() - start), "hardware": hardware(model.device)})
    for h in ranked_heads(scores)[:12]:
        print(f"layer {h['layer']:2d}  KV head {h['kv_head']}  {h['score']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

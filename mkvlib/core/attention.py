"""The one hook into transformers: an attention function registered in ``AttentionInterface``.

Every causal LM that dispatches attention through the registry (Llama, Mistral, Qwen2, Gemma3, SmolLM2, ...)
calls :func:`mkv_attention` once the model's implementation is switched to ``"mkv"``. It receives each layer's
query (B, H, T, d) and the post-RoPE key and value (B, G, S, d), *before* any repeat_kv expansion. Hooks
installed on an attention module may observe or transform them (KV statistics, simulated compression), and an
``attend`` override may replace the attention computation itself (the real compressed cache). With no hooks
it is exactly SDPA. Introduced in notebook 01.
"""
from __future__ import annotations

from typing import Callable

from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "mkv"
QKVHook = Callable  # (module, query, key, value) -> (query, key, value)


def mkv_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention with the module's hooks applied; shapes (B, H, T, d) for query, (B, G, S, d) for key/value."""
    for hook in module.__dict__.get("_mkv_hooks", ()):
        query, key, value = hook(module, query, key, value)
    for mask in module.__dict__.get("_mkv_masks", ()):
        attention_mask = mask(module, query, key, attention_mask)
    attend = module.__dict__.get("_mkv_attend")
    if attend is not None:
        return attend(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_NAME, mkv_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)  # the same 4-D/causal masks SDPA gets


def attention_modules(model) -> list[nn.Module]:
    """The model's self-attention modules, ordered by ``layer_idx``."""
    found = {}
    for module in model.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "k_proj") and hasattr(module, "v_proj"):
            found.setdefault(module.layer_idx, module)
    if not found:
        raise TypeError(f"{type(model).__name__} has no attention modules with k_proj/v_proj and a layer_idx: "
                        "only models using transformers' standard attention path are supported")
    return [found[i] for i in sorted(found)]


def _set_implementation(model, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except (AttributeError, ValueError):
        model.config._attn_implementation = name
    for module in model.modules():  # sub-models with their own config objects
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", name) != name:
            config._attn_implementation = name


class HookHandle:
    """Removes what :func:`install` added; the model is back exactly as before once every handle is removed."""

    def __init__(self, model, hook=None, attend=None, mask=None):
        self.model, self.hook, self.attend, self.mask, self.removed = model, hook, attend, mask, False

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        for module in attention_modules(self.model):
            hooks = module.__dict__.get("_mkv_hooks", [])
            if self.hook is not None and self.hook in hooks:
                hooks.remove(self.hook)
            if self.attend is not None and module.__dict__.get("_mkv_attend") is self.attend:
                del module.__dict__["_mkv_attend"]
            masks = module.__dict__.get("_mkv_masks", [])
            if self.mask is not None and self.mask in masks:
                masks.remove(self.mask)
            for name, left in (("_mkv_hooks", hooks), ("_mkv_masks", masks)):
                if not left and name in module.__dict__:
                    del module.__dict__[name]
        users = self.model.__dict__.get("_mkv_users", 0) - 1
        self.model.__dict__["_mkv_users"] = users
        if users == 0:
            _set_implementation(self.model, self.model.__dict__.pop("_mkv_previous_attn"))
            del self.model.__dict__["_mkv_users"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def install(model, hook: QKVHook | None = None, attend=None, mask=None) -> HookHandle:
    """Install a (query, key, value) hook, an attention override and/or a mask rewrite (``mask(module, query, key,
    attention_mask)`` -> the mask attention gets, after the hooks) on every attention module.

    Hooks are kept in plain attributes (not submodules), so the model's parameters and state dict never change.
    """
    modules = attention_modules(model)
    if attend is not None and any("_mkv_attend" in m.__dict__ for m in modules):
        raise RuntimeError("another attention override (e.g. a compressed cache) is already installed; remove it first")
    if "_mkv_users" not in model.__dict__:
        model.__dict__["_mkv_previous_attn"] = model.config._attn_implementation
        model.__dict__["_mkv_users"] = 0
        _set_implementation(model, ATTN_NAME)
    model.__dict__["_mkv_users"] += 1
    for module in modules:
        if hook is not None:
            module.__dict__.setdefault("_mkv_hooks", []).append(hook)
        if attend is not None:
            module.__dict__["_mkv_attend"] = attend
        if mask is not None:
            module.__dict__.setdefault("_mkv_masks", []).append(mask)
    return HookHandle(model, hook, attend, mask)

"""Re-run a model from the input of any decoder layer: the activations of the layers a candidate does not touch
are computed once and reused.

One ordinary forward pass records, for every decoder layer, the hidden states entering it (B, T, D) and the
keyword arguments the model passed it (masks, position embeddings), and the input of its attention module.
:meth:`LayerReplay.logprobs_from` then runs only layers l..L-1 plus the final norm and LM head, which gives the
same log-probs as a full forward pass whenever layers < l compute what they computed during the capture.
Introduced in notebook 03.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention_modules


def decoder_layers(model) -> nn.ModuleList:
    """The model's decoder layers, in order (``model.get_decoder().layers``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) != len(attention_modules(model)):
        raise TypeError(f"{type(model).__name__} does not expose its decoder layers as model.get_decoder().layers; "
                        "the rank search needs a standard transformers causal LM")
    return layers


def _first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


class LayerReplay:
    """Captured layer inputs of one batch of token blocks ``ids`` (B, T), and partial re-runs from any layer."""

    def __init__(self, model):
        self.model = model
        self.layers = decoder_layers(model)
        self.attentions = attention_modules(model)
        decoder = model.get_decoder()
        self.norm = decoder.norm
        self.head = model.get_output_embeddings()
        self.softcap = getattr(getattr(model.config, "text_config", None) or model.config,
                               "final_logit_softcapping", None)
        self.inputs: list[torch.Tensor] = []
        self.kwargs: list[dict] = []
        self.attn_kwargs: list[dict] = []

    @torch.no_grad()
    def capture(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the model once on ``ids`` (B, T), recording every layer's input; return log-probs (B*(T-1), V)."""
        L = len(self.layers)
        inputs, kwargs, attn_kwargs = [None] * L, [None] * L, [None] * L

        def layer_hook(i):
            def hook(module, args, kw):
                kw = dict(kw)
                hidden = kw.pop("hidden_states") if "hidden_states" in kw else args[0]
                if len(args) > 1:
                    raise TypeError("decoder layers called with several positional arguments are not supported")
                inputs[i], kwargs[i] = hidden, kw
            return hook

        def attn_hook(i):
            def hook(module, args, kw):
                kw = dict(kw)
                if args:
                    kw["hidden_states"] = args[0]
                attn_kwargs[i] = kw
            return hook

        handles = [m.register_forward_pre_hook(layer_hook(i), with_kwargs=True) for i, m in enumerate(self.layers)]
        handles += [m.register_forward_pre_hook(attn_hook(i), with_kwargs=True) for i, m in enumerate(self.attentions)]
        try:
            logits = self.model(ids, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
        self.inputs, self.kwargs, self.attn_kwargs = inputs, kwargs, attn_kwargs
        return logprobs(logits)

    @torch.no_grad()
    def logprobs_from(self, layer: int) -> torch.Tensor:
        """Log-probs (B*(T-1), V) from re-running layers ``layer``..L-1 on the captured input of ``layer``."""
        if not self.inputs:
            raise RuntimeError("call capture(ids) before logprobs_from(layer)")
        h = self.inputs[layer]
        for i in range(layer, len(self.layers)):
            h = _first_tensor(self.layers[i](h, **self.kwargs[i]))
        logits = self.head(self.norm(h))
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logprobs(logits)

    @torch.no_grad()
    def attention_output(self, layer: int) -> torch.Tensor:
        """The attention module's output (B, T, D) of ``layer`` on its captured input (hooks apply as installed)."""
        return _first_tensor(self.attentions[layer](**self.attn_kwargs[layer]))


def logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Next-token log-probs (B*(T-1), V) in float32 for every position but the last, from logits (B, T, V)."""
    return F.log_softmax(logits[:, :-1].float(), dim=-1).flatten(0, 1)

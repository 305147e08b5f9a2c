"""A tiny random model with a byte-level tokenizer: the full run's CPU rehearsal needs a model that loads at once
and a tokenizer that turns any text (corpora, lm-eval prompts) into ids without unknown tokens."""
from __future__ import annotations

BYTE_VOCAB = 256 + 1          # the 256 bytes (GPT-2's printable byte alphabet) and an end-of-text token


def byte_tokenizer():
    """A fast tokenizer with one token per UTF-8 byte and ``<eos>`` (also the pad token); decodes exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>",
                                   model_max_length=512)


def tiny_pair(dtype=None, seed: int = 0):
    """(model, tokenizer): a 2-layer Llama (4 query heads, 2 KV heads of 16) over the byte vocabulary, in
    ``dtype`` (default float32) on the CPU, named like :func:`mkvlib.models.tiny_model`'s models."""
    import torch

    from ..models import tiny_model

    model = tiny_model("llama", seed=seed, heads=4, kv_heads=2, layers=2, vocab=BYTE_VOCAB)
    model.to(dtype or torch.float32)
    model.config.eos_token_id = model.config.pad_token_id = BYTE_VOCAB - 1
    return model, byte_tokenizer()

"""Model-sampled training text: reproducible from its settings, cached once, never half-written."""
import json

import pytest

from mkvlib import sampled
from mkvlib.models import tiny_model
from mkvlib.sampled import SampleSettings, sampled_corpus, sampled_path

WORDS = [w.strip(",.:;!?") for p in sampled.PROMPTS for w in p.split()] + [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[EOS]", *dict.fromkeys(WORDS), ":", "?", ".", ",", "1"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")


@pytest.fixture
def model(tokenizer):
    return tiny_model("llama", heads=4, kv_heads=2, vocab=len(tokenizer))


SMALL = SampleSettings(tokens=64, length=16, batch=2, seed=3)


def test_text_is_reproducible_from_its_settings(model, tokenizer, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MKV_CACHE_DIR", str(tmp_path / "a"))
    first = sampled_corpus(model, tokenizer, SMALL, progress=False).read_text()
    monkeypatch.setenv("MKV_CACHE_DIR", str(tmp_path / "b"))
    again = sampled_corpus(model, tokenizer, SMALL, progress=False)
    assert again.read_text() == first
    record = json.loads(again.with_suffix(".json").read_text())
    assert record["settings"]["seed"] == 3 and record["documents"] == 4
    other = sampled_corpus(model, tokenizer, SampleSettings(tokens=64, length=16, batch=2, seed=4), progress=False)
    assert other != again and other.read_text() != first


def test_cached_text_is_not_sampled_again(model, tokenizer, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MKV_CACHE_DIR", str(tmp_path))
    path = sampled_corpus(model, tokenizer, SMALL, progress=False)

    def boom(*a, **k):
        raise AssertionError("sampled twice")

    monkeypatch.setattr(sampled, "sample_documents", boom)
    assert sampled_corpus(model, tokenizer, SMALL, progress=False) == path


def test_an_interrupted_sampling_leaves_nothing(model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("MKV_CACHE_DIR", str(tmp_path))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sampled, "sample_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sampled_corpus(model, tokenizer, SMALL, progress=False)
    assert not sampled_path(model.mkv_name, SMALL).exists()
    assert not list((tmp_path / "sampled").glob("*")) if (tmp_path / "sampled").exists() else True


@pytest.mark.parametrize("bad", [dict(tokens=8, length=16), dict(length=4), dict(temperature=0), dict(top_p=1.5),
                                 dict(batch=0)])
def test_bad_settings_are_clear_errors(bad):
    with pytest.raises(ValueError, match="SampleSettings"):
        SampleSettings(**bad)


def test_without_a_data_folder_training_text_is_the_models_own_samples(monkeypatch):
    from mkvlib import corpora

    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    spec = corpora.default_corpus("training")
    assert [name for name, _ in corpora.parse_mixture(spec)] == ["sampled"]
    assert corpora.check_not_heldout(spec) == spec
    monkeypatch.setattr(sampled, "embedded_sampled_text", lambda settings=None: "text the model wrote")
    assert corpora.load_text("sampled") == "text the model wrote"

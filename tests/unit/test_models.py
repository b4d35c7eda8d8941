"""load_model: clear errors for bad paths, and a local Llama 3 checkpoint loads ready for NAMM."""
import pytest
from transformers import BertConfig, GPT2Config

import namm
from namm.memory import ATTN_IMPLEMENTATION
from namm.models import load_model

from tiny_llama import tiny_llama3


def test_missing_path_names_what_was_expected(tmp_path):
    with pytest.raises(namm.ModelLoadError, match="not found.*Hugging Face checkpoint"):
        load_model(str(tmp_path / "nope"))


def test_directory_without_config(tmp_path):
    with pytest.raises(namm.ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_not_a_causal_lm(tmp_path):
    cfg = BertConfig(num_hidden_layers=1)
    cfg.architectures = ["BertForMaskedLM"]
    cfg.save_pretrained(tmp_path)
    with pytest.raises(namm.ModelLoadError, match="not a causal LM"):
        load_model(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    cfg = GPT2Config(n_layer=1)
    cfg.architectures = ["GPT2LMHeadModel"]
    cfg.save_pretrained(tmp_path)
    with pytest.raises(namm.ModelLoadError, match="not a causal LM|unsupported architecture"):
        load_model(str(tmp_path))
    cfg.architectures = ["GPT2ForCausalLM"]
    cfg.save_pretrained(tmp_path)
    with pytest.raises(namm.ModelLoadError, match="unsupported architecture 'gpt2'.*Llama-family"):
        load_model(str(tmp_path))


def test_local_llama3_checkpoint_loads_and_generates(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    tiny = tiny_llama3()
    tiny.model.save_pretrained(tmp_path)
    vocab = {chr(33 + i): i for i in range(200)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="!"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="!", eos_token="#").save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), device="cpu")
    assert lm.name == tmp_path.name and lm.max_context == 4096
    assert lm.model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert lm.model.config.num_key_value_heads * 4 == lm.model.config.num_attention_heads
    res = namm.generate(lm, "abcdefgh" * 100, "xyz?", policy="h2o", budget=0.5, max_new_tokens=3, n_up=64)
    assert res.stats.tokens_in > 800 and res.stats.kv_kept_fraction < 0.6

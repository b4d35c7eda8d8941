"""A small random-initialised Llama 3 (GQA 4:1, llama3 RoPE scaling) for architecture tests."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from namm.models import LoadedModel, prepare_model


class _ByteTokenizer:
    """Just enough tokenizer for generate(): bytes as tokens, no chat template."""

    eos_token_id = 2
    unk_token_id = None
    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return [3 + b % 250 for b in text.encode("utf-8")]

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")

    def convert_tokens_to_ids(self, token):
        return None


def tiny_llama3(seed: int = 0, layers: int = 2) -> LoadedModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 1024},
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    prepare_model(model)
    return LoadedModel(model=model, tokenizer=_ByteTokenizer(), name="tiny-llama3", path=None, max_context=4096)


def random_ids(n: int, seed: int = 0) -> torch.Tensor:
    """[1, n] token ids in the byte tokenizer's range, reproducible by seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 250, (1, n), generator=g)

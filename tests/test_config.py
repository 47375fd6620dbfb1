"""HF config.json parsing: v4 and v5 RoPE keys, Qwen2 biases, clear errors for what we do not support."""

import pytest

from sae_jax.errors import UserError
from sae_jax.models.config import ModelConfig

LLAMA31_8B_V4 = {  # DeepSeek-R1-Distill-Llama-8B's config.json (transformers v4 keys)
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
}


def test_v4_and_v5_rope_keys_agree():
  v4 = ModelConfig.from_hf_dict(LLAMA31_8B_V4)
  v5_dict = {k: v for k, v in LLAMA31_8B_V4.items() if k not in ("rope_theta", "rope_scaling")}
  v5_dict["rope_parameters"] = dict(LLAMA31_8B_V4["rope_scaling"], rope_theta=500000.0)
  assert ModelConfig.from_hf_dict(v5_dict) == v4
  assert v4.head_dim == 128 and v4.num_kv_heads == 8 and v4.rope_scaling.factor == 8.0
  assert v4.eos_token_ids == (128001,) and not v4.qkv_bias


def test_qwen2_has_qkv_bias_only():
  cfg = ModelConfig.from_hf_dict(dict(LLAMA31_8B_V4, architectures=["Qwen2ForCausalLM"], rope_scaling=None,
                                      use_sliding_window=False))
  assert cfg.architecture == "qwen2" and cfg.qkv_bias and not cfg.o_bias and cfg.rope_scaling is None


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["MistralForCausalLM"]}, "unknown architecture"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope scaling 'yarn'"),
    ({"hidden_act": "gelu"}, "unsupported hidden_act"),
    ({"use_sliding_window": True}, "sliding-window"),
])
def test_unsupported_configs_are_named(change, message):
  with pytest.raises(UserError, match=message):
    ModelConfig.from_hf_dict(dict(LLAMA31_8B_V4, **change))


def test_missing_key_and_layer_range():
  d = dict(LLAMA31_8B_V4)
  del d["hidden_size"]
  with pytest.raises(UserError, match="missing the key 'hidden_size'"):
    ModelConfig.from_hf_dict(d)
  cfg = ModelConfig.from_hf_dict(LLAMA31_8B_V4)
  assert cfg.validate_layer(19) == 19
  with pytest.raises(UserError, match=r"layer 32 is out of range: the model has layers 0..31"):
    cfg.validate_layer(32)

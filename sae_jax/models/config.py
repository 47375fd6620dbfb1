"""Model hyper-parameters read from a Hugging Face `config.json` (transformers v4 and v5 keys).

`KNOWN_HF_CONFIGS` holds the shapes of the paper's hub models, so plans (launch/aot_compile.py) and checks can
know them offline; `peek_config` reads any source's shape without loading weights.
"""

import dataclasses
import json
import os
from typing import Any

from sae_jax.errors import UserError

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 "NTK-by-parts" frequency scaling (the only scaling the supported checkpoints use)."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the forward pass needs; one class serves Llama and Qwen2 (they differ in biases only)."""

  architecture: str  # "llama" or "qwen2"
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float
  rope_theta: float
  rope_scaling: RopeScaling | None = None
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  max_position_embeddings: int = 131072
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    archs = d.get("architectures") or []
    arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
      raise UserError(
          f"unknown architecture {archs or d.get('model_type')!r}: supported are "
          f"{sorted(SUPPORTED_ARCHITECTURES)}")
    act = d.get("hidden_act", "silu")
    if act != "silu":
      raise UserError(f"unsupported hidden_act {act!r}: expected 'silu'")
    if d.get("use_sliding_window"):
      raise UserError("Qwen2 sliding-window attention is not supported (use_sliding_window=true)")
    if d.get("mlp_bias"):
      raise UserError("mlp_bias=true is not supported")
    try:
      num_heads = int(d["num_attention_heads"])
      hidden = int(d["hidden_size"])
      # v5 keeps RoPE settings under `rope_parameters`; v4 under `rope_theta` and `rope_scaling`.
      rope = dict(d.get("rope_parameters") or {})
      theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
      scaling = d.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
      eos = d.get("eos_token_id")
      eos = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
      attention_bias = bool(d.get("attention_bias", False))
      return cls(
          architecture=arch,
          vocab_size=int(d["vocab_size"]),
          hidden_size=hidden,
          intermediate_size=int(d["intermediate_size"]),
          num_layers=int(d["num_hidden_layers"]),
          num_heads=num_heads,
          num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
          head_dim=int(d.get("head_dim") or hidden // num_heads),
          rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
          rope_theta=theta,
          rope_scaling=_parse_rope_scaling(scaling),
          tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
          qkv_bias=True if arch == "qwen2" else attention_bias,
          o_bias=False if arch == "qwen2" else attention_bias,
          max_position_embeddings=int(d.get("max_position_embeddings", 131072)),
          bos_token_id=d.get("bos_token_id"),
          eos_token_ids=eos,
      )
    except KeyError as e:
      raise UserError(f"config.json is missing the key {e.args[0]!r}") from None

  @classmethod
  def from_json(cls, path: str) -> "ModelConfig":
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    if not os.path.exists(path):
      raise UserError(f"no config.json at {path}")
    with open(path) as f:
      try:
        return cls.from_hf_dict(json.load(f))
      except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None

  def validate_layer(self, layer: int) -> int:
    if not 0 <= layer < self.num_layers:
      raise UserError(f"layer {layer} is out of range: the model has layers 0..{self.num_layers - 1}")
    return layer


def _parse_rope_scaling(s: dict[str, Any] | None) -> RopeScaling | None:
  if not s:
    return None
  kind = s.get("rope_type", s.get("type", "default"))
  if kind == "default":
    return None
  if kind != "llama3":
    raise UserError(f"unsupported rope scaling {kind!r}: supported are 'default' and 'llama3'")
  return RopeScaling(
      factor=float(s["factor"]),
      low_freq_factor=float(s["low_freq_factor"]),
      high_freq_factor=float(s["high_freq_factor"]),
      original_max_position_embeddings=int(s["original_max_position_embeddings"]),
  )


_LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "vocab_size": 128256, "tie_word_embeddings": False, "max_position_embeddings": 131072,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
}
_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rms_norm_eps": 1e-6,
          "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 131072,
          "use_sliding_window": False, "hidden_act": "silu"}

# The hub models of the paper (their config.json, the fields `from_hf_dict` reads), for offline shape checks.
KNOWN_HF_CONFIGS = {
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": {
        **_QWEN2, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936},
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": {
        **_QWEN2, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064},
}

"""Load HF checkpoints (safetensors dir, single or sharded; GGUF; hub id) into a sharded Transformer.

Tensors are read one at a time from memory maps and placed straight onto their NamedSharding, so an 8B
model loads without a second host copy.
"""

import json
import os
import re
import struct

import gguf
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.models.config import KNOWN_HF_CONFIGS, ModelConfig
from sae_jax.models.transformer import Transformer

_SAFETENSORS_DTYPES = {
    "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
    "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8,
}


class SafetensorsDir:
  """Memory-mapped tensors of a HF checkpoint dir: `model.safetensors` or a sharded index."""

  def __init__(self, path: str):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
      if not files:
        raise UserError(f"no *.safetensors files in {path}")
    self.tensors = {}
    for name in files:
      self.tensors.update(_map_safetensors(os.path.join(path, name)))
    self.source = path

  def get(self, name: str) -> np.ndarray:
    if name not in self.tensors:
      raise UserError(f"missing tensor {name!r} in {self.source}")
    return self.tensors[name]

  def has(self, name: str) -> bool:
    return name in self.tensors


def _map_safetensors(path: str) -> dict[str, np.ndarray]:
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise UserError(f"truncated safetensors file {path}: no header")
    (n,) = struct.unpack("<Q", head)
    if 8 + n > size:
      raise UserError(f"truncated safetensors file {path}: header needs {8 + n} bytes, file has {size}")
    try:
      header = json.loads(f.read(n))
    except json.JSONDecodeError:
      raise UserError(f"corrupt safetensors file {path}: header is not JSON") from None
  header.pop("__metadata__", None)
  end = max((m["data_offsets"][1] for m in header.values()), default=0)
  if 8 + n + end > size:
    raise UserError(f"truncated safetensors file {path}: data needs {8 + n + end} bytes, file has {size}")
  raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(end,)) if end else None
  out = {}
  for name, meta in header.items():
    dtype = _SAFETENSORS_DTYPES.get(meta["dtype"])
    if dtype is None:
      raise UserError(f"tensor {name!r} in {path} has unsupported dtype {meta['dtype']}")
    start, stop = meta["data_offsets"]
    out[name] = raw[start:stop].view(dtype).reshape(meta["shape"])
  return out


# HF tensor name pieces -> GGUF (llama.cpp) names.
_GGUF_NAMES = [
    (r"^model\.embed_tokens\.", "token_embd."),
    (r"^model\.norm\.", "output_norm."),
    (r"^lm_head\.", "output."),
    (r"^model\.layers\.(\d+)\.", r"blk.\1."),
    (r"self_attn\.q_proj", "attn_q"), (r"self_attn\.k_proj", "attn_k"),
    (r"self_attn\.v_proj", "attn_v"), (r"self_attn\.o_proj", "attn_output"),
    (r"mlp\.gate_proj", "ffn_gate"), (r"mlp\.up_proj", "ffn_up"), (r"mlp\.down_proj", "ffn_down"),
    (r"input_layernorm", "attn_norm"), (r"post_attention_layernorm", "ffn_norm"),
]


class GGUFFile:
  """Dequantized tensors of a GGUF file under their HF names, with llama.cpp's Q/K permutation undone."""

  def __init__(self, path: str):
    try:
      self.reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf raises bare ValueError/struct errors on damaged files
      raise UserError(f"cannot read GGUF file {path}: {e}") from None
    self.source = path
    self.fields = {k: f.contents() for k, f in self.reader.fields.items()
                   if not k.startswith("tokenizer.ggml.")}
    self.tensors = {t.name: t for t in self.reader.tensors}
    self.arch = self.fields.get("general.architecture")

  def hf_config(self) -> dict:
    """The HF config.json this GGUF corresponds to (llama or qwen2)."""
    arch, f = self.arch, self.fields
    hf_arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(arch, arch)
    d = {
        "architectures": [hf_arch],
        "model_type": arch,
        "hidden_size": f[f"{arch}.embedding_length"],
        "intermediate_size": f[f"{arch}.feed_forward_length"],
        "num_hidden_layers": f[f"{arch}.block_count"],
        "num_attention_heads": f[f"{arch}.attention.head_count"],
        "num_key_value_heads": f.get(f"{arch}.attention.head_count_kv", f[f"{arch}.attention.head_count"]),
        "rms_norm_eps": f[f"{arch}.attention.layer_norm_rms_epsilon"],
        "rope_theta": f.get(f"{arch}.rope.freq_base", 10000.0),
        "max_position_embeddings": f.get(f"{arch}.context_length", 2048),
        "vocab_size": int(self.tensors["token_embd.weight"].shape[-1]),
        "tie_word_embeddings": "output.weight" not in self.tensors,
        "hidden_act": "silu",
    }
    bos = self.reader.fields.get("tokenizer.ggml.bos_token_id")
    eos = self.reader.fields.get("tokenizer.ggml.eos_token_id")
    d["bos_token_id"] = bos.contents() if bos else None
    d["eos_token_id"] = eos.contents() if eos else None
    return d

  def has(self, name: str) -> bool:
    return self._gguf_name(name) in self.tensors

  def get(self, name: str) -> np.ndarray:
    gname = self._gguf_name(name)
    if gname not in self.tensors:
      raise UserError(f"missing tensor {gname!r} (HF {name!r}) in {self.source}")
    t = self.tensors[gname]
    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    w = w.reshape(tuple(int(x) for x in reversed(t.shape)))
    if self.arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
      heads_key = "attention.head_count" if gname.endswith("attn_q.weight") else "attention.head_count_kv"
      w = _unpermute_rotary(w, int(self.fields[f"llama.{heads_key}"]))
    return w

  @staticmethod
  def _gguf_name(name: str) -> str:
    for pattern, repl in _GGUF_NAMES:
      name = re.sub(pattern, repl, name)
    return name


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp interleaves each head's rotary halves; HF keeps them as two halves. Undo that."""
  out = w.shape[0]
  return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def open_checkpoint(source: str):
  """(tensor reader, HF config dict) for a dir, a .gguf file, or a hub id (downloaded when a hub is reachable)."""
  if source.endswith(".gguf"):
    if not os.path.exists(source):
      raise UserError(f"no such GGUF file: {source}")
    reader = GGUFFile(source)
    return reader, reader.hf_config()
  if not os.path.isdir(source):
    source = _download_from_hub(source)
  config_path = os.path.join(source, "config.json")
  if not os.path.exists(config_path):
    raise UserError(f"no config.json in {source}")
  with open(config_path) as f:
    return SafetensorsDir(source), json.load(f)


def _download_from_hub(repo_id: str) -> str:
  if os.path.sep in repo_id.strip("/").replace("/", "", 1) or repo_id.count("/") != 1:
    raise UserError(f"{repo_id!r} is neither a checkpoint dir, a .gguf file, nor a hub id (owner/name)")
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.jinja"])
  except Exception as e:
    raise UserError(f"cannot fetch {repo_id!r} from the hub ({type(e).__name__}); pass a local dir or "
                    ".gguf file, or unset HF_HUB_OFFLINE where a hub is reachable") from None


def hf_tensor_name(path: tuple) -> tuple[str, bool]:
  """HF tensor name of a parameter path, and whether HF stores it transposed ([out, in] vs our [in, out])."""
  names = [str(p) for p in path]
  leaf = names[-1]
  prefix = "" if names[0] == "lm_head" else "model."
  base = prefix + ".".join(names[:-1])
  if leaf == "kernel":
    return base + ".weight", True
  if leaf == "embedding":
    return base + ".weight", False
  return base + "." + leaf, False


def abstract_model(cfg: ModelConfig, dtype, mesh=None):
  """(graphdef, abstract state) without allocating weights; with a `mesh`, every leaf a ShapeDtypeStruct with
  the sharding the loaders place it on (what AOT compilation lowers with)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, dtype, rngs=nnx.Rngs(0))))
  if mesh is not None:
    pure = nnx.to_pure_dict(state)
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), pure, shd.param_shardings(pure, mesh)))
  return graphdef, state


def load_model(source: str, dtype=jnp.bfloat16, mesh=None) -> Transformer:
  """Builds a Transformer from a checkpoint, every weight placed directly on its sharding."""
  reader, hf_cfg = open_checkpoint(source)
  cfg = ModelConfig.from_hf_dict(hf_cfg)
  mesh = mesh or shd.make_mesh(devices=jax.devices()[:1])
  graphdef, abstract = abstract_model(cfg, dtype)
  shardings = shd.param_shardings(nnx.to_pure_dict(abstract), mesh)

  def load(path, leaf, sharding):
    name, transposed = hf_tensor_name(shd._names(path))
    arr = reader.get(name)
    if transposed:
      arr = arr.T
    if tuple(arr.shape) != tuple(leaf.shape):
      shape = tuple(reversed(arr.shape)) if transposed else tuple(arr.shape)
      want = tuple(reversed(leaf.shape)) if transposed else tuple(leaf.shape)
      raise UserError(f"tensor {name!r} has shape {shape}, expected {want} from config.json")
    return jax.make_array_from_callback(leaf.shape, sharding,
                                        lambda idx: np.asarray(arr[idx]).astype(leaf.dtype))

  params = jax.tree_util.tree_map_with_path(load, nnx.to_pure_dict(abstract), shardings)
  nnx.replace_by_pure_dict(abstract, params)
  return nnx.merge(graphdef, abstract)


def peek_config(source: str) -> ModelConfig | None:
  """The ModelConfig of a model source without loading weights, or None when only loading can tell.

  Sources: a HF dir or converted checkpoint dir (both keep config.json), a .gguf file, or a hub id listed in
  `KNOWN_HF_CONFIGS`. Other hub ids give None.
  """
  if os.path.isdir(source):
    return ModelConfig.from_json(source)
  if source.endswith(".gguf"):
    if not os.path.exists(source):
      raise UserError(f"no such GGUF file: {source}")
    return ModelConfig.from_hf_dict(GGUFFile(source).hf_config())
  if source in KNOWN_HF_CONFIGS:
    return ModelConfig.from_hf_dict(KNOWN_HF_CONFIGS[source])
  return None

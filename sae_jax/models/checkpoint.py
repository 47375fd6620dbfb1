"""Converted-model checkpoints: Orbax params + HF `config.json` + tokenizer files, restorable on any mesh."""

import dataclasses
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from sae_jax import io as sio
from sae_jax import pod
from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.models.config import ModelConfig
from sae_jax.models.loading import abstract_model, load_model, open_checkpoint, peek_config
from sae_jax.models.transformer import Transformer

DTYPES = ("bfloat16", "float32")
KIND = "converted model"  # the marker kind of its output dirs (sae_jax.io.replaced_dir)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "tokenizer.model")


def save(out_dir: str, model: Transformer, hf_config: dict, tokenizer_dir: str | None = None) -> str:
  """Writes the checkpoint into a temp dir beside `out_dir`, then renames: complete or absent."""
  with sio.pod_replaced_dir(out_dir, KIND) as tmp:  # in a pod every process saves its part of the params
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, "params"), params)
      ckptr.wait_until_finished()
    if not pod.is_writer():
      return os.path.abspath(out_dir)
    cfg = dict(hf_config)
    cfg["sae_jax"] = {"dtype": jnp.dtype(model.dtype).name}
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(cfg, f, indent=2)
    if tokenizer_dir:
      for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(tokenizer_dir, name)):
          shutil.copy(os.path.join(tokenizer_dir, name), tmp)
  return os.path.abspath(out_dir)


def convert(source: str, out_dir: str, dtype, tokenizer: str | None = None, log=print) -> str:
  """`source` (HF dir, GGUF file or hub id) as a checkpoint at `out_dir` in `dtype`, with its tokenizer files
  (from `tokenizer`, the source dir, or a GGUF's embedded tokenizer). In a pod every process loads the weights
  as global arrays and saves its part through Orbax's multi-host path."""
  import time
  start = time.time()
  _, hf_config = open_checkpoint(source)
  mesh = shd.make_mesh(data=-1) if pod.count() > 1 else None
  model = load_model(source, dtype=dtype, mesh=mesh)
  log(f"loaded {source}: {model.cfg.architecture}, {model.cfg.num_layers} layers, d_model {model.cfg.hidden_size} "
      f"({time.time() - start:.1f}s)")
  with tempfile.TemporaryDirectory() as scratch:
    return save(out_dir, model, hf_config, _tokenizer_dir(source, tokenizer, scratch))


def _tokenizer_dir(model: str, explicit: str | None, scratch: str) -> str | None:
  """Where the tokenizer files come from; a GGUF's embedded tokenizer is exported via transformers."""
  if explicit:
    return explicit
  if model.endswith(".gguf"):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(model)), gguf_file=os.path.basename(model))
    tok.save_pretrained(scratch)
    return scratch
  return model if os.path.isdir(model) else None


def restore(ckpt_dir: str, mesh=None, dtype=None) -> Transformer:
  """Restores onto `mesh` (default: one device) with each leaf sharded by the logical rules."""
  ckpt_dir = os.path.abspath(ckpt_dir)
  if not os.path.isdir(os.path.join(ckpt_dir, "params")):
    raise UserError(f"{ckpt_dir} is not a converted checkpoint (no params/ dir); run launch/convert.py")
  try:
    with open(os.path.join(ckpt_dir, "config.json")) as f:
      hf_cfg = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"converted checkpoint {ckpt_dir} has no readable config.json ({e}): convert it again") from None
  cfg = ModelConfig.from_hf_dict(hf_cfg)
  saved_dtype = jnp.dtype(hf_cfg.get("sae_jax", {}).get("dtype", "bfloat16"))
  dtype = jnp.dtype(dtype or saved_dtype)
  mesh = mesh or shd.make_mesh(devices=jax.devices()[:1])
  graphdef, abstract = abstract_model(cfg, saved_dtype)
  pure = nnx.to_pure_dict(abstract)
  target = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                        pure, shd.param_shardings(pure, mesh))
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(os.path.join(ckpt_dir, "params"), target)
  except Exception as e:  # noqa: BLE001 (Orbax and TensorStore raise bare Exceptions for damaged files)
    raise UserError(f"converted checkpoint {ckpt_dir} is damaged ({str(e).splitlines()[0][:160]}): convert it "
                    "again with launch/convert.py") from None
  if dtype != saved_dtype:
    graphdef, abstract = abstract_model(cfg, dtype)
    params = jax.tree.map(lambda x: x.astype(dtype), params)
  nnx.replace_by_pure_dict(abstract, params)
  return nnx.merge(graphdef, abstract)


def load_any(source: str, dtype=None, mesh=None) -> Transformer:
  """A converted checkpoint dir, or anything `load_model` reads (HF dir, GGUF, hub id)."""
  if os.path.isdir(os.path.join(source, "params")):
    return restore(source, mesh=mesh, dtype=dtype)
  return load_model(source, dtype=dtype or jnp.bfloat16, mesh=mesh)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The model a run reads (config section `model`): converted checkpoint dir, HF dir, .gguf or hub id."""

  path: str = ""
  dtype: str = "bfloat16"  # the paper's; float32 for exact parity on CPU

  def __post_init__(self):
    if self.dtype not in DTYPES:
      raise UserError(f"model.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")

  def load(self, mesh=None) -> Transformer:
    if not self.path:
      raise UserError("no model given: set --config.model.path")
    return load_any(self.path, dtype=jnp.dtype(self.dtype), mesh=mesh)

  def peek(self):
    """Its ModelConfig without loading weights (None for a hub id not in KNOWN_HF_CONFIGS)."""
    return peek_config(self.path)

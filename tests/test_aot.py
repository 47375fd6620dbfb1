"""AOT compilation for a TPU topology (compile-only v5e:2x2 devices from libtpu, no TPU): the per-device bytes of
the paper's steps against sums computed here from the published shapes and the sharding rules; fit / no fit;
the launch script on the demo config; clear errors."""

import json
import os
import subprocess
import sys

import jax
import pytest

from conftest import REPO

from configs import demo_smollm2, paper_r1_llama8b_l19
from sae_jax import aot
from sae_jax.errors import UserError

GIB = 2**30
TPU_SCALAR_BYTES = 512  # the smallest TPU buffer: each scalar argument takes 512 bytes
D, F = 4096, 65536  # the paper's SAE: resid_post of DeepSeek-R1-Distill-Llama-8B, 16x expansion


def _llama8b_weights():
  """(elements of the matrices, elements of the norm scales) of Llama-3.1-8B / R1-Distill-Llama-8B."""
  vocab, mlp, layers, kv = 128256, 14336, 32, 8 * 128
  per_layer = 2 * D * D + 2 * D * kv + 3 * D * mlp  # q, o; k, v; gate, up, down
  return 2 * vocab * D + layers * per_layer, (2 * layers + 1) * D  # untied embed + lm_head


def _paper(**mesh):
  c = paper_r1_llama8b_l19.get_config()
  c.sae.hook_layer = 0  # a short forward to compile; every layer's weights still count (they stay resident)
  c.mesh.update(data=1, fsdp=1, model=1)
  c.mesh.update(mesh)
  return c


@pytest.fixture(scope="module")
def v5e():
  return aot.topology_devices("v5e:2x2")


def test_paper_on_v5e_fsdp4(v5e):
  """fsdp=4: each weight matrix splits its 4096-wide embed dim in 4, norm scales and the SAE are replicated."""
  plan = aot.plan(_paper(fsdp=4), v5e, ("collect", "train_sae"))
  assert plan["device_kind"] == "TPU v5 lite" and plan["hbm_per_device"] == 16 * GIB and plan["devices"] == 4
  matrices, norms = _llama8b_weights()
  assert matrices + norms == 8_030_261_248  # the published parameter count
  weights = 2 * (matrices // 4 + norms)  # bfloat16
  collect = plan["stages"]["collect"]
  tokens = 8 * 1024 // 4 * 4  # 8 rows x 1024 int32 tokens split over fsdp
  assert collect["bytes_per_device"]["arguments"] == weights + tokens
  assert collect["bytes_per_device"]["outputs"] == 8 * 1024 * D * 4 // 4  # float32 site activations
  assert collect["bytes_per_device"]["total"] > weights and collect["fits"] is True
  assert collect["flops_per_device"] > 2 * (8 * 1024 // 4) * (4 * D * D)  # layer 0's q,k,v,o,mlp matmuls at least

  train = plan["stages"]["train_sae"]
  sae = 4 * (2 * D * F + F + D)  # W_enc, W_dec, b_enc, b_dec in float32
  batch = 4096 // 4 * D * 4
  # params + Adam's two moments, the fire counters, the batch; step, scale and Adam's count are scalars.
  assert train["bytes_per_device"]["arguments"] == 3 * sae + 4 * F + batch + 3 * TPU_SCALAR_BYTES
  assert train["bytes_per_device"]["aliased"] >= 3 * sae  # params and optimizer state are donated
  assert train["fits"] is True and train["flops_per_device"] > 3 * 2 * 1024 * D * F  # fwd + bwd matmuls

  run = plan["runs"]["train_sae.py"]
  half, slack = 131072, 8 * 1024
  assert run["shuffle_buffer_bytes_device0"] == (half + half + slack + 2 * half) * D * 4
  assert weights + 3 * sae + run["shuffle_buffer_bytes_device0"] > 16 * GIB  # so on the fly cannot fit
  assert run["bytes_per_device"] > 16 * GIB and run["fits"] is False and "mesh.model" in run["advice"]


def test_sae_fits_only_with_latents_sharded(v5e):
  """A 32x SAE (4 GiB of params, 12 GiB with Adam) does not fit a v5e chip; split on model=4 it does."""
  f = 32 * D

  def train_stage(**mesh):
    c = _paper(**mesh)
    c.sae.d_sae = f
    return aot.plan(c, v5e, ("train_sae",))["stages"]["train_sae"]

  replicated = train_stage(data=4)
  assert 3 * 4 * 2 * D * f == 12 * GIB  # params and Adam's moments, before gradients and activations
  assert replicated["fits"] is False and replicated["bytes_per_device"] is None  # XLA refuses to compile it
  assert "Ran out of memory" in replicated["xla_error"] and "mesh.model" in replicated["advice"]
  split = train_stage(model=4)
  sae = 4 * (2 * D * f // 4 + f // 4 + D)  # latents split in 4, b_dec replicated
  assert split["bytes_per_device"]["arguments"] == 3 * sae + 4 * f // 4 + 4096 * D * 4 + 3 * TPU_SCALAR_BYTES
  assert split["fits"] is True and "advice" not in split


def test_errors(v5e, monkeypatch):
  with pytest.raises(UserError, match="unknown TPU topology 'v5e:3x3'"):
    aot.topology_devices("v5e:3x3")
  with pytest.raises(UserError, match="unknown TPU topology 'tpu-please'"):
    aot.topology_devices("tpu-please")
  with pytest.raises(UserError, match=r"mesh data=1 x fsdp=1 x model=3 needs 3 devices, have 4 on the topology"):
    aot.plan(_paper(model=3), v5e, ("train_sae",))
  c = _paper(data=4)
  c.model.path = "someone/unknown-model"
  with pytest.raises(UserError, match="shape of model 'someone/unknown-model' is unknown offline"):
    aot.plan(c, v5e, ("collect",))
  with pytest.raises(UserError, match="unknown stages"):
    aot.plan(_paper(data=4), v5e, ("train",))
  c = _paper(data=4)
  c.data.store_batch_rows = 6
  with pytest.raises(UserError, match="batch .* of 6 rows does not split over data x fsdp = 4 devices"):
    aot.plan(c, v5e, ("reason_score",))
  monkeypatch.setattr(aot, "_libtpu_installed", lambda: False)
  with pytest.raises(UserError, match=r"needs libtpu: pip install 'libtpu==0\.0\.42\.1'"):
    aot.topology_devices("v5e:2x2")


def test_known_hub_ids_have_the_published_sizes(assets):
  import jax.numpy as jnp
  from flax import nnx
  from sae_jax.models.config import KNOWN_HF_CONFIGS
  from sae_jax.models.loading import abstract_model, peek_config
  published = {"deepseek-ai/DeepSeek-R1-Distill-Llama-8B": 8_030_261_248, "meta-llama/Llama-3.1-8B": 8_030_261_248,
               "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": 1_777_088_000,
               "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": 7_615_616_512}
  assert set(published) == set(KNOWN_HF_CONFIGS)
  for hub_id, n in published.items():
    _, state = abstract_model(peek_config(hub_id), jnp.bfloat16)
    assert sum(leaf.size for leaf in jax.tree.leaves(nnx.to_pure_dict(state))) == n, hub_id
  llama = peek_config("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")
  assert llama.rope_scaling.original_max_position_embeddings == 8192 and llama.eos_token_ids == (128001,)
  assert peek_config(assets.smollm2_gguf).hidden_size == peek_config(assets.smollm2_hf).hidden_size == 576
  assert peek_config("someone/unknown-model") is None
  with pytest.raises(UserError, match="no such GGUF file"):
    peek_config("/nonexistent/model.gguf")


def _launch(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "aot_compile.py"), *args, "--verbosity=-1"],
                        capture_output=True, text=True, env=env, timeout=300)


def test_launch_demo_config(assets, tmp_path):
  out = tmp_path / "plan" / "v5e.json"
  proc = _launch("--topology=v5e:2x2", "--config=" + os.path.join(REPO, "configs", "demo_smollm2.py"),
                 f"--config.model.path={assets.smollm2_hf}", "--config.model.dtype=bfloat16", "--config.mesh.data=-1",
                 "--config.sae.hook_layer=0", f"--out={out}")  # float32 matmuls on TPU compile ~10x slower
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout)
  assert report == json.load(open(out))
  flags = json.load(open(out.parent / "run.json"))["flags"]
  assert flags["topology"] == "v5e:2x2" and flags["config"]["model"]["path"] == assets.smollm2_hf
  assert report["mesh"] == {"data": 4, "fsdp": 1, "model": 1} and set(report["stages"]) == set(aot.STAGES)
  c = demo_smollm2.get_config()
  # SmolLM2-135M in bfloat16, replicated: every layer's weights are arguments (the step reads layer 0 only).
  weights = 2 * (49152 * 576 + 30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536 + 2 * 576) + 576)
  collect = report["stages"]["collect"]["bytes_per_device"]
  assert weights < collect["arguments"] < 1.1 * weights  # TPU tiles pad the 576-wide dims a little
  reason = report["stages"]["reason_score"]
  tokens = c.data.store_batch_rows * c.data.context_size // 4
  assert reason["tokens_per_step"] == 4 * tokens
  assert reason["flops_per_device"] >= 2 * tokens * 576 * c.sae.d_sae  # the encoder matmul
  assert all(s["fits"] for s in report["stages"].values()) and all(r["fits"] for r in report["runs"].values())


def test_launch_errors(tmp_path):
  proc = _launch("--topology=v9z:2x2", "--config=" + os.path.join(REPO, "configs", "paper_r1_llama8b_l19.py"))
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown TPU topology 'v9z:2x2'")

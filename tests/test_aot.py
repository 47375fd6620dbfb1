"""AOT compilation for a TPU topology (compile-only v5e:2x2 devices from libtpu, no TPU): the per-device bytes of
the paper's steps against sums computed here from the published shapes and the sharding rules; fit / no fit;
the steered decode step's bytes, step time, largest slot count and benchmark time; the launch script on the demo
config; clear errors."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO

from configs import demo_smollm2, paper_r1_llama8b_l19
from sae_jax import aot
from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.models.config import KNOWN_HF_CONFIGS, ModelConfig
from sae_jax.steering import SteeringPlan

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

  # Step time (the roofline of XLA's costs on v5e: 197 TFLOP/s, 819 GB/s), MFU, tokens/s and the paper's run:
  # 819.2M tokens = 200,000 SAE steps of 4096, 100,000 model batches of 8 x 1024 (on the fly).
  for name, stage in plan["stages"].items():
    t = stage["step_seconds"]
    assert t["seconds"] == max(stage["flops_per_device"] / 197e12, stage["bytes_accessed_per_device"] / 819e9,
                               stage["bytes_per_device"]["arguments"] / 819e9)
    assert t["mfu"] == round(stage["flops_per_device"] / 197e12 / t["seconds"], 4) and 0 < t["mfu"] <= 1
    assert stage["tokens_per_second"] == round(stage["tokens_per_step"] / t["seconds"])
  assert plan["stages"]["train_sae"]["full_run"]["steps"] == 200_000 == 819_200_000 // 4096
  assert plan["stages"]["collect"]["full_run"]["steps"] == 100_000
  for name, steps in (("train_sae", 200_000), ("collect", 100_000)):
    run = plan["stages"][name]["full_run"]
    hours = steps * plan["stages"][name]["step_seconds"]["seconds"] / 3600
    assert run["tokens"] == 819_200_000 and math.isclose(run["hours"], hours, rel_tol=1e-3)
    assert math.isclose(run["chip_hours"], 4 * hours, rel_tol=1e-3)
  both = plan["runs"]["train_sae.py"]["full_run"]
  assert both["steps"] == {"collect": 100_000, "train_sae": 200_000}
  assert math.isclose(both["hours"], sum(plan["stages"][n]["full_run"]["hours"] for n in ("collect", "train_sae")),
                      rel_tol=1e-3)
  table = aot.summary(plan)
  assert table[0].split() == ["stage", "fits", "HBM/device", "step", "tokens/s", "MFU", "full", "run", "chip-hours"]
  assert [row.split()[0] for row in table[1:]] == ["collect", "train_sae", "train_sae.py"]
  assert aot.not_fitting(plan) == ["train_sae.py"]

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


# The steered decode step of R1-Distill-Llama-8B's attention and width (d 4096, 32 heads, 8 KV heads of 128) on 2
# layers, a 4096-wide MLP and a 512-token vocabulary (the sampler's sort over the vocabulary dominates the compile
# time): it compiles in seconds. Its cache is the paper's 32,768 tokens per slot.
SMALL = {**KNOWN_HF_CONFIGS["deepseek-ai/DeepSeek-R1-Distill-Llama-8B"], "num_hidden_layers": 2,
         "intermediate_size": 4096, "vocab_size": 512}
MAX_LEN = 32768
TINY_HBM = 2 * GIB  # a chip of 2 GiB: 27-28 slots of 32k tokens fit, so the search stays small


def _small_weight_bytes_per_device(model_shards: int) -> int:
  """bfloat16 bytes of SMALL per device on model=model_shards: every matrix splits on model, norms replicated."""
  vocab, mlp, layers, kv = 512, 4096, 2, 8 * 128
  matrices = 2 * vocab * D + layers * (2 * D * D + 2 * D * kv + 3 * D * mlp)
  return 2 * (matrices // model_shards + (2 * layers + 1) * D)


def _evaluate(v5e, slots, search=True):
  return aot.evaluate_stage(ModelConfig.from_hf_dict(SMALL), jnp.bfloat16, shd.make_mesh(1, 1, 4, devices=v5e),
                            TINY_HBM, slots, MAX_LEN, SteeringPlan(layer=1), search=search)


def test_evaluate_stage_bytes_step_time_and_max_slots(v5e):
  """model=4 splits the 8 KV heads of every slot's cache in 4; the step time is the roofline of XLA's costs; the
  largest slot count that fits 95% of the chip is what the weights and the per-slot cache leave room for."""
  stage = _evaluate(v5e, 8)
  per_slot = 2 * 2 * MAX_LEN * 8 * 128 * 2  # keys and values of 2 layers, bfloat16
  assert stage["kv_cache_bytes_per_slot"] == per_slot + MAX_LEN + 4  # + the validity mask and the offset
  assert stage["cache_dtype"] == "bfloat16" and stage["slots"] == stage["tokens_per_step"] == 8
  weights, cache = _small_weight_bytes_per_device(4), 8 * per_slot // 4
  b = stage["bytes_per_device"]
  # The valid mask [8, 32k] is replicated (data=1); the steering args, tokens and sampler args are tiny.
  assert weights + cache + 8 * MAX_LEN <= b["arguments"] < weights + cache + 8 * MAX_LEN + 2**20
  assert b["aliased"] >= cache  # the cache is donated: updated in place
  assert stage["fits"] is True and stage["hbm_per_device"] == TINY_HBM
  # At least the matmuls of 8 tokens through 2 layers and the LM head, split in 4.
  assert stage["flops_per_device"] >= 2 * 8 * (2 * (2 * D * D + 2 * D * 1024 + 3 * D * 4096) + D * 512) / 4

  t = stage["step_seconds"]
  peak_flops, bandwidth = aot.PEAK["TPU v5 lite"]
  assert (peak_flops, bandwidth) == (197e12, 819e9) == (t["peak_flops_per_second"], t["hbm_bytes_per_second"])
  assert t["xla_seconds"] == max(stage["flops_per_device"] / peak_flops,
                                 stage["bytes_accessed_per_device"] / bandwidth)
  assert t["floor_seconds"] == b["arguments"] / bandwidth > (weights + cache) / bandwidth  # each byte read once
  assert t["seconds"] == max(t["xla_seconds"], t["floor_seconds"]) and t["bound"] == "memory"

  found = stage["max_slots"]
  budget = aot.TIGHT * TINY_HBM
  assert found["budget_bytes_per_device"] == int(budget)
  # Weights and cache alone cap the count; the step's own temporaries and code take at most one slot more.
  cap = int((budget - weights) // (per_slot // 4))
  assert cap - 1 <= found["slots"] <= cap
  assert found["bytes_per_device"] <= budget and found["compiled"][str(found["slots"])] == found["bytes_per_device"]
  assert per_slot // 4 <= found["bytes_per_slot_per_device"] < 1.05 * per_slot // 4
  assert len(found["compiled"]) <= 5  # 1, 8, then the line's guesses

  bench = stage["benchmarks"]
  steps = math.ceil(728 * aot.MEAN_NEW_TOKENS / 8)  # AIME 30 + MATH-500 500 + GPQA Diamond 198, k = 1
  assert bench["samples_per_setting"] == 728 and bench["decode_steps_per_setting"] == steps
  assert bench["hours_per_setting"] == round(steps * t["seconds"] / 3600, 2)
  assert bench["hours_per_setting_floor"] == round(steps * t["floor_seconds"] / 3600, 2)
  assert bench["drain_hours_max"] == round(MAX_LEN * t["seconds"] / 3600, 2)


def test_evaluate_stage_too_many_slots(v5e):
  """32 slots of 32k tokens need 2 GiB of cache per device on model=4: no fit on a 2 GiB chip."""
  stage = _evaluate(v5e, 32, search=False)
  need = _small_weight_bytes_per_device(4) + 32 * (2 * 2 * MAX_LEN * 8 * 128 * 2) // 4
  assert need > TINY_HBM and stage["bytes_per_device"]["total"] > need
  assert stage["fits"] is False and stage["hbm_used"] > 1 and stage["max_slots"] is None


def test_plan_evaluate_from_the_paper_eval_config(v5e, tmp_path, monkeypatch):
  """The eval config's sections: the steering setting (1 feature, plus the baseline: 2 settings), slots 0 = the
  most that fit; a 2 GiB chip; the compiles are those of the test above (same shapes)."""
  from configs import eval_paper_r1_llama8b
  (tmp_path / "config.json").write_text(json.dumps(SMALL))
  monkeypatch.setitem(aot.HBM_BYTES, "TPU v5 lite", TINY_HBM)
  c = eval_paper_r1_llama8b.get_config()
  c.model.path = str(tmp_path)
  c.mesh.update(data=1, model=4)
  c.steering.layer = 1
  report = aot.plan(c, v5e, ("evaluate",), mean_new_tokens=4000)
  stage = report["stages"]["evaluate"]
  assert report["runs"] == {} and report["model"]["num_layers"] == 2
  assert stage["steering"] == {"layer": 1, "site": "resid_post", "method": "intervention", "features": 1}
  assert stage["slots"] == stage["max_slots"]["slots"] >= 27 and stage["max_len"] == MAX_LEN and stage["fits"]
  bench = stage["benchmarks"]
  assert bench["settings"] == 2 and bench["problems"] == {"aime24": 30, "math500": 500, "gpqa_diamond": 198}
  assert bench["decode_steps_per_setting"] == math.ceil(728 * 4000 / stage["slots"])
  assert bench["hours_all_settings"] == round(2 * bench["decode_steps_per_setting"] *
                                              stage["step_seconds"]["seconds"] / 3600, 2)
  assert aot.fit_warnings(report) == []
  with pytest.raises(UserError, match=r"mean generated length 40000 must be in \[1, 32768\]"):
    aot.plan(c, v5e, ("evaluate",), mean_new_tokens=40000)
  c.mesh.update(data=4, model=1)
  c.engine.slots = 6
  with pytest.raises(UserError, match="decode batch .* of 6 rows does not split over data x fsdp = 4"):
    aot.plan(c, v5e, ("evaluate",))


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
  assert report["mesh"] == {"data": 4, "fsdp": 1, "model": 1}
  assert set(report["stages"]) == {"collect", "train_sae", "reason_score"}  # the default --stages
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
  proc = _launch("--topology=v5e:2x2", "--config=" + os.path.join(REPO, "configs", "eval_paper_r1_llama8b.py"),
                 "--stages=evaluate", "--mean_new_tokens=40000")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == ("error: the mean generated length 40000 must be in [1, 32768] "
                                                  "(the cache's tokens)")
  # A stage that does not fit (a 32x SAE with Adam replicated on 16 GiB chips): the report, then exit 2.
  out = tmp_path / "plan.json"
  proc = _launch("--topology=v5e:2x2", "--config=" + os.path.join(REPO, "configs", "paper_r1_llama8b_l19.py"),
                 "--stages=train_sae", f"--config.sae.d_sae={32 * D}", "--config.mesh.data=4", f"--out={out}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == ("error: v5e:2x2 with mesh data=4 fsdp=1 model=1 does not fit "
                                                  "train_sae, train_sae.py: see the advice above")
  report = json.loads(proc.stdout)
  assert report == json.load(open(out)) and report["stages"]["train_sae"]["fits"] is False
  assert "train_sae does not fit" in proc.stderr and "raise --config.mesh.model" in proc.stderr

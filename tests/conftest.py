"""Test session set-up: 8 fake CPU devices, no hub, and the offline assets built once."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

assert len(jax.devices()) == 8, "tests need 8 fake CPU devices: set XLA_FLAGS before importing jax"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


@pytest.fixture(scope="session")
def bench_python():
  """The interpreter of .venv-bench (launch/bench_env.sh): real SAELens 5.5.2 and TransformerLens, pinned."""
  path = os.path.join(REPO, ".venv-bench", "bin", "python")
  assert os.path.exists(path), "the peer virtualenv is missing: run bash launch/bench_env.sh (launch/test.sh does)"
  return path


@pytest.fixture(scope="session")
def compat_python():
  """The interpreter of .venv-compat (launch/compat_env.sh): real SAELens 6 and eai-sparsify, pinned."""
  path = os.path.join(REPO, ".venv-compat", "bin", "python")
  assert os.path.exists(path), "the compat virtualenv is missing: run bash launch/compat_env.sh (launch/test.sh does)"
  return path


@pytest.fixture(scope="session")
def assets():
  from sae_jax.assets import build_all
  return build_all()


def _tiny_hf(kind: str, tie: bool = False):
  import torch
  import transformers
  common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                tie_word_embeddings=tie, rms_norm_eps=1e-5)
  torch.manual_seed(0)
  if kind == "llama":
    cfg = transformers.LlamaConfig(**common, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32})
    model = transformers.LlamaForCausalLM(cfg)
  else:
    cfg = transformers.Qwen2Config(**common, rope_theta=10000.0, use_sliding_window=False)
    model = transformers.Qwen2ForCausalLM(cfg)
  # Random init leaves biases and norms at 0/1; perturb them so the test sees every parameter.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_hf_dir(request, tmp_path_factory):
  """(HF torch model, dir with its safetensors): tiny random Llama-3 (llama3 RoPE) or Qwen2 (q/k/v bias)."""
  model = _tiny_hf(request.param)
  path = str(tmp_path_factory.mktemp(f"tiny_{request.param}"))
  model.save_pretrained(path)
  return model, path


def collect_cache(model_dir, out, source: str, layer: int = 5, shard_tokens: int = 300):
  """launch/collect_activations.py on the demo config: a cache (with its rows) of `model_dir` at `layer`."""
  import subprocess
  import sys
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "collect_activations.py"),
                         "--config=" + os.path.join(REPO, "configs", "demo_smollm2.py"),
                         f"--config.model.path={model_dir}", f"--config.data.sources=('{source}',)",
                         "--config.data.context_size=64", "--config.data.store_batch_rows=4",
                         f"--config.sae.hook_layer={layer}", f"--out={out}", f"--shard_tokens={shard_tokens}",
                         "--verbosity=-1"], capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr
  return str(out)


def selective_sae_dir(path, d_in: int, hook_layer: int = 5) -> str:
  """A random standard SAE (256 latents) in SAELens format whose features fire selectively."""
  import numpy as np
  from sae_jax.sae import SAE, SAEConfig, init_params, save_saelens
  cfg = SAEConfig(d_in=d_in, d_sae=256, hook_layer=hook_layer, exclude_special_tokens=(1, 2))
  params = jax.tree.map(np.asarray, init_params(cfg, jax.random.key(0)))
  params["b_enc"] = params["b_enc"] - 0.5  # the heuristic init fires everywhere; make it selective
  return save_saelens(str(path), SAE(params, cfg))


class CompileCounter:
  """Counts XLA backend compiles per jitted function name while active (what "one compile" means in tests)."""

  _active: list = []
  _registered = False

  def __init__(self):
    self.counts: dict[str, int] = {}

  def __enter__(self):
    if not CompileCounter._registered:
      from jax import monitoring
      monitoring.register_event_duration_secs_listener(CompileCounter._listen)
      CompileCounter._registered = True
    CompileCounter._active.append(self)
    return self

  def __exit__(self, *exc):
    CompileCounter._active.remove(self)

  @staticmethod
  def _listen(name, duration, fun_name="", **kwargs):
    del duration, kwargs
    if name == "/jax/core/compile/backend_compile_duration":
      for counter in CompileCounter._active:
        counter.counts[fun_name] = counter.counts.get(fun_name, 0) + 1

  def __getitem__(self, fun_name: str) -> int:
    return self.counts.get(f"jit({fun_name})", 0)

"""Tiny random Llama-3 / Qwen2 built by transformers: our Flax forward must match HF torch in float32."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sae_jax.generation import forward_logits, greedy_generate, left_pad
from sae_jax.models import parity
from sae_jax.models.loading import load_model
from sae_jax.models.transformer import Hooks, KVCache

# f32 on CPU: both sides do the same float32 arithmetic in a different order; 1e-4 is ~100x the observed
# difference and far below anything a wrong formula (a missing bias, a RoPE variant) produces.
TOL = 1e-4


def _tokens(b=3, t=24, seed=0):
  return np.random.RandomState(seed).randint(0, 128, (b, t))


def test_logits_and_every_hidden_state_match_hf(tiny_hf_dir):
  hf, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  tokens = _tokens()
  mask = np.ones_like(tokens, bool)
  ref_logits, ref_hidden = parity.hf_forward(hf, tokens, mask)
  capture = frozenset((layer, "resid_post") for layer in range(model.cfg.num_layers))
  out = model(jnp.asarray(tokens), hooks=Hooks(capture=capture))
  assert np.abs(np.asarray(out.logits) - ref_logits).max() <= TOL
  for layer in range(model.cfg.num_layers - 1):  # HF's last hidden state is after the final norm
    np.testing.assert_allclose(out.captured[(layer, "resid_post")], ref_hidden[layer + 1], atol=TOL)


def test_stop_after_layer_returns_only_the_site(tiny_hf_dir):
  hf, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  tokens = jnp.asarray(_tokens())
  hooks = Hooks(capture=frozenset({(1, "resid_post"), (1, "resid_mid"), (1, "mlp_out")}))
  full = model(tokens, hooks=hooks)
  short = model(tokens, hooks=hooks, stop_after_layer=1)
  assert short.logits is None
  for key in hooks.capture:
    np.testing.assert_array_equal(short.captured[key], full.captured[key])
  np.testing.assert_allclose(short.captured[(1, "resid_mid")] + short.captured[(1, "mlp_out")],
                             short.captured[(1, "resid_post")], atol=1e-6)


def test_transform_matches_an_hf_forward_hook(tiny_hf_dir):
  """Adding a vector to resid_post of layer 1 equals the same edit made by a torch hook on HF's layer 1."""
  import torch
  hf, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  vec = np.random.RandomState(1).randn(64).astype(np.float32)
  tokens = _tokens()
  handle = hf.model.layers[1].register_forward_hook(
      lambda mod, inp, out: (out[0] + torch.from_numpy(vec),) + tuple(out[1:]) if isinstance(out, tuple)
      else out + torch.from_numpy(vec))
  try:
    ref_logits, _ = parity.hf_forward(hf, tokens, np.ones_like(tokens))
  finally:
    handle.remove()
  out = model(jnp.asarray(tokens), hooks=Hooks(transforms={(1, "resid_post"): lambda x: x + vec}))
  assert np.abs(np.asarray(out.logits) - ref_logits).max() <= TOL
  plain = model(jnp.asarray(tokens))
  assert np.abs(np.asarray(plain.logits) - ref_logits).max() > 1e-2  # the edit really changed the output


def test_left_padded_batch_matches_unpadded_rows(tiny_hf_dir):
  _, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  rows = [list(_tokens(1, n, seed=n)[0]) for n in (5, 17, 11)]
  tokens, mask = left_pad(rows, pad_id=0)
  graphdef, state = nnx.split(model)
  batched = np.asarray(forward_logits(graphdef, state, tokens, mask))
  for i, row in enumerate(rows):
    single = np.asarray(model(jnp.asarray([row])).logits[0])
    np.testing.assert_allclose(batched[i, -len(row):], single, atol=TOL)


def test_long_left_padded_batch_uses_blocked_attention_and_matches_hf(tiny_hf_dir):
  """T=300 runs the causal query-block path (3 blocks); left padding must not leak into real tokens."""
  hf, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  rows = [list(_tokens(1, n, seed=n)[0]) for n in (300, 170)]
  tokens, mask = left_pad(rows, pad_id=0)
  ref_logits, _ = parity.hf_forward(hf, tokens, mask)
  graphdef, state = nnx.split(model)
  got = np.asarray(forward_logits(graphdef, state, tokens, mask))
  assert np.abs(got - ref_logits)[mask].max() <= TOL


def test_kv_cache_decode_matches_full_forward(tiny_hf_dir):
  _, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  tokens = jnp.asarray(_tokens(2, 20))
  full = np.asarray(model(tokens).logits)
  cache = KVCache.zeros(model.cfg, 2, 32, jnp.float32)
  out = model(tokens[:, :12], cache=cache)
  steps = [out.logits]
  cache = out.cache
  for t in range(12, 20):
    out = model(tokens[:, t:t + 1], cache=cache)
    cache = out.cache
    steps.append(out.logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=TOL)


def test_greedy_matches_hf_generate(tiny_hf_dir):
  import torch
  hf, path = tiny_hf_dir
  model = load_model(path, jnp.float32)
  prompt = list(_tokens(1, 9, seed=3)[0])
  with torch.no_grad():
    ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=16, do_sample=False, eos_token_id=None,
                      pad_token_id=0)[0, len(prompt):].tolist()
  assert greedy_generate(model, [prompt], 16)[0] == ref


def test_tied_embeddings(tmp_path):
  from conftest import _tiny_hf
  hf = _tiny_hf("llama", tie=True)
  hf.save_pretrained(tmp_path)
  model = load_model(str(tmp_path), jnp.float32)
  assert not hasattr(model, "lm_head")
  tokens = _tokens()
  ref_logits, _ = parity.hf_forward(hf, tokens, np.ones_like(tokens))
  assert np.abs(np.asarray(model(jnp.asarray(tokens)).logits) - ref_logits).max() <= TOL


def test_sharded_safetensors_index_loads_identically(tiny_hf_dir, tmp_path):
  hf, path = tiny_hf_dir
  hf.save_pretrained(tmp_path, max_shard_size="100KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
  a = load_model(str(tmp_path), jnp.float32)
  b = load_model(path, jnp.float32)
  for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_hub_id_without_a_hub_is_a_clear_error():
  from sae_jax.errors import UserError
  with pytest.raises(UserError, match="cannot fetch 'deepseek-ai/DeepSeek-R1-Distill-Llama-8B' from the hub"):
    load_model("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")
  with pytest.raises(UserError, match="neither a checkpoint dir, a .gguf file, nor a hub id"):
    load_model("/no/such/dir")

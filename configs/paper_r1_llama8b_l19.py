"""The paper's SAE (REFERENCE.md section 5): DeepSeek-R1-Distill-Llama-8B, resid_post of layer 19, 4096 -> 65536.

  python launch/train_sae.py --config=configs/paper_r1_llama8b_l19.py --config.model.path=/ckpt/r1_llama8b
"""

import ml_collections

D_IN, EXPANSION = 4096, 16


def _optional_bool():
  return ml_collections.FieldReference(None, field_type=bool)


def get_config():
  c = ml_collections.ConfigDict()
  c.model = dict(path="deepseek-ai/DeepSeek-R1-Distill-Llama-8B", dtype="bfloat16")
  c.mesh = dict(data=-1, fsdp=1, model=1)
  c.data = dict(
      # LMSYS-Chat-1M and OpenThoughts-114k in the DeepSeek template (REFERENCE.md 4.1), packed separately with
      # TransformerLens' tokenize_and_concatenate quirks, then mixed half and half.
      sources=("lmsys/lmsys-chat-1m#builder=lmsys,weight=1",
               "open-thoughts/OpenThoughts-114k#builder=openthoughts,config=metadata,weight=1"),
      tokenizer="",  # default: the model's tokenizer
      context_size=1024, mode="reference", add_bos=False,
      num_rows=800_000,  # 819.2M training tokens + the norm estimate, at 1024 tokens a row
      store_batch_rows=8,  # SAELens store_batch_size_prompts
      seed=42,  # of the mix of sources
      shuffle_seed=-1)  # >= 0: shuffle the packed rows as `datasets` does, then take num_rows (extraction set)
  c.activations = dict(cache_dir="", loop=False)  # cache_dir: read shards of collect_activations.py instead
  c.sae = dict(
      d_in=D_IN, d_sae=D_IN * EXPANSION, architecture="standard",
      # None: the architecture's default (standard: both off, as SAELens); overridable with true/false.
      apply_b_dec_to_input=_optional_bool(), normalize_decoder=_optional_bool(),
      model_name="deepseek-ai/DeepSeek-R1-Distill-Llama-8B", hook_layer=19, hook_site="resid_post",
      context_size=1024, prepend_bos=False, exclude_special_tokens=(128000, 128001),
      n_steps=200_000, batch_size=4096, lr=5e-5, lr_warm_up_steps=0, lr_decay_steps=40_000,
      l1_coefficient=5.0, l1_warm_up_steps=10_000, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8,
      clip_grad_norm=1.0, decoder_init_norm=0.1, normalize_activations="expected_average_only_in",
      norm_estimate="reference", n_batches_for_norm_estimate=1000, seed=42,
      # Read only by the other architectures (--config.sae.architecture=topk|batchtopk|jumprelu); SAEConfig's
      # defaults, listed so that --config.sae.k=64 etc. can override them.
      k=32, aux_k=0, aux_k_coefficient=1 / 32, dead_steps_threshold=1000, topk_threshold_lr=0.01,
      jumprelu_bandwidth=0.001, jumprelu_init_threshold=0.001, l0_coefficient=1.0, l0_warm_up_steps=10_000)
  # After training: CE loss / KL with the SAE spliced in vs clean vs zero-ablation, on the corpus's last rows.
  c.eval = dict(batches=10)
  c.trainer = dict(out_dir="runs/paper_r1_llama8b_l19", log_every=100, checkpoint_every=5000,
                   keep_checkpoints=2, buffer_half_tokens=131_072, matmul_precision="default", progress=True)
  return ml_collections.ConfigDict(c)

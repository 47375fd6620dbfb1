"""The embedded default: SmolLM2-135M-Instruct (30 layers, d 576), resid_post of layer 19, on a 2-core CPU.

Same SAE semantics as the paper, scaled to minutes: 8x expansion, small batches, a short schedule.
`launch/demo.sh` fills model.path (the converted checkpoint).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model.dtype = "float32"
  c.mesh.data = 1
  c.data.update(sources=("demo#n=600",), mode="clean", context_size=128, num_rows=0, store_batch_rows=16)
  c.activations.loop = True  # several passes over the small cached corpus
  c.sae.update(d_in=576, d_sae=576 * 8, model_name="SmolLM2-135M-Instruct", context_size=128,
               exclude_special_tokens=(0, 1, 2), n_steps=600, batch_size=512, lr=1e-3, lr_decay_steps=120,
               l1_coefficient=5.0, l1_warm_up_steps=60, n_batches_for_norm_estimate=20)
  c.eval.batches = 4
  c.trainer.update(out_dir="runs/demo/sae_train", log_every=25, checkpoint_every=100, buffer_half_tokens=8192)
  return c

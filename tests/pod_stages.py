"""The stages of a run chained in one process (one JAX start), for tests/test_multihost.py.

  python tests/pod_stages.py WORK MODEL_DIR STAGE...   (under launch/local_pod.py for a pod)

Stages, each into WORK/<stage>: convert (MODEL_DIR to the checkpoint the later stages read), collect, train_cache (from WORK/collect), train_fly (the model on the fly),
reason_score (of WORK/train_cache/sae), dashboard, diff (model vs itself), evaluate (steered by that SAE).
Every process runs every stage (SPMD) and waits for the others after each. A small config of a tiny model,
its numbers chosen to split over 8 devices.
"""

import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sae_jax import pod  # noqa: E402

pod.initialize()

from configs import demo_smollm2  # noqa: E402
from sae_jax import runs  # noqa: E402


def tiny_model(out: str, assets_hf: str) -> str:
  """A random 2-layer Llama of width 64 with SmolLM2's tokenizer (its vocabulary), as an HF dir at `out`."""
  import json
  import shutil

  import numpy as np
  from safetensors.numpy import save_file
  os.makedirs(out, exist_ok=True)
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    shutil.copy(os.path.join(assets_hf, name), out)
  cfg = json.load(open(os.path.join(assets_hf, "config.json")))
  cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, max_position_embeddings=512)
  json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
  rng = np.random.default_rng(0)
  shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], 64), "model.norm.weight": (64,)}
  for i in range(2):
    p = f"model.layers.{i}."
    shapes.update({p + "self_attn.q_proj.weight": (64, 64), p + "self_attn.k_proj.weight": (32, 64),
                   p + "self_attn.v_proj.weight": (32, 64), p + "self_attn.o_proj.weight": (64, 64),
                   p + "mlp.gate_proj.weight": (128, 64), p + "mlp.up_proj.weight": (128, 64),
                   p + "mlp.down_proj.weight": (64, 128), p + "input_layernorm.weight": (64,),
                   p + "post_attention_layernorm.weight": (64,)})
  tensors = {k: (1 + 0.1 * rng.standard_normal(s) if len(s) == 1 else 0.2 * rng.standard_normal(s)).astype(np.float32)
             for k, s in shapes.items()}
  save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
  return out


def config(model: str, **sections):
  c = demo_smollm2.get_config()
  c.model.path = model
  c.mesh.data = -1
  c.data.update(sources=("demo#n=24",), context_size=32, store_batch_rows=8)
  c.sae.update(d_in=64, d_sae=128, hook_layer=1, context_size=32, n_steps=24, batch_size=64, lr_decay_steps=0,
               l1_warm_up_steps=4, n_batches_for_norm_estimate=3)
  c.eval.batches = 1
  c.trainer.update(log_every=8, checkpoint_every=8, buffer_half_tokens=512, progress=False)
  for name, values in sections.items():
    c[name].update(values)
  return c


def main(work: str, model: str, stages: list[str]) -> None:
  out = lambda name: os.path.join(work, name)  # noqa: E731
  sae = os.path.join(out("train_cache"), "sae")
  for stage in stages:
    start = time.time()
    if stage == "convert":  # the later stages read the converted checkpoint
      import numpy as np
      from sae_jax.models import checkpoint
      model = checkpoint.convert(model, out(stage), np.float32)
    elif stage == "collect":
      runs.collect(config(model), out(stage), shard_tokens=96)
    elif stage == "train_cache":
      runs.train(config(model, activations={"cache_dir": out("collect")}, trainer={"out_dir": out(stage)}))
    elif stage == "train_fly":
      runs.train(config(model, trainer={"out_dir": out(stage)}, eval={"batches": 0}))  # train_cache splices
    elif stage == "reason_score":
      # 26 batches, the last one padded: many steps in flight is what pod.pace guards
      runs.reason_score(config(model, data={"num_rows": 203}), sae, out(stage))
    elif stage == "dashboard":
      runs.dashboard(config(model, data={"num_rows": 16}, dashboard={"top_k": 2}), sae, out(stage), features=[3, 5])
    elif stage == "diff":
      runs.diff_models(config(model, data={"num_rows": 16}), sae, out(stage), model_a=model)
    elif stage == "evaluate":
      c = config(model, tasks={"names": ("arithmetic",), "limit": 3},
                 sampling={"template": "tokenizer", "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 6},
                 engine={"slots": 8, "max_len": 160},
                 steering={"features": (3,), "max_activations": (4.0,), "strengths": (2.0,), "units": "folded"})
      runs.evaluate(c, sae, out(stage))
    else:
      raise SystemExit(f"unknown stage {stage}")
    pod.barrier(stage)
    if pod.is_writer():
      print(f"stage {stage} done in {time.time() - start:.1f}s", flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], sys.argv[3:])

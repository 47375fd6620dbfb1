"""The paper's ReasonScore extraction set: the default config of reason_score.py and diff_models.py, and what
collect_activations.py caches once so that any SAE can be scored from the cache.

  python launch/collect_activations.py --config=configs/paper_reasonscore_extraction.py \
      --config.model.path=/ckpt/r1_llama8b --out=gs://bucket/acts/extraction_l19
  python launch/reason_score.py --config.activations.cache_dir=gs://bucket/acts/extraction_l19 \
      --sae=path/to/sae --out=runs/rs

The rows are the reference's: the OpenThoughts 10k subset in the DeepSeek template, packed like
TransformerLens into 1024-token rows (its map over 4 processes, as compute_score.py ran it), shuffled with
seed 42 as `datasets` does, the first 4096 (4.19M tokens).
BOS/EOS are not cached; ReasonScore ignores them anyway. No model is set: give --config.model.path, or a cache
of its activations (--config.activations.cache_dir).
"""

from configs import paper_r1_llama8b_l19
from sae_jax import paper


def get_config():
  c = paper_r1_llama8b_l19.get_config()
  c.model.path = ""
  c.data.update(sources=(paper.EXTRACTION_SOURCE,), num_rows=paper.EXTRACTION_ROWS,
                shuffle_seed=paper.EXTRACTION_SHUFFLE_SEED, num_proc=paper.EXTRACTION_NUM_PROC)
  return c

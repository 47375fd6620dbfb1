"""Activations of the paper's ReasonScore extraction set, to collect once and score any SAE from the cache.

  python launch/collect_activations.py --config=configs/paper_reasonscore_extraction.py \
      --config.model.path=/ckpt/r1_llama8b --out=gs://bucket/acts/extraction_l19
  python launch/reason_score.py --activations=gs://bucket/acts/extraction_l19 --sae=path/to/sae --out=runs/rs

The rows are REFERENCE.md 6.1's: the OpenThoughts 10k subset in the DeepSeek template, packed like
TransformerLens into 1024-token rows, shuffled with seed 42 as `datasets` does, the first 4096 (4.19M tokens).
BOS/EOS are not cached; ReasonScore ignores them anyway.
"""

from configs import paper_r1_llama8b_l19 as paper


def get_config():
  c = paper.get_config()
  c.data.sources = ("open-thoughts/OpenThoughts-114k#builder=openthoughts_subset,config=metadata",)
  c.data.num_rows = 4096
  c.data.shuffle_seed = 42
  return c

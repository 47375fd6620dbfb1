"""Text corpora for SAE training and feature extraction: the reference's builders, sources, packing, demo.

text     exact DeepSeek-R1 strings of the reference's LMSYS / OpenThoughts builders and the extraction subset
sources  hub ids, save_to_disk dirs, jsonl/json/parquet (local, globs, gs://) -> Dataset with a `text` column
packing  text -> int32 rows of context_size: `reference` (TransformerLens 20-chunk quirk) or `clean`; mixing
demo     an offline worked-reasoning corpus in the demo model's chat template
"""

from sae_jax.data.demo import REASONING_WORDS, demo_corpus, demo_problems
from sae_jax.data.packing import (MODES, batch_rows, build_rows, iter_rows, load_tokenizer, map_batch_bounds,
                                  mix_rows, pack_rows, reference_batch_rows, reference_batch_stream,
                                  reference_tokenizer, sample_rows, token_rows)
from sae_jax.data.sources import BUILDERS, SourceSpec, load_text_source, parse_source
from sae_jax.data.text import (ASSISTANT, BOS, EOS, OPENTHOUGHTS_DOMAINS, OPENTHOUGHTS_SYSTEM, USER,
                               filter_openthoughts_domains, lmsys_conversation_text, lmsys_corpus,
                               openthoughts_corpus, openthoughts_subset, openthoughts_text,
                               openthoughts_user_prompt)

__all__ = [
  "ASSISTANT", "BOS", "BUILDERS", "EOS", "MODES", "OPENTHOUGHTS_DOMAINS", "OPENTHOUGHTS_SYSTEM", "REASONING_WORDS",
  "USER", "SourceSpec", "batch_rows", "build_rows", "demo_corpus", "demo_problems", "filter_openthoughts_domains",
  "iter_rows", "lmsys_conversation_text", "lmsys_corpus", "load_text_source", "load_tokenizer", "map_batch_bounds",
  "mix_rows", "openthoughts_corpus", "openthoughts_subset", "openthoughts_text", "openthoughts_user_prompt",
  "pack_rows", "parse_source", "reference_batch_rows", "reference_batch_stream", "reference_tokenizer",
  "sample_rows", "token_rows",
]

"""The token rows a run reads (config section `data`).

Defaults are the paper's training corpus: LMSYS-Chat-1M and OpenThoughts-114k in the DeepSeek template, packed
separately with TransformerLens' quirks, mixed half and half. The paper's extraction set is one source, shuffled
as `datasets` does (`shuffle_seed` >= 0), then its first rows.
"""

import dataclasses

import numpy as np

from sae_jax import paper
from sae_jax.data.packing import MODES, build_rows, extraction_rows
from sae_jax.data.tokenizers import load_tokenizer
from sae_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """Text sources (`PATH#key=value,...`, see `parse_source`) packed into int32 rows of `context_size`."""

  sources: tuple[str, ...] = paper.TRAINING_SOURCES
  tokenizer: str = ""  # dir or hub id; "": the model's
  context_size: int = 1024
  mode: str = "reference"  # TransformerLens' 20-chunk BOS quirk; "clean" joins documents with EOS
  num_proc: int = paper.TRAINING_NUM_PROC  # reference mode: `datasets.map` processes (TL's 1000-doc batches
  #   restart at each process's shard; computed in one process here)
  add_bos: bool = False
  num_rows: int = paper.TRAINING_ROWS  # 0: every row
  store_batch_rows: int = 8  # rows per model call (SAELens' store_batch_size_prompts)
  seed: int = 42  # of the mix of sources
  shuffle_seed: int = -1  # >= 0: shuffle the packed rows of one source as `datasets` does (the extraction set)

  def __post_init__(self):
    object.__setattr__(self, "sources", tuple(self.sources))
    if not self.sources:
      raise UserError("data.sources is empty: give at least one text source")
    if self.mode not in MODES:
      raise UserError(f"data.mode must be one of {list(MODES)}, got {self.mode!r}")
    for name in ("context_size", "store_batch_rows", "num_proc"):
      if getattr(self, name) <= 0:
        raise UserError(f"data.{name} must be positive, got {getattr(self, name)}")
    if self.num_rows < 0:
      raise UserError(f"data.num_rows must be >= 0 (0: all), got {self.num_rows}")

  def rows(self, tokenizer) -> np.ndarray:
    """The packed corpus [rows, context_size] (int32), deterministic given the config."""
    tokenizer = load_tokenizer(tokenizer)
    if self.shuffle_seed >= 0:
      if self.add_bos or len(self.sources) != 1:
        raise UserError("data.shuffle_seed (the extraction set's row shuffle) takes one source and add_bos=False")
      return extraction_rows(list(self.sources), tokenizer, self.context_size, self.mode, self.num_rows,
                             self.shuffle_seed, self.num_proc)
    rows = build_rows(list(self.sources), tokenizer, context_size=self.context_size, mode=self.mode,
                      add_bos=self.add_bos, num_rows=self.num_rows or None, seed=self.seed,
                      num_proc=self.num_proc)
    if len(rows) == 0:
      raise UserError(f"the corpus {list(self.sources)} gave no rows of {self.context_size} tokens")
    return rows

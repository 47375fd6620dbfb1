"""The reasoning vocabulary of ReasonScore: strings grouped into words, each string as a token-id sequence.

The paper's 34 strings (the reference's `extraction/reason_tokens.json`) group into 10 words by
`s.lstrip().lower()`, in order of first appearance. A string matches wherever its ids occur contiguously, so
multi-token entries such as " let me" need every id in a row.
"""

import dataclasses
import json

import numpy as np

from sae_jax import paper
from sae_jax.errors import UserError

DEFAULT_REASON_STRINGS = paper.REASON_STRINGS


def group_key(s: str) -> str:
  """The word a string counts for: leading whitespace and case do not matter."""
  return s.lstrip().lower()


def load_reason_strings(path: str) -> tuple[str, ...]:
  """The strings of a vocabulary JSON file (a list of strings, like the reference's reason_tokens.json)."""
  try:
    with open(path) as f:
      strings = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read the reasoning vocabulary {path}: {e}") from e
  if not isinstance(strings, list) or not strings or not all(isinstance(s, str) for s in strings):
    raise UserError(f"reasoning vocabulary {path}: expected a non-empty JSON list of strings")
  return tuple(strings)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Strings, their token ids and their groups. Build with `from_tokenizer`, or directly from stored ids."""

  strings: tuple[str, ...]
  token_ids: tuple[tuple[int, ...], ...]

  def __post_init__(self):
    object.__setattr__(self, "strings", tuple(self.strings))
    object.__setattr__(self, "token_ids", tuple(tuple(int(i) for i in ids) for ids in self.token_ids))
    if not self.strings:
      raise UserError("the reasoning vocabulary is empty")
    if len(self.strings) != len(self.token_ids):
      raise UserError(f"{len(self.strings)} vocabulary strings but {len(self.token_ids)} id sequences")
    for s, ids in zip(self.strings, self.token_ids):
      if not ids:
        raise UserError(f"vocabulary string {s!r} tokenizes to no ids")
      if not group_key(s):
        raise UserError(f"vocabulary string {s!r} is blank: it names no word")
      if min(ids) < 0:
        raise UserError(f"vocabulary string {s!r} has negative token ids {ids}")

  @classmethod
  def from_tokenizer(cls, tokenizer, strings=DEFAULT_REASON_STRINGS) -> "Vocabulary":
    """Ids as the reference makes them: `tokenizer.encode(s, add_special_tokens=False)`."""
    strings = tuple(strings)
    return cls(strings, tuple(tokenizer.encode(s, add_special_tokens=False) for s in strings))

  @property
  def group_names(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(group_key(s) for s in self.strings))

  @property
  def string_groups(self) -> np.ndarray:
    """[n_strings] int: the group index of each string."""
    index = {g: i for i, g in enumerate(self.group_names)}
    return np.array([index[group_key(s)] for s in self.strings], np.int64)

  def padded_ids(self) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n_strings, max_len] padded with -1, lengths [n_strings]): the array form the masks use."""
    lens = np.array([len(ids) for ids in self.token_ids], np.int64)
    ids = np.full((len(lens), int(lens.max())), -1, np.int64)
    for i, seq in enumerate(self.token_ids):
      ids[i, :len(seq)] = seq
    return ids, lens

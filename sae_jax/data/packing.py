"""Text -> fixed rows of `context_size` token ids, in two modes, streamed for corpora of any size.

* `reference`: TransformerLens `tokenize_and_concatenate` as the paper ran it (sae_jax/paper.md, "Packing"):
  per map batch of 1000 docs, join with the EOS *string*, cut the string into 20 equal character chunks,
  tokenize each chunk with the tokenizer's special tokens (so each chunk opens with BOS on Llama-3),
  drop pad ids, reshape, drop the batch's remainder. `datasets.map(num_proc=n)` first cuts the dataset
  into n contiguous shards and batches inside each shard, so batch boundaries depend on num_proc (the
  training prepare scripts ran TL's default 10, the extraction scripts 4); we compute the same boundaries in
  one process. Use it to match the released SAE's training data bit for bit.
* `clean`: each document tokenized without special tokens, documents joined by one EOS id, rows cut
  from the one stream (an optional BOS opens each row); only the stream's tail is lost. No mid-word
  splits, no stray BOS.

A tokenized source (a `tokens` column, see `sources`) is not packed: its rows are cut to `context_size`.

Rows come out as int32 numpy arrays, one at a time (`iter_rows`, `token_rows`), in batches
(`batch_rows`), or all at once (`pack_rows`, `build_rows`). Everything is deterministic.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from typing import Iterable, Iterator, Sequence

import numpy as np

from sae_jax import pod
from sae_jax.data.sources import as_spec, load_text_source
from sae_jax.data.tokenizers import load_tokenizer
from sae_jax.errors import UserError

MODES = ("clean", "reference")
TL_NUM_CHUNKS = 20  # tokenize_and_concatenate's fixed number of character chunks per map batch
TL_PAD = "<PAD>"  # the special token the reference adds when pad == eos (and TL when there is no pad)


def reference_tokenizer(tokenizer):
  """A copy of `tokenizer` with the reference's pad fix: add a `<PAD>` special token if pad is None or == eos.

  The prepare scripts do this so that dropping pad ids does not also drop EOS. Like the reference, a
  literal "<PAD>" in the text then becomes that id and is dropped with the padding.
  """
  tokenizer = load_tokenizer(tokenizer)
  if tokenizer.eos_token is None:
    raise UserError("reference packing needs a tokenizer with an EOS token")
  if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"pad_token": TL_PAD})
  return tokenizer


# ---------------------------------------------------------------------------------------------------------
# Documents in map batches


def _texts(docs):
  """A Dataset's `text` column stays lazy (sliced per batch); other sized sequences are used as is."""
  if hasattr(docs, "column_names"):
    if "text" not in docs.column_names:
      raise UserError(f"documents need a 'text' column; the dataset has {docs.column_names}")
    return docs.select_columns(["text"])
  return docs


def _slice(texts, start: int, end: int) -> list[str]:
  if hasattr(texts, "column_names"):
    return list(texts[start:end]["text"])
  return list(texts[start:end])


def map_batch_bounds(num_docs: int, batch_size: int = 1000, num_proc: int | None = 10) -> list[tuple[int, int]]:
  """(start, end) of each `datasets.map(batched=True, batch_size, num_proc)` batch over num_docs rows.

  `datasets` lowers num_proc to the row count, splits the rows into num_proc contiguous shards (the first
  `num_docs % num_proc` get one extra row) and batches inside each shard.
  """
  if batch_size <= 0:
    raise UserError(f"batch_size must be positive, got {batch_size}")
  shards = max(1, min(num_proc or 1, num_docs))
  div, mod = divmod(num_docs, shards)
  bounds = []
  for rank in range(shards):
    start = div * rank + min(rank, mod)
    end = start + div + (1 if rank < mod else 0)
    bounds += [(b, min(b + batch_size, end)) for b in range(start, end, batch_size)]
  return bounds


def _doc_batches(docs, batch_size: int, num_proc: int | None = None) -> Iterator[list[str]]:
  if isinstance(docs, str):
    raise UserError("documents must be a list of strings or a Dataset, not one string")
  texts = _texts(docs)
  if hasattr(texts, "__len__") and hasattr(texts, "__getitem__"):
    for start, end in map_batch_bounds(len(texts), batch_size, num_proc):
      yield _slice(texts, start, end)
    return
  if num_proc not in (None, 1):
    raise UserError("reference packing with num_proc > 1 needs a sized corpus (list or Dataset), not a stream")
  it = iter(texts)
  while batch := list(itertools.islice(it, batch_size)):
    yield batch


def _check_texts(batch: list) -> None:
  for t in batch:
    if not isinstance(t, str):
      raise UserError(f"documents must be strings, got {type(t).__name__}: {str(t)[:60]!r}")


# ---------------------------------------------------------------------------------------------------------
# reference mode


def reference_batch_stream(texts: Sequence[str], tokenizer) -> np.ndarray:
  """The token stream TL builds for one map batch (before reshaping); `tokenizer` from `reference_tokenizer`.

  Join with the EOS string, cut into 20 chunks of ceil(len/20) characters (mid-word, even mid-EOS-string),
  tokenize each chunk with the tokenizer's special tokens, concatenate, drop pad ids. A batch of blank
  text gives nothing.
  """
  full = tokenizer.eos_token.join(texts)
  if not full.strip():
    return np.zeros(0, np.int64)
  size = (len(full) - 1) // TL_NUM_CHUNKS + 1
  chunks = [full[i * size:(i + 1) * size] for i in range(TL_NUM_CHUNKS)]
  ids = tokenizer(chunks)["input_ids"]  # add_special_tokens defaults to True, as in TL
  stream = np.fromiter(itertools.chain.from_iterable(ids), np.int64)
  return stream[stream != tokenizer.pad_token_id]


def reference_batch_rows(texts: Sequence[str], tokenizer, context_size: int = 1024, add_bos_token: bool = False,
                         short_batch: str = "pad") -> np.ndarray:
  """One map batch -> rows [k, context_size] as TL's `tokenize_function` (remainder dropped).

  A batch with fewer tokens than one row: TL pads it to one row with the pad id ("pad", exact; that id is
  outside the model's vocabulary when the reference added `<PAD>`), or "drop" it.
  """
  stream = reference_batch_stream(texts, tokenizer)
  seq_len = context_size - 1 if add_bos_token else context_size
  if len(stream) == 0:
    return np.zeros((0, context_size), np.int32)
  if len(stream) < seq_len:
    if short_batch == "drop":
      return np.zeros((0, context_size), np.int32)
    warnings.warn(f"reference packing: a map batch of {len(texts)} docs has {len(stream)} < {seq_len} tokens; "
                  f"padded to one row with pad id {tokenizer.pad_token_id}, as TransformerLens does", stacklevel=2)
    stream = np.concatenate([stream, np.full(seq_len - len(stream), tokenizer.pad_token_id, np.int64)])
  k = len(stream) // seq_len
  rows = stream[:k * seq_len].reshape(k, seq_len)
  if add_bos_token:
    rows = np.concatenate([np.full((k, 1), tokenizer.bos_token_id, np.int64), rows], axis=1)
  return rows.astype(np.int32)


def iter_reference_blocks(docs, tokenizer, context_size: int = 1024, add_bos_token: bool = False,
                          batch_size: int = 1000, num_proc: int | None = 10,
                          short_batch: str = "pad") -> Iterator[np.ndarray]:
  """TL `tokenize_and_concatenate` over all docs: yields each map batch's rows [k, context_size]."""
  if short_batch not in ("pad", "drop"):
    raise UserError(f"short_batch must be 'pad' or 'drop', got {short_batch!r}")
  tok = reference_tokenizer(tokenizer)
  if add_bos_token and tok.bos_token_id is None:
    raise UserError("add_bos_token needs a tokenizer with a BOS token")
  def block(batch):
    _check_texts(batch)
    return reference_batch_rows(batch, tok, context_size, add_bos_token, short_batch)

  for rows in pod.shared_map(block, _doc_batches(docs, batch_size, num_proc)):  # in a pod: each its share
    if len(rows):
      yield rows


# ---------------------------------------------------------------------------------------------------------
# clean mode


def iter_clean_blocks(docs, tokenizer, context_size: int = 1024, add_bos: bool = False,
                      batch_size: int = 1000) -> Iterator[np.ndarray]:
  """doc0 EOS doc1 EOS doc2 ... (no special tokens added) cut into rows; BOS opens each row if add_bos.

  Rows are cut from one continuous stream across batches, so only the final partial row is lost.
  """
  tok = load_tokenizer(tokenizer)
  eos, bos = tok.eos_token_id, tok.bos_token_id
  if eos is None:
    raise UserError("clean packing needs a tokenizer with an EOS token to separate documents")
  if add_bos and bos is None:
    raise UserError("add_bos needs a tokenizer with a BOS token")
  body = context_size - 1 if add_bos else context_size

  def joined(batch):
    """A batch's documents joined by EOS (an EOS before each but the first)."""
    _check_texts(batch)
    pieces = []
    for ids in tok(batch, add_special_tokens=False)["input_ids"]:
      pieces += [np.array([eos], np.int64)] if pieces else []
      pieces.append(np.asarray(ids, np.int64))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)

  carry = np.zeros(0, np.int64)
  first = True
  for ids in pod.shared_map(joined, _doc_batches(docs, batch_size)):  # in a pod: each tokenizes its share
    stream = np.concatenate([carry, ids] if first else [carry, np.array([eos], np.int64), ids])
    first = False
    k = len(stream) // body
    carry = stream[k * body:]
    if k:
      rows = stream[:k * body].reshape(k, body)
      if add_bos:
        rows = np.concatenate([np.full((k, 1), bos, np.int64), rows], axis=1)
      yield rows.astype(np.int32)


# ---------------------------------------------------------------------------------------------------------
# tokenized sources


def iter_token_blocks(ds, context_size: int = 1024, batch_size: int = 1000) -> Iterator[np.ndarray]:
  """The `tokens` rows of a Dataset, each cut to its first `context_size` ids, as SAELens reads a pretokenized
  dataset; a shorter row is an error (SAELens refuses such a dataset too)."""
  ds = ds.select_columns(["tokens"]).with_format("numpy")
  for start in range(0, len(ds), batch_size):
    batch = ds[start:start + batch_size]["tokens"]
    rows = [np.asarray(r) for r in batch] if batch.dtype == object else np.asarray(batch)
    short = [i for i, r in enumerate(rows) if len(r) < context_size]
    if short:
      raise UserError(f"tokenized row {start + short[0]} has {len(rows[short[0]])} ids, fewer than "
                      f"data.context_size={context_size}")
    yield np.stack([r[:context_size] for r in rows]).astype(np.int32)


# ---------------------------------------------------------------------------------------------------------
# Rows


def iter_rows(docs, tokenizer, context_size: int = 1024, mode: str = "clean", add_bos: bool = False,
              batch_size: int = 1000, num_proc: int | None = 10, short_batch: str = "pad") -> Iterator[np.ndarray]:
  """Rows [context_size] int32 of one corpus (Dataset with `text`, list of str, or iterable of str).

  mode "reference" uses `add_bos` as TL's add_bos_token (the paper: False) and `num_proc`/`short_batch`;
  mode "clean" ignores them. A Dataset with a `tokens` column is read as rows (`iter_token_blocks`).
  Raises UserError at the end if the corpus gave no full row.
  """
  if mode not in MODES:
    raise UserError(f"unknown packing mode {mode!r}: expected one of {MODES}")
  if context_size < 2:
    raise UserError(f"context_size must be at least 2, got {context_size}")
  if hasattr(docs, "column_names") and "tokens" in docs.column_names:
    if add_bos:
      raise UserError("add_bos applies to packing text; a tokenized source's rows are used as they are")
    blocks = iter_token_blocks(docs, context_size, batch_size)
  elif mode == "reference":
    blocks = iter_reference_blocks(docs, tokenizer, context_size, add_bos, batch_size, num_proc, short_batch)
  else:
    blocks = iter_clean_blocks(docs, tokenizer, context_size, add_bos, batch_size)
  count = 0
  for block in blocks:
    for row in block:
      count += 1
      yield row
  if count == 0:
    raise UserError(f"the corpus is empty or shorter than one row of {context_size} tokens")


def pack_rows(docs, tokenizer, context_size: int = 1024, mode: str = "clean", add_bos: bool = False,
              **kwargs) -> np.ndarray:
  """All rows of one corpus as int32 [rows, context_size] (see `iter_rows`)."""
  return _stack(iter_rows(docs, tokenizer, context_size, mode, add_bos, **kwargs), context_size)


def mix_rows(row_iters: Sequence[Iterable[np.ndarray]], weights: Sequence[float] | None = None, seed: int = 0,
             stop: str = "first_exhausted") -> Iterator[np.ndarray]:
  """Interleave row streams: each next row comes from stream i with probability w_i / sum(w).

  Weights are shares of rows, i.e. of tokens. stop="first_exhausted" ends with the first empty stream
  (shares hold to the end); "all_exhausted" drops empty streams, renormalises and goes on.
  """
  iters = [iter(r) for r in row_iters]
  weights = np.ones(len(iters)) if weights is None else np.asarray(weights, np.float64)
  if len(weights) != len(iters) or not len(iters):
    raise UserError(f"mix_rows needs one weight per stream, got {len(weights)} weights for {len(iters)} streams")
  if np.any(~np.isfinite(weights)) or np.any(weights <= 0):
    raise UserError(f"mix weights must be positive, got {weights.tolist()}")
  if stop not in ("first_exhausted", "all_exhausted"):
    raise UserError(f"stop must be 'first_exhausted' or 'all_exhausted', got {stop!r}")
  if len(iters) == 1:
    yield from iters[0]
    return
  rng = np.random.default_rng(seed)
  live = list(range(len(iters)))
  while live:
    p = weights[live] / weights[live].sum()
    i = live[int(rng.choice(len(live), p=p))]
    row = next(iters[i], None)
    if row is None:
      if stop == "first_exhausted":
        return
      live.remove(i)
      continue
    yield row


def batch_rows(rows: Iterable[np.ndarray], batch_size: int, drop_last: bool = True) -> Iterator[np.ndarray]:
  """Rows -> int32 batches [batch_size, context] (the last partial batch is dropped unless drop_last=False)."""
  if batch_size <= 0:
    raise UserError(f"batch_size must be positive, got {batch_size}")
  it = iter(rows)
  while batch := list(itertools.islice(it, batch_size)):
    if len(batch) < batch_size and drop_last:
      return
    yield np.stack(batch).astype(np.int32, copy=False)


def token_rows(sources, tokenizer, context_size: int = 1024, mode: str = "clean", add_bos: bool = False,
               seed: int = 0, stop: str = "first_exhausted", cache_dir: str | None = None,
               **kwargs) -> Iterator[np.ndarray]:
  """Rows from one or several sources (SourceSpec / "PATH#opts" strings), mixed by their weights.

  Each source is packed on its own (as the reference tokenized LMSYS and OpenThoughts separately) and the
  row streams are interleaved by `mix_rows(seed=seed)`. Same arguments -> same rows.
  """
  if isinstance(sources, (str, dict)) or not isinstance(sources, Sequence):
    sources = [sources]
  if not sources:
    raise UserError("no data source given")
  specs = [as_spec(s) for s in sources]
  tok = load_tokenizer(tokenizer)
  datasets_ = [load_text_source(s, tokenizer=tok, cache_dir=cache_dir) for s in specs]
  streams = [iter_rows(ds, tok, context_size, mode, add_bos, **kwargs) for ds in datasets_]
  yield from mix_rows(streams, [s.weight for s in specs], seed=seed, stop=stop)


def build_rows(sources, tokenizer, context_size: int = 1024, mode: str = "clean", add_bos: bool = False,
               num_rows: int | None = None, **kwargs) -> np.ndarray:
  """`token_rows` materialised: int32 [rows, context_size], at most num_rows of them."""
  rows = token_rows(sources, tokenizer, context_size, mode, add_bos, **kwargs)
  if num_rows is not None:
    if num_rows <= 0:
      raise UserError(f"num_rows must be positive, got {num_rows}")
    rows = itertools.islice(rows, num_rows)
  return _stack(rows, context_size)


def sample_rows(rows: np.ndarray, num_rows: int, seed: int = 0) -> np.ndarray:
  """num_rows distinct rows in random order: the reference's `select(random.sample(...))`, but seeded."""
  if num_rows > len(rows):
    raise UserError(f"cannot sample {num_rows} rows from {len(rows)}")
  return rows[np.random.default_rng(seed).permutation(len(rows))[:num_rows]]


def _stack(rows: Iterable[np.ndarray], context_size: int) -> np.ndarray:
  out = list(rows)
  return np.stack(out).astype(np.int32, copy=False) if out else np.zeros((0, context_size), np.int32)


def extraction_rows(sources, tokenizer, context_size: int = 1024, mode: str = "reference", n_rows: int = 0,
                    shuffle_seed: int = 42, num_proc: int = 4) -> np.ndarray:
  """The reference's extraction rows: packed, shuffled like `datasets.Dataset.shuffle(seed)`, first `n_rows`.

  `shuffle_seed < 0` keeps corpus order (the dashboards read the first rows unshuffled); `n_rows=0` keeps all.
  """
  import datasets
  if n_rows < 0:
    raise UserError(f"n_rows must be >= 0, got {n_rows}")
  unshuffled_head = n_rows if shuffle_seed < 0 and n_rows else None  # no shuffle: pack only what is used
  rows = build_rows(list(sources), tokenizer, context_size=context_size, mode=mode, num_rows=unshuffled_head,
                    num_proc=num_proc)
  if len(rows) == 0:
    raise UserError(f"the corpus {list(sources)} gave no rows of {context_size} tokens")
  if shuffle_seed >= 0:
    order = datasets.Dataset.from_dict({"i": np.arange(len(rows))}).shuffle(seed=shuffle_seed)["i"]
    rows = rows[np.asarray(order)]
  return rows[:n_rows] if n_rows else rows

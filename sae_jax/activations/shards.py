"""Cached activations: fixed-size .npy shards plus a manifest; a shard exists only once complete.

The manifest lists finished shards with the data-stream position after each one, so a killed collection
resumes exactly at the first missing shard and the trainer never reads a partial file. Paths may be local
or any fsspec URL (`gs://bucket/acts` with gcsfs installed): locally a file is written to a temp name and
renamed; on object stores an upload becomes visible only when complete, and the manifest is written last.

The shards hold the activations of the kept tokens (all but `meta["exclude_ids"]`) in row order. A cache may
also store the token rows it ran (`rows.npy`); with them `CachedRows` gives passes that need each token and its
neighbours (ReasonScore, diffing) [B, L] batches without running the model.
"""

import dataclasses
import hashlib
import io
import json
import os

import numpy as np

from sae_jax import io as sio
from sae_jax.errors import UserError

MANIFEST = "manifest.json"
ROWS_FILE = "rows.npy"


@dataclasses.dataclass(frozen=True)
class ActivationsConfig:
  """Where training reads activations (config section `activations`)."""

  cache_dir: str = ""  # shards of collect_activations.py (local or fsspec URL) instead of running the model
  loop: bool = False  # when the data runs out, start it again as SAELens does (else a run must fit in one pass)


def read_manifest(path: str) -> dict:
  fs, root = sio.filesystem(path)
  file = sio.join(root, MANIFEST)
  try:
    return json.loads(fs.cat_file(file))
  except FileNotFoundError:
    raise UserError(f"no activation cache at {path} (missing {MANIFEST})") from None
  except json.JSONDecodeError:
    raise UserError(f"corrupted manifest {sio.join(path, MANIFEST)}") from None


def _npy_bytes(a: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, a)
  return buf.getvalue()


def rows_digest(rows: np.ndarray) -> str:
  """sha256 of the int32 token rows: a resumed or paired cache must have run exactly these rows."""
  return hashlib.sha256(np.ascontiguousarray(rows, np.int32).tobytes()).hexdigest()


def _same_setting(old, new) -> bool:
  """Equal, or the same existing local path written two ways (relative and absolute, say)."""
  if old == new:
    return True
  paths = [v for v in (old, new) if isinstance(v, str) and not sio.is_url(v) and os.path.exists(v)]
  return len(paths) == 2 and os.path.realpath(old) == os.path.realpath(new)


def read_rows(path: str, meta: dict) -> np.ndarray:
  """The token rows of the cache at `path`, checked against the digest in its manifest's `meta`."""
  fs, root = sio.filesystem(path)
  try:
    rows = np.load(io.BytesIO(fs.cat_file(sio.join(root, ROWS_FILE))), allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise UserError(f"cannot read the token rows of {path}: {e}") from None
  if rows_digest(rows) != meta["rows_sha256"]:
    raise UserError(f"{sio.join(path, ROWS_FILE)} does not match its manifest (digest differs)")
  return rows


def fill_cache(source, writer: "ShardWriter", max_batches: int = 0, progress=None) -> dict:
  """Runs `source` (an `ActivationSource`) from the writer's resume point into its shards; the manifest.

  `max_batches` > 0 stops after that many model batches; `progress(batches_done, total)` after each.
  """
  resume_batch, skip = writer.resume_point
  source.seek(resume_batch)
  total = min(max_batches or source.batches_per_epoch, source.batches_per_epoch)
  while source.position < total:
    acts, keep = source()
    writer.add(np.asarray(acts)[keep][skip:], batch_end=source.position)
    skip = 0
    if progress is not None:
      progress(source.position, total)
  return writer.finish()


class ShardWriter:
  """Collects host activations and writes `shard_NNNNNN.npy` of exactly `shard_tokens` rows.

  With `rows` (the token rows [n, L] the activations come from, in order) the cache also stores them, and
  their digest joins `meta`, so resuming on other rows is refused.
  """

  def __init__(self, path: str, shard_tokens: int, d: int, meta: dict, rows: np.ndarray | None = None):
    self.path, self.shard_tokens, self.d = path, shard_tokens, d
    self.fs, self.root = sio.filesystem(path)
    self.fs.makedirs(self.root, exist_ok=True)
    if rows is not None:
      rows = np.asarray(rows)
      if rows.ndim != 2:
        raise UserError(f"token rows must be [rows, length], got shape {rows.shape}")
      meta = {**meta, "rows_sha256": rows_digest(rows), "rows_shape": [int(n) for n in rows.shape]}
    if self.fs.exists(sio.join(self.root, MANIFEST)):
      self.manifest = read_manifest(path)
      old = {**self.manifest["meta"], "d": self.manifest["d"], "shard_tokens": self.manifest["shard_tokens"]}
      new = {**meta, "d": d, "shard_tokens": shard_tokens}
      differ = [k for k in new if not _same_setting(old.get(k), new[k])]
      if differ:
        changes = "; ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in differ)
        raise UserError(f"{path} holds a cache made with other settings ({changes}): resume it with the same "
                        "ones, or use another --out")
    else:
      self.manifest = {"d": d, "shard_tokens": shard_tokens, "meta": meta, "shards": [], "done": False}
    if rows is not None and not self.fs.exists(sio.join(self.root, ROWS_FILE)):  # before any shard refers to it
      sio.write_bytes(sio.join(self.root, ROWS_FILE), _npy_bytes(rows.astype(np.int32)), fs=self.fs)
    elif rows is not None:
      read_rows(path, meta)  # a resumed run appends to these rows: they must be the ones the manifest names
    self.pending: list[np.ndarray] = []
    self.pending_rows = 0

  @property
  def resume_point(self) -> tuple[int, int]:
    """(batch to restart the data stream at, kept activations of that batch already in shards)."""
    if not self.manifest["shards"]:
      return 0, 0
    last = self.manifest["shards"][-1]
    return last["resume_batch"], last["resume_skip"]

  def add(self, acts: np.ndarray, batch_end: int) -> None:
    """Adds the kept activations of data batch `batch_end - 1`.

    Whatever a shard leaves over always lies within this last batch (the pending rows before it are fewer
    than a shard), so a resumed run restarts at this batch and skips what the shards already hold.
    """
    acts = np.asarray(acts, np.float32)
    self.pending.append(acts)
    self.pending_rows += len(acts)
    while self.pending_rows >= self.shard_tokens:
      block = np.concatenate(self.pending)
      rest = block[self.shard_tokens:]
      resume = (batch_end - 1, len(acts) - len(rest)) if len(rest) else (batch_end, 0)
      self._write(block[: self.shard_tokens], resume)
      self.pending, self.pending_rows = ([rest] if len(rest) else []), len(rest)

  def _write(self, block: np.ndarray, resume: tuple[int, int]) -> None:
    index = len(self.manifest["shards"])
    name = f"shard_{index:06d}.npy"
    data = _npy_bytes(block)
    sio.write_bytes(sio.join(self.root, name), data, fs=self.fs)
    self.manifest["shards"].append({"file": name, "tokens": int(len(block)), "resume_batch": int(resume[0]),
                                    "resume_skip": int(resume[1]), "bytes": len(data)})
    self._write_manifest()

  def _write_manifest(self) -> None:
    sio.write_bytes(sio.join(self.root, MANIFEST), json.dumps(self.manifest, indent=1).encode(), fs=self.fs)

  def finish(self) -> dict:
    """Marks the cache complete; a partial last shard is dropped (fixed shard size keeps reads static)."""
    self.manifest["done"] = True
    self._write_manifest()
    return self.manifest


class ShardReader:
  """Yields (activations [n, d], keep [n]) per shard, in order, checking each shard against the manifest."""

  def __init__(self, path: str, d: int | None = None, start_shard: int = 0):
    self.path, self.manifest = path, read_manifest(path)
    self.fs, self.root = sio.filesystem(path)
    if d is not None and self.manifest["d"] != d:
      raise UserError(f"activation cache {path} has width {self.manifest['d']}, the SAE expects d_in {d}")
    if not self.manifest["shards"]:
      raise UserError(f"activation cache {path} has no complete shard")
    self.position = start_shard

  def seek(self, position: int) -> None:
    """`position` counts shards read (0: the first again)."""
    self.position = position

  def __call__(self):
    shards = self.manifest["shards"]
    if self.position >= len(shards):
      return None
    info = shards[self.position]
    file = sio.join(self.root, info["file"])
    try:
      data = self.fs.cat_file(file)
      acts = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      raise UserError(f"corrupted shard {file}: {e}") from None
    if acts.shape != (info["tokens"], self.manifest["d"]) or len(data) != info["bytes"]:
      raise UserError(f"corrupted shard {file}: shape {acts.shape}, manifest says "
                      f"({info['tokens']}, {self.manifest['d']})")
    self.position += 1
    return acts, np.ones(len(acts), bool)


class CachedRows:
  """The token rows of a cache and, in order, their site activations as [B, L, d] batches.

  `rows` holds the rows whose kept tokens all lie in complete shards (a partial last shard is never written).
  Positions of excluded ids (BOS/EOS by default) were not cached and come back as zeros, so a caller must
  leave those ids out of every statistic: `check_ignored(ignore_ids)` says so before any work.
  """

  def __init__(self, path: str, d: int | None = None):
    self.path = path
    self.manifest = read_manifest(path)
    meta = self.manifest["meta"]
    if "rows_sha256" not in meta:
      raise UserError(f"activation cache {path} has no token rows (collected before rows were stored); "
                      "collect it again with launch/collect_activations.py")
    if d is not None and self.manifest["d"] != d:
      raise UserError(f"activation cache {path} has width {self.manifest['d']}, the SAE expects d_in {d}")
    rows = read_rows(path, meta)
    self.exclude_ids = tuple(int(i) for i in meta.get("exclude_ids", ()))
    kept = np.cumsum((~np.isin(rows, self.exclude_ids)).sum(axis=1))
    cached = sum(s["tokens"] for s in self.manifest["shards"])
    self.rows = rows[:int(np.searchsorted(kept, cached, side="right"))]
    if len(self.rows) == 0:
      raise UserError(f"activation cache {path} holds no complete row ({cached} activations cached)")

  @property
  def meta(self) -> dict:
    return self.manifest["meta"]

  @property
  def tokenizer(self) -> str:
    """The tokenizer the rows were made with (the model's when the collection named none)."""
    return self.meta.get("tokenizer") or self.meta["model"]

  def check_ignored(self, ignore_ids) -> None:
    """Uncached positions (zeros) are harmless only if the statistic ignores their ids too."""
    missing = sorted(set(self.exclude_ids) - {int(i) for i in ignore_ids})
    if missing:
      raise UserError(f"activation cache {self.path} left out token ids {missing} (exclude_ids), which the "
                      f"statistic would count; ignore them too (ignore ids {sorted(ignore_ids)})")

  def site_fn(self):
    """fn(tokens [B, L]) -> activations [B, L, d], serving the rows in order from the first.

    A drop-in for `make_site_fn` in passes that go through `rows` front to back (`feed_rows`); each call
    checks that `tokens` are the next rows, so a pass in any other order fails loudly.
    """
    reader = ShardReader(self.path, d=self.manifest["d"])
    exclude = np.asarray(self.exclude_ids, np.int64)
    state = {"row": 0, "shard": np.zeros((0, self.manifest["d"]), np.float32), "offset": 0}

    def take(n: int) -> np.ndarray:
      """The next n cached activations (views into the current shard; no copy of the shard)."""
      parts = [state["shard"][:0]]
      while n:
        if state["offset"] == len(state["shard"]):
          state["shard"], state["offset"] = reader()[0], 0
        part = state["shard"][state["offset"]:state["offset"] + n]
        state["offset"] += len(part)
        parts.append(part)
        n -= len(part)
      return np.concatenate(parts)

    def site_fn(tokens):
      tokens = np.asarray(tokens)
      start = state["row"]
      expected = self.rows[start:start + len(tokens)]
      if tokens.shape != expected.shape or not np.array_equal(tokens, expected):
        raise UserError(f"cached activations are served in row order: the batch at row {start} is not "
                        f"rows {start}..{start + len(tokens) - 1} of {self.path}")
      keep = ~np.isin(tokens, exclude)
      out = np.zeros(tokens.shape + (self.manifest["d"],), np.float32)
      out[keep] = take(int(keep.sum()))
      state["row"] = start + len(tokens)
      return out

    return site_fn

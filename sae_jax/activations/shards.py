"""Cached activations: fixed-size .npy shards plus a manifest; a shard exists only once complete.

The manifest lists finished shards with the data-stream position after each one, so a killed collection
resumes exactly at the first missing shard and the trainer never reads a partial file. Paths may be local
or any fsspec URL (`gs://bucket/acts` with gcsfs installed): locally a file is written to a temp name and
renamed; on object stores an upload becomes visible only when complete, and the manifest is written last.

The shards hold the activations of the kept tokens (all but `meta["exclude_ids"]`) in row order. A collection
on a mesh with D data shards writes D streams (`manifest["streams"]`): stream k holds the k-th D-th of every
model batch's rows, written by the process whose devices hold them (`shard_s<k>_<i>.npy`; one stream keeps the
plain `shard_<i>.npy` names), so the files are the same whatever the number of processes. Chunk i of a cache is
the i-th shard of every stream, in stream order. A cache may
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
from sae_jax import pod
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

  `max_batches` > 0 stops after that many model batches; `progress(batches_done, total)` after each. In a pod
  every process runs this; each writes the streams its devices hold.
  """
  source.seek(writer.restart_batch)
  total = min(max_batches or source.batches_per_epoch, source.batches_per_epoch)
  while source.position < total:
    acts, keep = source()
    writer.add_batch(source.position - 1, local_streams(acts, keep, writer.streams), keep)
    if progress is not None:
      progress(source.position, total)
  return writer.finish()


def local_streams(acts, keep, streams: int) -> dict:
  """{stream: kept activations [n, d] (host numpy)} of the streams this process holds (replica 0 of each).

  `acts` [B*T, d] (a global array split on its rows, or a host array) and `keep` [B*T] (host); stream k is the
  k-th of `streams` equal blocks of rows.
  """
  keep = np.asarray(keep)
  per = len(keep) // streams
  if not hasattr(acts, "addressable_shards"):
    acts = np.asarray(acts)
    return {k: acts[k * per:(k + 1) * per][keep[k * per:(k + 1) * per]] for k in range(streams)}
  out = {}
  for shard in acts.addressable_shards:
    if shard.replica_id != 0:
      continue
    start, stop, _ = shard.index[0].indices(len(keep))
    data = None
    for k in range(start // per, -(-stop // per)):
      if k * per >= start and (k + 1) * per <= stop and k not in out:
        data = np.asarray(shard.data) if data is None else data
        out[k] = data[k * per - start:(k + 1) * per - start][keep[k * per:(k + 1) * per]]
  return out


def _npy_size(n: int, d: int) -> int:
  """Bytes of `np.save` of a float32 [n, d] array (a shard another process writes)."""
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                             "fortran_order": False, "shape": (n, d)})
  return len(buf.getvalue()) + n * d * 4


class ShardWriter:
  """Collects host activations and writes shard files of exactly `shard_tokens` rows, per stream.

  With `rows` (the token rows [n, L] the activations come from, in order) the cache also stores them, and
  their digest joins `meta`, so resuming on other rows is refused. `streams` > 1: see the module doc; every
  process keeps the whole manifest (the shard boundaries follow from the keep masks alone) and process 0
  writes it once the shards it lists exist.
  """

  def __init__(self, path: str, shard_tokens: int, d: int, meta: dict, rows: np.ndarray | None = None,
               streams: int = 1, batch_rows: int | None = None):
    self.path, self.shard_tokens, self.d, self.streams = path, shard_tokens, d, streams
    self.fs, self.root = sio.filesystem(path)
    self.fs.makedirs(self.root, exist_ok=True)
    if rows is not None:
      rows = np.asarray(rows)
      if rows.ndim != 2:
        raise UserError(f"token rows must be [rows, length], got shape {rows.shape}")
      meta = {**meta, "rows_sha256": rows_digest(rows), "rows_shape": [int(n) for n in rows.shape]}
    if self.fs.exists(sio.join(self.root, MANIFEST)):
      self.manifest = read_manifest(path)
      old = {**self.manifest["meta"], "d": self.manifest["d"], "shard_tokens": self.manifest["shard_tokens"],
             "streams": self.manifest.get("streams", 1)}
      new = {**meta, "d": d, "shard_tokens": shard_tokens, "streams": streams}
      differ = [k for k in new if not _same_setting(old.get(k), new[k])]
      if differ:
        changes = "; ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in differ)
        why = " (streams: the mesh's data x fsdp devices)" if "streams" in differ else ""
        raise UserError(f"{path} holds a cache made with other settings ({changes}){why}: resume it with the "
                        "same ones, or use another --out")
    else:
      self.manifest = {"d": d, "shard_tokens": shard_tokens, "meta": meta, "shards": [], "done": False}
      if streams > 1:  # which rows each stream holds: the k-th block of every collection batch
        self.manifest.update(streams=streams, batch_rows=int(batch_rows))
    have_rows = rows is not None and bool(pod.broadcast(self.fs.exists(sio.join(self.root, ROWS_FILE))))
    if rows is not None and not have_rows:  # before any shard refers to it (seen by process 0 for all)
      if pod.is_writer():
        sio.write_bytes(sio.join(self.root, ROWS_FILE), _npy_bytes(rows.astype(np.int32)), fs=self.fs)
      pod.barrier("rows.npy")
    elif rows is not None:
      read_rows(path, meta)  # a resumed run appends to these rows: they must be the ones the manifest names
    self.written = [sum(1 for s in self.manifest["shards"] if s.get("stream", 0) == k) for k in range(streams)]
    self.pending: list[list[np.ndarray]] = [[] for _ in range(streams)]
    self.pending_rows = [0] * streams

  def _last(self, k: int) -> dict | None:
    return next((s for s in reversed(self.manifest["shards"]) if s.get("stream", 0) == k), None)

  def stream_resume(self, k: int) -> tuple[int, int]:
    """(batch to restart stream k at, kept activations of that batch already in its shards)."""
    last = self._last(k)
    return (last["resume_batch"], last["resume_skip"]) if last else (0, 0)

  @property
  def resume_point(self) -> tuple[int, int]:
    """(batch to restart the data stream at, kept activations of that batch already in shards): stream 0's."""
    return self.stream_resume(0)

  @property
  def restart_batch(self) -> int:
    """The first batch some stream still needs."""
    return min(self.stream_resume(k)[0] for k in range(self.streams))

  def add_batch(self, batch: int, local: dict, keep) -> None:
    """Adds data batch `batch`: `local` {stream: its kept activations} for the streams this process holds,
    `keep` [B*T] the whole batch's keep mask (every stream's count follows from it). What a stream's shards
    already hold (a resumed run) is skipped."""
    keep = np.asarray(keep).reshape(self.streams, -1)
    before = len(self.manifest["shards"])
    for k in range(self.streams):
      start, skip = self.stream_resume(k)
      if batch < start:
        continue
      skip = skip if batch == start else 0
      n = int(keep[k].sum())
      self._add(k, None if k not in local else np.asarray(local[k])[skip:], n - skip, batch + 1, skip)
    if len(self.manifest["shards"]) > before:
      self._write_manifest()

  def add(self, acts: np.ndarray, batch_end: int) -> None:
    """Adds the kept activations of data batch `batch_end - 1` to stream 0 (a one-stream cache)."""
    acts = np.asarray(acts, np.float32)
    before = len(self.manifest["shards"])
    self._add(0, acts, len(acts), batch_end)
    if len(self.manifest["shards"]) > before:
      self._write_manifest()

  def _add(self, k: int, acts, n: int, batch_end: int, skipped: int = 0) -> None:
    """`n` kept activations of batch `batch_end - 1` into stream k (`acts` None: another process holds them),
    after the `skipped` first ones its shards already held.

    Whatever a shard leaves over always lies within this last batch (the pending rows before it are fewer
    than a shard), so a resumed run restarts at this batch and skips what the shards already hold.
    """
    if acts is not None:
      self.pending[k].append(np.asarray(acts, np.float32))
    self.pending_rows[k] += n
    while self.pending_rows[k] >= self.shard_tokens:
      rest_n = self.pending_rows[k] - self.shard_tokens
      resume = (batch_end - 1, skipped + n - rest_n) if rest_n else (batch_end, 0)
      block = None
      if acts is not None:
        block = np.concatenate(self.pending[k])
        self.pending[k] = [block[self.shard_tokens:]] if rest_n else []
        block = block[:self.shard_tokens]
      self._write(k, block, resume)
      self.pending_rows[k] = rest_n

  def _write(self, k: int, block, resume: tuple[int, int]) -> None:
    index = self.written[k]
    name = f"shard_{index:06d}.npy" if self.streams == 1 else f"shard_s{k:03d}_{index:06d}.npy"
    size = _npy_size(self.shard_tokens, self.d)
    if block is not None:
      data = _npy_bytes(block)
      assert len(data) == size, (len(data), size)
      sio.write_bytes(sio.join(self.root, name), data, fs=self.fs, own=True)
    entry = {"file": name, "tokens": int(self.shard_tokens), "resume_batch": int(resume[0]),
             "resume_skip": int(resume[1]), "bytes": size}
    self.manifest["shards"].append({**entry, "stream": k} if self.streams > 1 else entry)
    self.written[k] += 1

  def _write_manifest(self) -> None:
    pod.barrier("shards written")  # the manifest names only files that exist
    if pod.is_writer():
      sio.write_bytes(sio.join(self.root, MANIFEST), json.dumps(self.manifest, indent=1).encode(), fs=self.fs)

  def finish(self) -> dict:
    """Marks the cache complete; a partial last shard is dropped (fixed shard size keeps reads static)."""
    self.manifest["done"] = True
    self._write_manifest()
    return self.manifest


class ShardReader:
  """Yields (activations [n, d], keep [n]) per chunk (the i-th shard of every stream), in order, checking each
  shard against the manifest.

  With a `sharding` (rows split over the mesh's data axes) a chunk is a global array and each process reads
  only the rows its devices hold (a byte range of each local shard file; a whole file from object stores).
  """

  def __init__(self, path: str, d: int | None = None, start_shard: int = 0, sharding=None):
    self.path, self.manifest = path, read_manifest(path)
    self.fs, self.root = sio.filesystem(path)
    if d is not None and self.manifest["d"] != d:
      raise UserError(f"activation cache {path} has width {self.manifest['d']}, the SAE expects d_in {d}")
    self.streams = int(self.manifest.get("streams", 1))
    self.per_stream = [[s for s in self.manifest["shards"] if s.get("stream", 0) == k] for k in range(self.streams)]
    self.n_chunks = min(len(shards) for shards in self.per_stream)
    if not self.n_chunks:
      raise UserError(f"activation cache {path} has no complete shard" + (" in every stream" if self.streams > 1
                                                                           else ""))
    self.chunk_tokens = self.streams * int(self.manifest["shard_tokens"])
    self.position, self.sharding = start_shard, sharding

  def seek(self, position: int) -> None:
    """`position` counts chunks read (0: the first again; the buffer rewinds a new epoch so)."""
    self.position = position

  def _read(self, info: dict, rows: slice | None = None) -> np.ndarray:
    """Shard `info`'s rows (all, or the slice `rows`), checked against the manifest."""
    file = sio.join(self.root, info["file"])
    want = (info["tokens"], self.manifest["d"])
    try:
      if rows is not None and sio.is_local(self.fs):
        size = os.path.getsize(file)
        acts = np.load(file, mmap_mode="r", allow_pickle=False)
      else:
        data = self.fs.cat_file(file)
        size, acts = len(data), np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      raise UserError(f"corrupted shard {file}: {e}") from None
    if acts.shape != want or size != info["bytes"]:
      raise UserError(f"corrupted shard {file}: shape {acts.shape}, manifest says {want}")
    return np.array(acts if rows is None else acts[rows], np.float32)

  def __call__(self):
    if self.position >= self.n_chunks:
      return None
    infos = [shards[self.position] for shards in self.per_stream]
    n = int(self.manifest["shard_tokens"])
    if self.sharding is None:
      acts = np.concatenate([self._read(info) for info in infos])
    else:
      import jax

      def rows(index):
        start, stop, _ = index[0].indices(self.chunk_tokens)
        parts = [self._read(infos[k], slice(max(start - k * n, 0), min(stop - k * n, n)))
                 for k in range(start // n, -(-stop // n))]
        return np.concatenate(parts)[:, index[1]]

      acts = jax.make_array_from_callback((self.chunk_tokens, self.manifest["d"]), self.sharding, rows)
    self.position += 1
    return acts, np.ones(self.chunk_tokens, bool)


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
    self.streams = int(self.manifest.get("streams", 1))
    stream = self.stream_of(np.arange(len(rows)))
    kept = (~np.isin(rows, self.exclude_ids)).sum(axis=1)
    cum = np.zeros(len(rows), np.int64)  # kept activations of each row's stream up to and including the row
    cached = np.zeros(self.streams, np.int64)
    for k in range(self.streams):
      cum[stream == k] = np.cumsum(kept[stream == k])
      cached[k] = sum(s["tokens"] for s in self.manifest["shards"] if s.get("stream", 0) == k)
    complete = cum <= cached[stream]
    self.rows = rows[:len(rows) if complete.all() else int(np.argmin(complete))]
    cached = int(cached.sum())
    if len(self.rows) == 0:
      raise UserError(f"activation cache {path} holds no complete row ({cached} activations cached)")

  def stream_of(self, row):
    """The stream that holds row(s) `row`'s activations (the block of its collection batch it fell in)."""
    if self.streams == 1:
      return np.zeros_like(row)
    batch_rows = int(self.manifest["batch_rows"])
    return (row % batch_rows) // (batch_rows // self.streams)

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

  def site_fn(self, n_rows: int | None = None):
    """fn(tokens [B, L]) -> activations [B, L, d], serving the rows in order from the first.

    A drop-in for `make_site_fn` in passes that go through the first `n_rows` rows (default all) front to back
    (`feed_rows`); each call checks that `tokens` are the next rows, so a pass in any other order fails loudly.
    Rows of a batch past the pass's `n_rows` are the padding of its last batch: they come back as zeros.
    """
    limit = len(self.rows) if n_rows is None else min(int(n_rows), len(self.rows))
    reader = ShardReader(self.path, d=self.manifest["d"])
    exclude = np.asarray(self.exclude_ids, np.int64)
    empty = np.zeros((0, self.manifest["d"]), np.float32)
    state = {"row": 0, "shard": [empty] * self.streams, "offset": [0] * self.streams,
             "next": [0] * self.streams}

    def take(k: int, n: int) -> np.ndarray:
      """The next n cached activations of stream k (views into its current shard; no copy of the shard)."""
      parts = [empty]
      while n:
        if state["offset"][k] == len(state["shard"][k]):
          state["shard"][k] = reader._read(reader.per_stream[k][state["next"][k]])
          state["offset"][k], state["next"][k] = 0, state["next"][k] + 1
        part = state["shard"][k][state["offset"][k]:state["offset"][k] + n]
        state["offset"][k] += len(part)
        parts.append(part)
        n -= len(part)
      return np.concatenate(parts)

    def site_fn(tokens):
      tokens = pod.to_host(tokens)
      start = state["row"]
      real = max(0, min(len(tokens), limit - start))
      expected = self.rows[start:start + real]
      if tokens.shape[1:] != expected.shape[1:] or not np.array_equal(tokens[:real], expected):
        raise UserError(f"cached activations are served in row order: the batch at row {start} is not "
                        f"rows {start}..{start + len(tokens) - 1} of {self.path}")
      keep = ~np.isin(tokens[:real], exclude)
      out = np.zeros(tokens.shape + (self.manifest["d"],), np.float32)
      for i, k in enumerate(self.stream_of(np.arange(start, start + real))):
        out[i, keep[i]] = take(int(k), int(keep[i].sum()))
      state["row"] = start + real
      return out

    return site_fn

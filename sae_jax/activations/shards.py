"""Cached activations: fixed-size .npy shards plus a manifest; a shard exists only once complete.

The manifest lists finished shards with the data-stream position after each one, so a killed collection
resumes exactly at the first missing shard and the trainer never reads a partial file. Paths may be local
or any fsspec URL (`gs://bucket/acts` with gcsfs installed): locally a file is written to a temp name and
renamed; on object stores an upload becomes visible only when complete, and the manifest is written last.
"""

import io
import json
import os

import fsspec
import numpy as np

from sae_jax.errors import UserError

MANIFEST = "manifest.json"


def _fs(path: str):
  try:
    return fsspec.core.url_to_fs(path)
  except (ImportError, ValueError) as e:
    raise UserError(f"cannot open {path}: {e} (for gs:// install gcsfs)") from None


def _join(root: str, name: str) -> str:
  return root.rstrip("/") + "/" + name


def _write_bytes(fs, path: str, data: bytes) -> None:
  """Complete or absent: temp file + rename locally, a single upload elsewhere."""
  if "file" in fs.protocol or "local" in fs.protocol:
    with open(path + ".tmp", "wb") as f:
      f.write(data)
    os.replace(path + ".tmp", path)
  else:
    with fs.open(path, "wb") as f:
      f.write(data)


def read_manifest(path: str) -> dict:
  fs, root = _fs(path)
  file = _join(root, MANIFEST)
  try:
    return json.loads(fs.cat_file(file))
  except FileNotFoundError:
    raise UserError(f"no activation cache at {path} (missing {MANIFEST})") from None
  except json.JSONDecodeError:
    raise UserError(f"corrupted manifest {_join(path, MANIFEST)}") from None


class ShardWriter:
  """Collects host activations and writes `shard_NNNNNN.npy` of exactly `shard_tokens` rows."""

  def __init__(self, path: str, shard_tokens: int, d: int, meta: dict):
    self.path, self.shard_tokens, self.d = path, shard_tokens, d
    self.fs, self.root = _fs(path)
    self.fs.makedirs(self.root, exist_ok=True)
    if self.fs.exists(_join(self.root, MANIFEST)):
      self.manifest = read_manifest(path)
      old = {k: self.manifest["meta"].get(k) for k in meta}
      if old != meta or self.manifest["d"] != d or self.manifest["shard_tokens"] != shard_tokens:
        raise UserError(f"{path} holds a cache made with other settings ({old}); use another --out")
    else:
      self.manifest = {"d": d, "shard_tokens": shard_tokens, "meta": meta, "shards": [], "done": False}
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
    buf = io.BytesIO()
    np.save(buf, block)
    _write_bytes(self.fs, _join(self.root, name), buf.getvalue())
    self.manifest["shards"].append({"file": name, "tokens": int(len(block)), "resume_batch": int(resume[0]),
                                    "resume_skip": int(resume[1]),
                                    "bytes": len(buf.getvalue())})
    self._write_manifest()

  def _write_manifest(self) -> None:
    _write_bytes(self.fs, _join(self.root, MANIFEST), json.dumps(self.manifest, indent=1).encode())

  def finish(self) -> dict:
    """Marks the cache complete; a partial last shard is dropped (fixed shard size keeps reads static)."""
    self.manifest["done"] = True
    self._write_manifest()
    return self.manifest


class ShardReader:
  """Yields (activations [n, d], keep [n]) per shard, in order, checking each shard against the manifest."""

  def __init__(self, path: str, d: int | None = None, start_shard: int = 0, loop: bool = False):
    self.path, self.manifest = path, read_manifest(path)
    self.fs, self.root = _fs(path)
    if d is not None and self.manifest["d"] != d:
      raise UserError(f"activation cache {path} has width {self.manifest['d']}, the SAE expects d_in {d}")
    if not self.manifest["shards"]:
      raise UserError(f"activation cache {path} has no complete shard")
    self.position, self.loop = start_shard, loop

  def seek(self, position: int) -> None:
    """`position` counts shards read (across epochs when looping)."""
    self.position = position

  def __call__(self):
    shards = self.manifest["shards"]
    if self.position >= len(shards) and not self.loop:
      return None
    info = shards[self.position % len(shards)]
    file = _join(self.root, info["file"])
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

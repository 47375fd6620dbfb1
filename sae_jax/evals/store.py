"""Append-only JSONL of finished samples, so a killed evaluation resumes where it stopped.

One line per sample, written with a single write + flush + fsync as soon as it is graded. A kill can only
leave a torn last line (no trailing newline); opening the store cuts it off, and that sample is generated
again. Each record carries a fingerprint of what produced it (prompt tokens, sampling settings, setting
params, seed); resuming with anything changed is refused rather than mixing two runs in one report.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterator

from sae_jax import pod
from sae_jax.errors import UserError

Key = tuple[str, str, str, int]  # (setting, task, problem_id, sample_index)


def record_key(rec: dict) -> Key:
  return (rec["setting"], rec["task"], rec["problem_id"], int(rec["sample_index"]))


def fingerprint(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SampleStore:
  """Records by key; `append` persists one record before returning."""

  def __init__(self, path: str):
    self.path = path
    self.writer = pod.is_writer()  # in a pod every process keeps the records, process 0 writes them
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._records: dict[Key, dict] = {}
    self.repaired_bytes = 0
    self._load()
    self._f = open(path, "a", encoding="utf-8") if self.writer else None
    if self._f is not None:
      pod.log_write(path)

  def _load(self) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb") as f:
      data = f.read()
    end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    if end < len(data) and self.writer:
      self.repaired_bytes = len(data) - end
      with open(self.path, "r+b") as f:
        f.truncate(end)
    for i, line in enumerate(data[:end].decode("utf-8").splitlines()):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
        key = record_key(rec)
      except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{self.path}:{i + 1}: not a sample record; is this an evaluation output?") from None
      self._records.setdefault(key, rec)

  def __contains__(self, key: Key) -> bool:
    return key in self._records

  def __len__(self) -> int:
    return len(self._records)

  def get(self, key: Key) -> dict | None:
    return self._records.get(key)

  def records(self) -> Iterator[dict]:
    return iter(self._records.values())

  def append(self, rec: dict) -> None:
    key = record_key(rec)
    if key in self._records:
      raise RuntimeError(f"sample {key} is already stored")
    if self._f is not None:
      self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
      self._f.flush()
      os.fsync(self._f.fileno())
    self._records[key] = rec

  def close(self) -> None:
    if self._f is not None:
      self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

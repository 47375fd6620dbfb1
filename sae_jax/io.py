"""Complete-or-absent writes: a reader (or a resumed run) never sees half a file or half a directory.

Local paths are written to a temp name beside the target and renamed over it (atomic on one filesystem).
Paths with a protocol (`gs://...`, any fsspec URL) are uploaded in one `open(..., "wb")`, which object stores
publish only when the upload completes. A directory is filled in a local temp dir first, then renamed
(local) or uploaded file by file (URLs: each file complete; the caller writes its marker file last).
"""

import contextlib
import io
import json
import os
import shutil
import tempfile
from typing import Callable, Iterator

from sae_jax.errors import UserError


def is_url(path: str) -> bool:
  return "://" in str(path)


def filesystem(path: str):
  """(fsspec filesystem, path inside it); a missing backend (e.g. gcsfs for gs://) is a UserError."""
  import fsspec
  try:
    return fsspec.core.url_to_fs(path)
  except (ImportError, ValueError) as e:
    raise UserError(f"cannot open {path}: {e} (for gs:// install gcsfs)") from None


def join(root: str, name: str) -> str:
  return root.rstrip("/") + "/" + name if is_url(root) else os.path.join(root, name)


@contextlib.contextmanager
def replaced_file(path: str) -> Iterator[str]:
  """Yields a local temp path to write; on success it replaces `path` (streams large files, unlike write_bytes)."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def is_local(fs) -> bool:
  protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
  return "file" in protocols or "local" in protocols


def write_bytes(path: str, data: bytes, fs=None) -> str:
  """`data` at `path` (local or URL; or a path inside the fsspec filesystem `fs`), complete or absent."""
  path = str(path)
  if fs is None and is_url(path):
    fs, path = filesystem(path)
  if fs is not None and not is_local(fs):
    with fs.open(path, "wb") as f:
      f.write(data)
    return path
  with replaced_file(path) as tmp, open(tmp, "wb") as f:
    f.write(data)
  return path


def write_with(path: str, write: Callable) -> str:
  """`write(binary_file)` fills `path`, complete or absent (e.g. `lambda f: np.save(f, a)`)."""
  buf = io.BytesIO()
  write(buf)
  return write_bytes(path, buf.getvalue())


def write_text(path: str, text: str) -> str:
  return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj, **dump_kwargs) -> str:
  """JSON of `obj` (`indent=2` unless given) at `path`, complete or absent."""
  dump_kwargs.setdefault("indent", 2)
  return write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


def write_npy(path: str, array) -> str:
  import numpy as np
  return write_with(path, lambda f: np.save(f, array))


@contextlib.contextmanager
def replaced_dir(out_dir: str) -> Iterator[str]:
  """Yields a temp dir to fill; on success it replaces `out_dir` (an existing one is moved aside first).

  On an error the temp dir is removed and `out_dir` is left as it was.
  """
  if is_url(out_dir):
    with tempfile.TemporaryDirectory(prefix=".sae_jax.upload-") as tmp:
      yield tmp
      fs, inner = filesystem(out_dir)
      for name in sorted(os.listdir(tmp)):
        fs.put(os.path.join(tmp, name), inner.rstrip("/") + "/" + name, recursive=True)
    return
  out_dir = os.path.abspath(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
  try:
    yield tmp
    old = None
    if os.path.exists(out_dir):  # moved aside first, so a crash never leaves out_dir half-written
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
      os.replace(out_dir, os.path.join(old, "dir"))
    os.replace(tmp, out_dir)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_dir(out_dir: str, fill: Callable[[str], None]) -> str:
  """`fill(tmp_dir)` writes the files; the directory then replaces `out_dir` (see `replaced_dir`)."""
  with replaced_dir(out_dir) as tmp:
    fill(tmp)
  return out_dir if is_url(out_dir) else os.path.abspath(out_dir)

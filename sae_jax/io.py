"""Complete-or-absent writes: a reader (or a resumed run) never sees half a file or half a directory.

Local paths are written to a temp name beside the target and renamed over it (atomic on one filesystem).
Paths with a protocol (`gs://...`, any fsspec URL) are uploaded in one `open(..., "wb")`, which object stores
publish only when the upload completes. A directory is filled in a local temp dir first, then swapped in
(local) or uploaded file by file (URLs: each file complete; the marker file last). A directory replaces only an
empty one or an earlier output of the same kind (its marker file): no command deletes what it did not make.

In a pod (`sae_jax.pod`) every file has one writer: process 0, unless the caller says the file is this
process's own (`own=True`, e.g. the activation shards it holds); any other write is an error, not a race.
"""

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
import uuid
from typing import Callable, Iterator

import numpy as np

from sae_jax import pod
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
  tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
  os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask's mode, not mkstemp's 0600
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def is_local(fs) -> bool:
  protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
  return "file" in protocols or "local" in protocols


def check_writer(path: str, own: bool = False) -> None:
  """Refuses a write of a shared file (not `own`) from any process but 0; logs the write (`pod.log_write`)."""
  if not own and not pod.is_writer():
    raise RuntimeError(f"process {pod.index()} tried to write {path}: only process 0 writes shared files")
  pod.log_write(path)


def write_bytes(path: str, data: bytes, fs=None, own: bool = False) -> str:
  """`data` at `path` (local or URL; or a path inside the fsspec filesystem `fs`), complete or absent.

  `own`: the file is this process's own in a pod (see the module doc); otherwise only process 0 may write it.
  """
  path = str(path)
  check_writer(path, own)
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


MARKER = ".sae_jax_output.json"  # in every dir replaced_dir makes: what wrote it, so a rerun may replace it


def _marker_kind(read) -> str | None:
  try:
    return json.loads(read()).get("kind")
  except (OSError, ValueError, AttributeError):
    return None


def check_replaceable(out_dir: str, kind: str) -> None:
  """Refuses an `out_dir` whose replacement would delete what this `kind` of output did not make.

  Replaceable: absent, an empty dir, or an earlier `kind` output (its MARKER). Never "", the working dir or a
  dir holding it. Launch scripts call this before the long work, so a bad --out fails in a second.
  """
  check_output_dir(out_dir, f"{kind} output")
  if is_url(out_dir):
    fs, inner = filesystem(out_dir)
    names = [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(inner)] if fs.isdir(inner) else []
    ours = lambda: fs.cat_file(inner.rstrip("/") + "/" + MARKER)
  else:
    path = os.path.realpath(out_dir)
    cwd = os.path.realpath(os.getcwd())
    if cwd == path or cwd.startswith(path.rstrip(os.sep) + os.sep):
      raise UserError(f"{kind} output {out_dir!r} is the working directory or holds it: give a new dir")
    if os.path.islink(out_dir):
      raise UserError(f"{kind} output {out_dir} is a symlink: give the dir itself")
    names = os.listdir(path) if os.path.isdir(path) else []
    ours = lambda: open(os.path.join(path, MARKER), "rb").read()
  if not names:
    return
  found = _marker_kind(ours) if MARKER in names else None
  if found != kind:
    what = f"a {found} output" if found else f"files sae_jax did not write ({sorted(names)[0]}, ...)"
    raise UserError(f"{kind} output {out_dir} holds {what}: give a new or empty dir, or an earlier {kind} "
                    "output to replace")


def check_output_dir(path: str, what: str) -> None:
  """Refuses an output dir that cannot be made: an empty path, a file, or under no writable dir (checked before
  the run, not after it)."""
  if not str(path).strip():
    raise UserError(f"the {what} path is empty: give a dir")
  if is_url(path):
    fs, inner = filesystem(path)
    if fs.isfile(inner):
      raise UserError(f"{what} {path} exists and is not a directory")
    return
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{what} {path} exists and is not a directory")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"cannot write the {what} {path}: {parent} is not a writable directory")


def _exchange(a: str, b: str) -> bool:
  """Swaps two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  import ctypes
  renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
  if renameat2 is None:
    return False
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
    return False
  raise OSError(err, os.strerror(err), b)


def _swap_in(tmp: str, out_dir: str) -> str | None:
  """Puts the filled `tmp` at `out_dir`; returns where the old output went (to delete), if there was one.

  With an exchange `out_dir` is never missing; without one (the fallback) it is missing between two renames,
  and `_clean_leftovers` puts the old output back if a kill lands there.
  """
  if not os.path.exists(out_dir):
    os.rename(tmp, out_dir)
    return None
  if _exchange(tmp, out_dir):
    return tmp
  aside = _new_dir(out_dir, "old")
  os.rename(out_dir, os.path.join(aside, "dir"))
  os.rename(tmp, out_dir)
  return aside


def _clean_leftovers(out_dir: str) -> None:
  """Removes the temp dirs killed replaces of `out_dir` left beside it (names only replaced_dir makes); an old
  output moved aside by the fallback goes back first if `out_dir` is missing."""
  parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
  for name in os.listdir(parent):
    path = os.path.join(parent, name)
    if not os.path.isdir(path) or os.path.islink(path):
      continue
    old = os.path.join(path, "dir")
    if name.startswith(f".{base}.old-") and not os.path.exists(out_dir) and os.path.isdir(old):
      os.rename(old, out_dir)
    if name.startswith((f".{base}.old-", f".{base}.tmp-")):
      shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def replaced_dir(out_dir: str, kind: str, check: bool = True) -> Iterator[str]:
  """Yields a temp dir to fill; on success it replaces `out_dir`, complete or absent, with MARKER naming `kind`.

  `out_dir` must pass `check_replaceable` (`check=False` only for paths the caller owns, the asset cache). The
  old output is swapped out, then deleted: a kill at any moment leaves the old or the new output whole, and the
  next replace cleans the temp dirs. On an error the temp dir is removed and `out_dir` is left as it was.
  """
  check_writer(out_dir)
  if check:
    check_replaceable(out_dir, kind)
  marker = json.dumps({"kind": kind}) + "\n"
  if is_url(out_dir):
    with tempfile.TemporaryDirectory(prefix=".sae_jax.upload-") as tmp:
      yield tmp
      fs, inner = filesystem(out_dir)
      for name in sorted(os.listdir(tmp)):
        fs.put(os.path.join(tmp, name), inner.rstrip("/") + "/" + name, recursive=True)
      fs.pipe_file(inner.rstrip("/") + "/" + MARKER, marker.encode())  # last: the upload is complete
    return
  out_dir = os.path.abspath(out_dir)
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  _clean_leftovers(out_dir)
  tmp = _new_dir(out_dir, "tmp")
  try:
    with open(os.path.join(tmp, MARKER), "w") as f:
      f.write(marker)
    yield tmp
    if check:
      check_replaceable(out_dir, kind)  # again: files put there while `tmp` was filled are not ours either
    old = _swap_in(tmp, out_dir)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def pod_replaced_dir(out_dir: str, kind: str) -> Iterator[str]:
  """`replaced_dir` that every process of a pod enters, to fill one temp dir together (an Orbax multi-host save
  into it): process 0 makes it, names it to the others and swaps it in once all are done. Local paths shared
  by the processes only (one machine, or a shared mount)."""
  if pod.count() == 1:
    with replaced_dir(out_dir, kind) as tmp:
      yield tmp
    return
  if is_url(out_dir):
    raise UserError(f"{out_dir}: a pod fills an output dir together on a shared local path, not a URL")
  out_dir = os.path.abspath(out_dir)
  prefix = os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.tmp-")
  if pod.is_writer():
    with replaced_dir(out_dir, kind) as tmp:
      pod.broadcast(np.frombuffer(tmp[len(prefix):].encode(), np.uint8))
      yield tmp
      pod.barrier(f"{out_dir} filled")
  else:
    tmp = prefix + bytes(np.asarray(pod.broadcast(np.zeros(_TOKEN, np.uint8)), np.uint8)).decode()
    yield tmp
    pod.barrier(f"{out_dir} filled")
  pod.barrier(f"{out_dir} swapped in")


_TOKEN = 12  # hex digits of a temp dir's random suffix


def _new_dir(out_dir: str, role: str) -> str:
  """A new `.<name>.<role>-<random>` dir beside `out_dir`, with the umask's mode (mkdtemp's 0700 would make
  every output private)."""
  path = os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.{role}-{uuid.uuid4().hex[:_TOKEN]}")
  os.mkdir(path)
  return path


def write_dir(out_dir: str, fill: Callable[[str], None], kind: str) -> str:
  """`fill(tmp_dir)` writes the files; the directory then replaces `out_dir` (see `replaced_dir`)."""
  with replaced_dir(out_dir, kind) as tmp:
    fill(tmp)
  return out_dir if is_url(out_dir) else os.path.abspath(out_dir)

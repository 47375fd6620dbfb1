"""Output dirs: only new, empty or our own earlier outputs are replaced, and a kill -9 at any moment of a
replace leaves the old or the new output whole (subprocesses killed at many points)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import REPO
from sae_jax import io as sio
from sae_jax.errors import UserError

N_FILES = 1500  # enough that filling and deleting take a while to land kills in

# Writes version argv[2] of a dir of N files at argv[1]; argv[3] pauses it at a named point (for a kill).
WRITER = """
import os, sys, time
from sae_jax import io as sio
out, version, pause, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def stop(point):
  if pause == point:
    print(point, flush=True)
    time.sleep(60)

if pause.startswith("fallback"):
  sio._exchange = lambda a, b: False
  rename = os.rename
  def paused_rename(a, b):
    rename(a, b)
    stop("fallback-between")  # the old output is aside, the new one not yet in place
  os.rename = paused_rename
swap_in = sio._swap_in
def paused_swap(tmp, out_dir):
  stop("before-swap")
  old = swap_in(tmp, out_dir)
  stop("after-swap")
  return old
sio._swap_in = paused_swap

def fill(tmp):
  for i in range(n):
    with open(os.path.join(tmp, f"f{i:05d}"), "w") as f:
      f.write(version)
  stop("filled")

sio.write_dir(out, fill, "test")
"""


def _start(out, version, pause="", n=N_FILES):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.Popen([sys.executable, "-c", WRITER, str(out), version, pause, str(n)], stdout=subprocess.PIPE,
                          text=True, env=env)


def _version(out, n=N_FILES):
  """The one version `out` holds, whole (every file, all the same version, and the marker)."""
  names = sorted(os.listdir(out))
  assert names == sorted([sio.MARKER] + [f"f{i:05d}" for i in range(n)]), (len(names), names[:3])
  versions = {open(os.path.join(out, f)).read() for f in names if f != sio.MARKER}
  assert len(versions) == 1, versions
  return versions.pop()


def test_kill_at_named_points_leaves_old_or_new_whole(tmp_path):
  out = tmp_path / "out"
  assert _start(out, "v0").wait(timeout=60) == 0
  current = "v0"
  for i, (point, replaced) in enumerate({"filled": False, "before-swap": False, "after-swap": True}.items(), 1):
    proc = _start(out, f"v{i}", point)
    assert proc.stdout.readline().strip() == point
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    current = f"v{i}" if replaced else current
    assert _version(out) == current, point
  # The next replace cleans every temp dir the kills left.
  assert _start(out, "v9").wait(timeout=60) == 0
  assert _version(out) == "v9" and os.listdir(tmp_path) == ["out"]


def test_fallback_without_exchange_recovers_the_old_output(tmp_path):
  out = tmp_path / "out"
  assert _start(out, "v0", n=20).wait(timeout=60) == 0
  proc = _start(out, "v1", "fallback-between", n=20)
  assert proc.stdout.readline().strip() == "fallback-between"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not out.exists()  # between the two renames: the old output is aside, whole
  sio._clean_leftovers(str(out))
  assert _version(out, n=20) == "v0" and os.listdir(tmp_path) == ["out"]
  assert _start(out, "v2", "fallback", n=20).wait(timeout=60) == 0
  assert _version(out, n=20) == "v2" and os.listdir(tmp_path) == ["out"]


def test_kill_at_many_moments_leaves_old_or_new_whole(tmp_path):
  out = tmp_path / "out"
  assert _start(out, "v").wait(timeout=60) == 0
  t0 = time.perf_counter()
  assert _start(out, "v0").wait(timeout=60) == 0  # timed as a replace: fill, swap, delete the old
  whole = time.perf_counter() - t0
  current, kills, i = "v0", 24, 0
  while i < kills or current == "v0":  # the kills spread over a replace, then later ones until one completes
    i += 1
    proc = _start(out, f"v{i}")
    time.sleep(whole * 2 * i / kills)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    got = _version(out)
    assert got in (current, f"v{i}")
    current = got


def test_refuses_what_it_did_not_make(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  canary = tmp_path / "canary.txt"
  canary.write_text("keep")
  for bad in ("", " ", ".", str(tmp_path), ".."):
    with pytest.raises(UserError, match="empty|working directory"):
      sio.write_dir(bad, lambda d: None, "test")
  (tmp_path / "user").mkdir()
  (tmp_path / "user" / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match=r"holds files sae_jax did not write \(notes.txt, ...\)"):
    sio.write_dir("user", lambda d: None, "test")
  sio.write_dir("other_kind", lambda d: None, "dashboard")
  with pytest.raises(UserError, match="holds a dashboard output"):
    sio.write_dir("other_kind", lambda d: None, "test")
  with pytest.raises(UserError, match="exists and is not a directory"):
    sio.write_dir("canary.txt", lambda d: None, "test")
  with pytest.raises(UserError, match="not a writable directory"):
    sio.write_dir("canary.txt/sub", lambda d: None, "test")
  assert canary.read_text() == "keep" and (tmp_path / "user" / "notes.txt").read_text() == "mine"
  # Absent, empty and our own earlier output are replaced.
  (tmp_path / "empty").mkdir()
  for ok in ("empty", "new/nested", "other_kind"):
    kind = "dashboard" if ok == "other_kind" else "test"
    sio.write_dir(ok, lambda d: open(os.path.join(d, "x"), "w").close(), kind)
    assert sorted(os.listdir(ok)) == [sio.MARKER, "x"]
    assert json.load(open(os.path.join(ok, sio.MARKER))) == {"kind": kind}


def test_output_dirs_follow_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    out = sio.write_dir(str(tmp_path / "out"), lambda d: None, "test")
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o755  # not mkdtemp's 0700

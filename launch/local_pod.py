"""Runs one launch script as N processes of a pod on this machine: the multi-host path without a pod.

  python launch/local_pod.py --processes=2 --devices=4 --logs=runs/pod_logs -- \
      launch/train_sae.py --config=configs/demo_smollm2.py --config.activations.cache_dir=runs/acts

Each process gets `devices` fake CPU devices and the environment `sae_jax.pod` reads (coordinator on a free
localhost port, process count and id), so the N processes form one mesh of N x devices and talk through gloo.
Process K logs to `--logs`/proc_K.log (its pid in `proc_K.pid`); process 0's output is also printed. When a
process fails, the others are stopped and this exits with the failed one's code. SIGTERM or SIGINT (Ctrl-C) is
passed on to every process as SIGTERM and waited for, so a run saves what it resumes from; a second one kills
them. `launch/local_pod.sh N ...` is the short form.
"""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading

from absl import app, flags

from sae_jax import pod
from sae_jax.errors import UserError, exit_on_user_error

FLAGS = flags.FLAGS
flags.DEFINE_integer("processes", 2, "Processes (the pod's hosts).")
flags.DEFINE_integer("devices", 4, "Fake CPU devices per process.")
flags.DEFINE_string("logs", None, "Where proc_K.log and proc_K.pid go (default: a new temp dir).")
flags.DEFINE_integer("port", 0, "Coordinator port on localhost (0: a free one).")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(env: dict, n: int, k: int, devices: int, port: int) -> dict:
  """The environment of process `k` of `n`: pod variables, `devices` CPU devices, everything else inherited."""
  xla = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).strip()
  return {**env, pod.COORDINATOR: f"localhost:{port}", pod.NUM_PROCESSES: str(n), pod.PROCESS_ID: str(k),
          "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{xla} --xla_force_host_platform_device_count={devices}".strip()}


def run_pod(cmd: list[str], n: int, devices: int, log_dir: str, port: int = 0) -> int:
  """Starts `cmd` as processes 0..n-1; returns 0 when all succeed, else the first failure's exit code (the
  others are stopped)."""
  os.makedirs(log_dir, exist_ok=True)
  port = port or free_port()
  procs, logs = [], []
  for k in range(n):
    log = open(os.path.join(log_dir, f"proc_{k}.log"), "w")
    procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  env=process_env(dict(os.environ), n, k, devices, port)))
    logs.append(log)
    with open(os.path.join(log_dir, f"proc_{k}.pid"), "w") as f:
      f.write(f"{procs[-1].pid}\n")
  exits = queue.Queue()  # processes in the order they end: the first failure is the cause, not its echoes
  for k, p in enumerate(procs):
    threading.Thread(target=lambda k=k, p=p: exits.put((k, p.wait())), daemon=True).start()
  first = None  # (process, exit code) of the first failure
  stopping = []

  def stop(signum, frame):
    """SIGTERM/SIGINT: every process gets SIGTERM and its time to save (a pod stops at an agreed step); a
    second signal kills them."""
    stopping.append(signum)
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM if len(stopping) == 1 else signal.SIGKILL)

  old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    for _ in procs:
      k, code = exits.get()
      if code and first is None:
        first = (k, code)
      if code and not stopping:
        break  # a failure: the others would wait for it in a collective
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
    for p in procs:  # our own children, by pid: a failed process leaves the others waiting in a collective
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
      p.wait()
    for log in logs:
      log.close()
  if first is None:
    return 0
  k, code = first
  how = f"stopped by signal {stopping[0]}" if stopping else "the others were stopped"
  print(f"local_pod: process {k} exited with {code} ({how}). {log_dir}/proc_{k}.log ends:",
        file=sys.stderr)
  with open(os.path.join(log_dir, f"proc_{k}.log")) as f:
    sys.stderr.write("".join(f.readlines()[-20:]))
  return code if code >= 0 else 128 - code


@exit_on_user_error
def main(argv):
  cmd = argv[1:]
  if cmd and cmd[0] == "--":
    cmd = cmd[1:]
  if not cmd:
    raise UserError("give the script to run after the flags: local_pod.py --processes=2 -- launch/SCRIPT.py ...")
  if FLAGS.processes < 1 or FLAGS.devices < 1:
    raise UserError(f"--processes and --devices must be >= 1, got {FLAGS.processes}, {FLAGS.devices}")
  if cmd[0].endswith(".py"):
    cmd = [sys.executable, *cmd]
  log_dir = FLAGS.logs or tempfile.mkdtemp(prefix="local_pod.")
  code = run_pod(cmd, FLAGS.processes, FLAGS.devices, log_dir, FLAGS.port)
  if code == 0:
    with open(os.path.join(log_dir, "proc_0.log")) as f:
      sys.stdout.write(f.read())
  sys.exit(code)


if __name__ == "__main__":
  app.run(main)

"""launch/tpu/*.sh --dry_run for a v5e-16 slice (4 hosts), calling no gcloud: the exact create (TPU VM,
queued Spot), install, run and delete commands; the mesh presets against libtpu's topologies; --root's paths."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

from configs import meshes
from sae_jax import aot
from sae_jax.models.sharding import MeshConfig

SLICE = ["--name=sae-paper", "--type=v5e-16", "--zone=us-west4-a", "--project=my-proj", "--dry_run"]
WHERE = "--zone=us-west4-a --project=my-proj"


@pytest.fixture(scope="module")
def trap(tmp_path_factory):
  """A `gcloud` first on PATH that records any call: a dry run must make none (it needs no gcloud)."""
  bin_dir = tmp_path_factory.mktemp("bin")
  (bin_dir / "gcloud").write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir}/called\nexit 1\n")
  (bin_dir / "gcloud").chmod(0o755)
  yield bin_dir
  assert not (bin_dir / "called").exists(), (bin_dir / "called").read_text()


def _env(trap):
  path = os.pathsep.join([str(trap), os.path.dirname(sys.executable), "/usr/bin", "/bin"])
  return {"PATH": path, "HOME": os.environ.get("HOME", "/tmp")}


def _dry(trap, script, *args):
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu", script), *args], capture_output=True,
                        text=True, env=_env(trap), cwd=REPO, timeout=60)
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")], proc.stdout


def _jax_pin():
  return re.search(r"^jax==(\S+)", open(os.path.join(REPO, "requirements.txt")).read(), re.M).group(1)


def test_create_and_delete(trap):
  commands, out = _dry(trap, "create.sh", *SLICE)
  assert commands == [shlex.split("gcloud compute tpus tpu-vm create sae-paper " + WHERE +
                                  " --accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite")]
  assert "4 host(s), 16 chips" in out
  commands, _ = _dry(trap, "create.sh", *SLICE, "--queued", "--spot")
  assert commands == [
      shlex.split("gcloud compute tpus queued-resources create sae-paper --node-id=sae-paper " + WHERE +
                  " --accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot"),
      ["gcloud", "compute", "tpus", "queued-resources", "describe", "sae-paper", *WHERE.split(),
       "--format=value(state.state)"]]  # polled until ACTIVE
  commands, _ = _dry(trap, "delete.sh", *SLICE)
  assert commands == [shlex.split("gcloud compute tpus tpu-vm delete sae-paper " + WHERE + " --quiet")]
  commands, _ = _dry(trap, "delete.sh", *SLICE, "--queued")
  assert commands == [shlex.split("gcloud compute tpus queued-resources delete sae-paper " + WHERE +
                                  " --force --quiet")]


def test_install(trap):
  commands, _ = _dry(trap, "install.sh", *SLICE)
  archive, scp, ssh = commands
  assert archive[:3] == ["git", "-C", REPO] and archive[3:6] == ["archive", "--format=tar.gz", "-o"]
  tarball = archive[6]
  assert archive[7] == "HEAD" and scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                                          "sae-paper:/tmp/sae_jax.tar.gz", *WHERE.split(), "--worker=all"]
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sae-paper"] and "--worker=all" in ssh
  remote = ssh[-1].removeprefix("--command=")
  # The pinned requirements with jax's TPU extra at the pinned jax (libtpu comes pinned with it), Python 3.11.
  assert "python3.11 -m venv .venv" in remote and "-r requirements.txt" in remote
  assert f"'jax[tpu]=={_jax_pin()}'" in remote and "pip install -q --disable-pip-version-check --no-deps -e ." in remote
  assert "jax.distributed.initialize()" in remote


def test_run_on_all_hosts_with_the_preset_mesh_and_per_host_logs(trap):
  commands, out = _dry(trap, "run.sh", *SLICE, "--root=gs://bucket/paper", "--spot", "--queued", "--",
                       "launch/train_sae.py", "--config=configs/paper_r1_llama8b_l19.py", "--config.mesh.model=4")
  ssh, *fetch = commands
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "sae-paper"] and "--worker=all" in ssh
  remote = shlex.split(ssh[-1].removeprefix("--command="))
  assert remote[:5] == ["cd", "~/sae_jax", "&&", "bash", "launch/tpu/host_run.sh"]
  log = remote[5]
  assert re.fullmatch(r"train_sae-\d{8}T\d{6}Z", log)
  # The preset right after --config, so the command's own --config.mesh.model=4 wins; --root passed on.
  assert remote[6:] == ["launch/train_sae.py", "--config=configs/paper_r1_llama8b_l19.py", "--config.mesh.data=2",
                        "--config.mesh.fsdp=1", "--config.mesh.model=8", "--config.mesh.model=4",
                        "--root=gs://bucket/paper"]
  assert [c[5] for c in fetch] == [f"sae-paper:~/sae_jax/logs/{log}.w{w}.log" for w in range(4)]  # one per host
  assert [c[-1] for c in fetch] == [f"--worker={w}" for w in range(4)]
  # After a preemption: the same slice re-created and installed, then the same command.
  assert "#   bash launch/tpu/delete.sh --name=sae-paper --type=v5e-16 --zone=us-west4-a --project=my-proj " \
         "--queued" in out
  assert "#   bash launch/tpu/create.sh --name=sae-paper --type=v5e-16 --zone=us-west4-a --project=my-proj " \
         "--spot --queued" in out
  commands, _ = _dry(trap, "run.sh", *SLICE, "--", "launch/convert.py", "--model=/data/r1", "--out=gs://b/model")
  assert shlex.split(commands[0][-1])[6:] == ["launch/convert.py", "--model=/data/r1", "--out=gs://b/model"]


def test_bad_flags(trap):
  for script, args, message in [
      ("create.sh", ["--name=x", "--zone=z", "--type=v5e-32", "--dry_run"], "unknown TPU slice 'v5e-32'"),
      ("create.sh", ["--zone=z", "--type=v5e-16", "--dry_run"], "--name (or TPU_NAME) is required"),
      ("run.sh", SLICE + ["--", "launch/nope.py"], "no such script launch/nope.py"),
      ("run.sh", SLICE, "no stage given")]:
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu", script), *args], capture_output=True,
                          text=True, env=_env(trap), cwd=REPO, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", (script, proc.stdout)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", sorted(meshes.PRESETS))
def test_presets_fit_the_topologies(name):
  """libtpu's topology has the preset's chips (one device per chip, v4 and v5p as megacore); the mesh covers
  them and splits what the paper's run splits (8 KV heads, 8-row model batches) evenly."""
  p = meshes.PRESETS[name]
  devices = aot.topology_devices(p["topology"])
  assert len(devices) == p["chips"]
  mesh = MeshConfig(**p["mesh"]).make(devices)
  assert dict(mesh.shape) == p["mesh"]
  assert 8 % mesh.shape["model"] == 0 and 8 % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0
  if name == "v5e-16":  # the multi-host slice: 4 hosts of 4 chips in libtpu's topology too
    assert len({d.process_index for d in devices}) == p["hosts"] == 4
  flags = subprocess.run([sys.executable, os.path.join(REPO, "configs", "meshes.py"), name], capture_output=True,
                         text=True, check=True).stdout.split()
  assert flags == [f"--config.mesh.{k}={v}" for k, v in p["mesh"].items()]


def test_root_gives_each_stage_its_paths(tmp_path):
  """--root: every script's unset paths under one root; what the command line sets stays."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  root = "gs://bucket/run"
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "train_sae.py"),
                         "--config=" + os.path.join(REPO, "configs", "paper_r1_llama8b_l19.py"), f"--root={root}",
                         "--print_config"], capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert f'"path": "{root}/model"' in proc.stdout and f'"out_dir": "{root}/sae"' in proc.stdout
  # --sae and --out default under the root too: here the SAE that train_sae.py would have written is missing.
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "reason_score.py"), f"--root={tmp_path}",
                         "--verbosity=-1"], capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --sae '{tmp_path}/sae/sae': no such SAE dir")
  assert os.listdir(tmp_path) == []  # nothing written


def test_run_restarts_a_preempted_stage(tmp_path):
  """A fake gcloud whose first run of the stage fails and whose slice then reads PREEMPTED: run.sh deletes,
  re-creates and re-installs the slice, runs the same command again, and fetches the logs after each attempt.
  A failure on a slice that is still READY is the stage's own: no restart, its exit code."""
  calls = tmp_path / "calls"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text(f"""#!/bin/bash
echo "$*" >> {calls}
case "$*" in
  *"tpu-vm ssh"*host_run.sh*) n=$(grep -c host_run.sh {calls}); [ "$n" -gt 1 ] && [ ! -e {tmp_path}/ready ] ;;
  *"tpu-vm describe"*) [ -e {tmp_path}/ready ] && echo READY || echo PREEMPTED ;;
esac
""")
  fake.chmod(0o755)
  env = {"PATH": os.pathsep.join([str(fake.parent), os.path.dirname(sys.executable), "/usr/bin", "/bin"]),
         "HOME": str(tmp_path)}
  cmd = ["bash", os.path.join(REPO, "launch", "tpu", "run.sh"), "--name=s", "--type=v5e-8", "--zone=z", "--spot",
         "--", "launch/train_sae.py", "--config=configs/demo_smollm2.py"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert proc.returncode == 0, proc.stderr
  verbs = [" ".join(line.split()[:4]) for line in calls.read_text().splitlines()]
  assert verbs == ["compute tpus tpu-vm ssh", "compute tpus tpu-vm scp",  # the run fails; its log is fetched
                   "compute tpus tpu-vm describe",  # PREEMPTED
                   "compute tpus tpu-vm delete", "compute tpus tpu-vm create",  # re-created as a Spot VM
                   "compute tpus tpu-vm scp", "compute tpus tpu-vm ssh",  # re-installed
                   "compute tpus tpu-vm ssh", "compute tpus tpu-vm scp"]  # the same command again, its log
  lines = calls.read_text().splitlines()
  assert lines[0] == lines[7] and "--spot" in lines[4] and "host_run.sh" in lines[0]
  (tmp_path / "ready").touch()
  calls.unlink()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
  assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: train_sae failed on s")
  assert [" ".join(line.split()[:4]) for line in calls.read_text().splitlines()] == [
      "compute tpus tpu-vm ssh", "compute tpus tpu-vm scp", "compute tpus tpu-vm describe"]

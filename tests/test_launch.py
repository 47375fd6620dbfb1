"""Launch scripts end to end: convert works, and bad input gives one `error:` line and a non-zero exit."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, _tiny_hf


def _run(script, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *args], capture_output=True,
                        text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny_llama_cli")
  _tiny_hf("llama").save_pretrained(path)
  return str(path)


def _assert_user_error(proc, message):
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert "Traceback" not in proc.stderr, proc.stderr
  assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr


def test_convert_then_compare(tiny_dir, tmp_path):
  out = tmp_path / "converted"
  proc = _run("convert.py", f"--model={tiny_dir}", f"--out={out}", "--dtype=float32")
  assert proc.returncode == 0, proc.stderr
  assert {"params", "config.json", "run.json"} <= set(os.listdir(out))
  assert "orbax" not in proc.stderr.lower(), proc.stderr  # no INFO lines of its saves
  run = json.load(open(out / "run.json"))
  assert run["flags"]["dtype"] == "float32" and run["versions"]["jax"]
  # Its own earlier output is replaced whole; nothing is left beside it.
  again = _run("convert.py", f"--model={tiny_dir}", f"--out={out}", "--dtype=bfloat16")
  assert again.returncode == 0, again.stderr
  assert json.load(open(out / "config.json"))["sae_jax"]["dtype"] == "bfloat16"
  assert os.listdir(tmp_path) == ["converted"]


def _copy(tiny_dir, tmp_path):
  path = tmp_path / "model"
  shutil.copytree(tiny_dir, path)
  return path


def test_unknown_architecture(tiny_dir, tmp_path):
  path = _copy(tiny_dir, tmp_path)
  cfg = json.load(open(path / "config.json"))
  cfg["architectures"] = ["GPT2LMHeadModel"]
  json.dump(cfg, open(path / "config.json", "w"))
  _assert_user_error(_run("convert.py", f"--model={path}", f"--out={tmp_path / 'o'}"),
                     "unknown architecture ['GPT2LMHeadModel']")


def test_missing_tensor(tiny_dir, tmp_path):
  from safetensors.numpy import load_file, save_file
  path = _copy(tiny_dir, tmp_path)
  tensors = load_file(path / "model.safetensors")
  del tensors["model.layers.2.mlp.up_proj.weight"]
  save_file(tensors, path / "model.safetensors")
  _assert_user_error(_run("convert.py", f"--model={path}", f"--out={tmp_path / 'o'}"),
                     "missing tensor 'model.layers.2.mlp.up_proj.weight'")


def test_wrong_shape(tiny_dir, tmp_path):
  path = _copy(tiny_dir, tmp_path)
  cfg = json.load(open(path / "config.json"))
  cfg["intermediate_size"] = 100
  json.dump(cfg, open(path / "config.json", "w"))
  _assert_user_error(_run("convert.py", f"--model={path}", f"--out={tmp_path / 'o'}"),
                     "down_proj.weight' has shape (64, 96), expected (64, 100)")


def test_truncated_safetensors(tiny_dir, tmp_path):
  path = _copy(tiny_dir, tmp_path)
  f = path / "model.safetensors"
  data = f.read_bytes()
  f.write_bytes(data[: len(data) // 2])
  _assert_user_error(_run("convert.py", f"--model={path}", f"--out={tmp_path / 'o'}"),
                     "truncated safetensors file")
  assert not (tmp_path / "o").exists()


def test_layer_out_of_range(tiny_dir):
  _assert_user_error(_run("compare_reference.py", f"--model={tiny_dir}", "--layer=4"),
                     "layer 4 is out of range: the model has layers 0..3")


def test_compare_reference_report(assets, tmp_path):
  """The user-facing parity check on real SmolLM2 weights: ours (from the GGUF) vs HF torch, float32."""
  proc = _run("compare_reference.py", f"--model={assets.smollm2_gguf}", f"--reference={assets.smollm2_hf}",
              "--dtype=float32", "--layer=19", f"--out={tmp_path}")
  assert proc.returncode == 0, proc.stderr
  report = json.load(open(tmp_path / "parity.json"))
  assert report["logits"]["max_kl"] <= 1e-4 and report["logits"]["top1_agreement"] == 1.0
  assert report["layer19_resid_post"]["relative_l2_error"] <= 1e-4
  assert os.path.exists(tmp_path / "run.json")

"""`load_sae`, the one entry point of every --sae: format detection, hub SAEs as SAELens names them
(`release/sae_id`, SAELens' pretrained_saes.yaml for release names), offline hub errors in one line."""

import json
import os
import subprocess

import numpy as np
import pytest
from huggingface_hub import constants as hf_constants

from sae_jax.errors import UserError
from sae_jax.sae import SAE, SAEConfig, load_sae, save_saelens, save_sparsify
from sae_jax.sae import loading

D_IN, D_SAE = 8, 32
PAPER_SAE = "andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts/blocks.19.hook_resid_post"


def _sae(arch="standard", **kw):
  rng = np.random.default_rng(0)
  p = {"W_enc": rng.standard_normal((D_IN, D_SAE)), "b_enc": rng.standard_normal(D_SAE),
       "W_dec": rng.standard_normal((D_SAE, D_IN)), "b_dec": rng.standard_normal(D_IN)}
  return SAE({k: v.astype(np.float32) for k, v in p.items()},
             SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=4, hook_layer=19), **kw)


def _one_line_error(spec, match):
  with pytest.raises(UserError, match=match) as e:
    load_sae(spec)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_local_dirs_of_either_format(tmp_path):
  saelens = load_sae(save_saelens(str(tmp_path / "a"), _sae()))
  sparsify = load_sae(save_sparsify(str(tmp_path / "layers.19"), _sae("topk")))
  assert saelens.cfg.architecture == "standard" and sparsify.cfg.architecture == "topk"
  np.testing.assert_array_equal(sparsify.params["W_enc"], _sae("topk").params["W_enc"])
  _one_line_error(str(tmp_path / "missing"), "--sae '.*missing': no such SAE dir: expected a SAELens or sparsify")
  _one_line_error("./runs/x", "no such SAE dir")
  _one_line_error(str(tmp_path / "a" / "cfg.json"), "cfg.json' is a file: expected a SAELens or sparsify SAE dir")
  (tmp_path / "empty").mkdir()
  _one_line_error(str(tmp_path / "empty"), "cfg.json not found: expected a SAELens SAE dir")


def test_hub_sae_offline_is_one_line(tmp_path, monkeypatch):
  """No hub here (HF_HUB_OFFLINE=1): the paper's SAE, named as SAELens names it, fails in one line saying how."""
  monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  msg = _one_line_error(PAPER_SAE, "repo andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts, folder "
                                   "blocks.19.hook_resid_post.* is not in the local hub cache and the hub cannot be "
                                   "reached \\(HF_HUB_OFFLINE=1\\)")
  assert "hf download andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts" in msg
  _one_line_error("owner/name", "not a hub SAE: expected a release of SAELens' pretrained SAEs")


def _cached_hub_sae(cache, repo_id, folder, sae):
  """A hub SAE as huggingface_hub's cache holds it after a download (refs/main -> snapshot)."""
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = cache / ("models--" + repo_id.replace("/", "--"))
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  save_saelens(str(repo / "snapshots" / commit / folder), sae)


def test_hub_sae_from_the_cache_and_release_names(tmp_path, monkeypatch):
  monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  _cached_hub_sae(tmp_path / "hub", "owner/name", "blocks.19.hook_resid_post", _sae())
  sae = load_sae("owner/name/blocks.19.hook_resid_post")
  np.testing.assert_array_equal(sae.params["W_dec"], _sae().params["W_dec"])
  assert sae.units == "raw"
  # A release of SAELens' yaml: its repo, the sae_id's path, its norm_scaling_factor (SAELens folds it in).
  directory = {"my-release": {"repo_id": "owner/name", "conversion_func": None, "saes": [
      {"id": "layer_19", "path": "blocks.19.hook_resid_post", "norm_scaling_factor": 2.5}]},
               "converted": {"repo_id": "g/s", "conversion_func": "gemma_2", "saes": [{"id": "x", "path": "x"}]}}
  monkeypatch.setattr(loading, "pretrained_saes_directory", lambda: directory)
  released = load_sae("my-release/layer_19")
  assert (released.units, released.scale) == ("raw", 1.0)  # our cfg.json says raw: the yaml's factor is not for it
  _one_line_error("my-release/layer_20", "release 'my-release' of SAELens' pretrained SAEs has no sae_id "
                                         "'layer_20': expected one of \\['layer_19'\\]")
  _one_line_error("converted/x", "is stored in another format \\(SAELens converts it with 'gemma_2'\\)")


def test_release_norm_scaling_factor_makes_scaled_units(tmp_path, monkeypatch):
  monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  repo = tmp_path / "hub" / "models--o--n"
  _cached_hub_sae(tmp_path / "hub", "o/n", "l3", _sae())
  cfg_path = next(repo.glob("snapshots/*/l3/cfg.json"))
  d = json.loads(cfg_path.read_text())
  del d["sae_jax"]  # as SAELens wrote it: trained with expected_average_only_in, the factor in the yaml
  cfg_path.write_text(json.dumps(dict(d, normalize_activations="expected_average_only_in")))
  monkeypatch.setattr(loading, "pretrained_saes_directory", lambda: {"rel": {"repo_id": "o/n", "saes": [
      {"id": "l3", "path": "l3", "norm_scaling_factor": 2.5}]}})
  sae = load_sae("rel/l3")
  assert (sae.units, sae.scale) == ("scaled", 2.5)
  x = np.ones((2, D_IN), np.float32)
  np.testing.assert_allclose(sae.encode(x), _sae().encode(2.5 * x), rtol=1e-6)


def test_real_pretrained_saes_yaml(compat_python):
  """SAELens 6.54.12's own yaml: a release name resolves as SAE.from_pretrained resolves it."""
  origin = subprocess.run([compat_python, "-c", "import importlib.util; print(importlib.util.find_spec('sae_lens')"
                          ".origin)"], capture_output=True, text=True, check=True).stdout.strip()
  path = os.path.join(os.path.dirname(origin), "pretrained_saes.yaml")
  hub = loading.hub_location("gpt2-small-mlp-tm/blocks.0.hook_mlp_out",
                             directory=loading.read_pretrained_saes_yaml(path))
  assert hub == loading.HubSAE("tommmcgrath/gpt2-small-mlp-out-saes",
                               "sae_group_gpt2_blocks.0.hook_mlp_out_24576:v1",
                               {"dataset_path": "Skylion007/openwebtext",
                                "model_from_pretrained_kwargs": {"center_writing_weights": True}}, 1.049317316132615)

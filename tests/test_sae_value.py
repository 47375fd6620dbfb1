"""The SAE value (units, folds, slicing, placement, jit) and the architecture table every module fills in."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.sae import (ARCHITECTURES, SAE, SAEConfig, fold_activation_norm_scaling_factor, init_params,
                         load_saelens, loss, param_shapes, save_saelens)

D, D_SAE = 8, 24
MODULE_API = ("param_names", "init_params", "encode", "loss_terms", "after_update", "inference_params",
              "saelens_keys", "PER_LATENT", "TRACKS_FIRING")


def _sae(arch, seed=0):
  """Random inference-form params with non-unit decoder rows (so the W_dec-norm fold matters)."""
  cfg = SAEConfig(d_in=D, d_sae=D_SAE, architecture=arch, k=4)
  rng = np.random.default_rng(seed)
  params = {n: rng.normal(size=s).astype(np.float32) for n, s in param_shapes(cfg, training=False).items()}
  params["W_dec"] *= rng.uniform(0.3, 3.0, (D_SAE, 1)).astype(np.float32)
  if "threshold" in params:
    params["threshold"] = np.abs(params["threshold"]) * 0.3
  return SAE(params, cfg)


def _x(seed=1):
  return np.random.default_rng(seed).normal(size=(2, 5, D)).astype(np.float32) * 2


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_module_exports_the_same_set(arch):
  module = ARCHITECTURES[arch]
  assert [name for name in MODULE_API if not hasattr(module, name)] == []
  cfg = SAEConfig(d_in=D, d_sae=D_SAE, architecture=arch, k=4)
  params = init_params(cfg, jax.random.key(0))
  assert sorted(params) == sorted(module.param_names(training=True))
  assert sorted(module.inference_params(params)) == sorted(module.param_names(training=False))
  _, parts = loss(params, jnp.asarray(_x()[0]), cfg)
  assert {"mse_loss", "l0", "explained_variance", "feature_fire_count"} <= set(parts)
  assert module.saelens_keys(cfg)["architecture"] in ("standard", "topk", "jumprelu")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_units_give_the_same_features_and_reconstruction(arch):
  """An SAE in scaled units takes raw x (it scales inside); raw() folds the scale; folded() scales features by
  the decoder norms."""
  raw = _sae(arch)
  s = 1.7
  unscaled = {**raw.params, "W_enc": raw.params["W_enc"] / np.float32(s),
              "W_dec": raw.params["W_dec"] * np.float32(s), "b_dec": raw.params["b_dec"] * np.float32(s)}
  scaled = SAE(unscaled, raw.cfg, "scaled", s)
  x = _x()
  with jax.default_matmul_precision("highest"):
    f = np.asarray(raw.encode(x))
    assert (f > 0).any()
    np.testing.assert_allclose(scaled.encode(x), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaled.raw().encode(x), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaled.decode(scaled.encode(x)), raw.decode(raw.encode(x)), rtol=1e-4, atol=1e-4)
    folded = scaled.folded()
    assert folded.units == "folded" and folded.folded() is folded and raw.raw() is raw
    np.testing.assert_allclose(np.linalg.norm(folded.params["W_dec"], axis=1), 1, rtol=1e-5)
    if raw.arch.PER_LATENT:  # topk's ranking changes with the fold unless its rows are unit norm (its default)
      np.testing.assert_allclose(folded.decode(folded.encode(x)), raw.decode(raw.encode(x)), rtol=1e-4,
                                 atol=1e-4)
      np.testing.assert_allclose(folded.encode(x), f * np.linalg.norm(raw.params["W_dec"], axis=1), rtol=1e-4,
                                 atol=1e-5)
  np.testing.assert_array_equal(scaled.raw().params["W_enc"],
                                fold_activation_norm_scaling_factor(unscaled, s)["W_enc"])


def test_an_sae_passes_through_jit_and_new_params_do_not_recompile():
  sae = _sae("jumprelu")
  run = jax.jit(lambda s, x: s.encode(x))
  x = _x()
  np.testing.assert_array_equal(run(sae, x), sae.encode(x))
  run(_sae("jumprelu", seed=3), x)
  assert run._cache_size() == 1
  leaves, treedef = jax.tree.flatten(sae)
  assert len(leaves) == len(sae.params) and jax.tree.unflatten(treedef, leaves).cfg == sae.cfg


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "batchtopk"])
def test_take_encodes_only_the_chosen_latents(arch):
  sae = _sae(arch)
  features = [17, 0, 5]
  sub = sae.take(features)
  assert sub.d_sae == 3 and sub.params["W_dec"].shape == (3, D) and sub.params["b_dec"].shape == (D,)
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(sub.encode(_x()), np.asarray(sae.encode(_x()))[..., features], rtol=1e-6, atol=1e-6)


def test_checks_are_one_line_user_errors():
  with pytest.raises(UserError, match="topk SAE's latents depend on each other"):
    _sae("topk").take([1])
  with pytest.raises(UserError, match="^SAE d_in 8 != model width 576$"):
    _sae("standard").check_width(576)
  _sae("standard").check_width(D)
  with pytest.raises(UserError, match="SAE d_in 8 != activation width 4"):
    _sae("standard").check_width(4, "activation width")
  with pytest.raises(UserError, match="units 'unit': expected one of"):
    SAE({}, SAEConfig(d_in=D, d_sae=D_SAE), "unit")
  with pytest.raises(UserError, match="an SAE in raw units has no scale"):
    SAE({}, SAEConfig(d_in=D, d_sae=D_SAE), "raw", 2.0)


def test_place_and_abstract_agree():
  mesh = shd.make_mesh(2, 1, 4)
  sae = _sae("jumprelu").place(mesh)
  abstract = SAE.abstract(sae.cfg, mesh, units="raw")
  assert sae.params["W_enc"].sharding.spec == jax.sharding.PartitionSpec(None, "model")
  for name, a in sae.params.items():
    assert a.dtype == jnp.float32 and abstract.params[name].shape == a.shape
    assert abstract.params[name].sharding.is_equivalent_to(a.sharding, a.ndim), name
  assert "W_dec" not in sae.encoder_only().params


@pytest.mark.parametrize("units", ["raw", "folded"])
def test_saelens_files_keep_the_units(tmp_path, units):
  sae = _sae("standard")
  sae = sae.folded() if units == "folded" else sae
  loaded = load_saelens(save_saelens(str(tmp_path / "sae"), sae))
  assert (loaded.units, loaded.scale) == (units, 1.0)
  for name, a in sae.params.items():
    np.testing.assert_array_equal(loaded.params[name], np.asarray(a))

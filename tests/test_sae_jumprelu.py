"""JumpReLU SAE: the straight-through estimators, the L0 schedule, training, sharding, folds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sae_jax.models import sharding as shd
from sae_jax.sae import (SAE, SAEConfig, fold_activation_norm_scaling_factor, fold_W_dec_norm, init_params,
                         init_train_state, l0_coefficient_at, loss, make_train_step, param_specs)
from sae_jax.sae import jumprelu as jr
from test_sae_topk import _batches, _ev

D, D_SAE, B = 16, 64, 64
EPS = 0.1


def _cfg(**kw):
  base = dict(d_in=D, d_sae=D_SAE, architecture="jumprelu", n_steps=300, batch_size=B, lr=3e-3, lr_decay_steps=0,
              l0_coefficient=0.05, l0_warm_up_steps=50, jumprelu_bandwidth=0.05, jumprelu_init_threshold=0.1,
              hook_layer=1)
  return SAEConfig(**dict(base, **kw))


def test_ste_gradients_live_only_within_the_bandwidth():
  theta = jnp.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0])
  offsets = np.array([-0.2, -0.049, 0.0, 0.049, 0.06, 0.01], np.float32)  # h - theta
  h = theta + offsets
  c = jnp.arange(1.0, 7.0)
  inside = np.abs(offsets) < EPS / 2
  g_theta, g_h = jax.grad(lambda t, h: jnp.sum(c * jr.jumprelu(h, t, EPS)), argnums=(0, 1))(theta, h)
  np.testing.assert_allclose(g_theta, np.where(inside, -np.asarray(theta) / EPS * np.asarray(c), 0), rtol=1e-6)
  np.testing.assert_array_equal(g_h, np.where(offsets > 0, c, 0))  # no STE towards h
  g_theta = jax.grad(lambda t: jnp.sum(c * jr.heaviside(h, t, EPS)))(theta)
  np.testing.assert_allclose(g_theta, np.where(inside, -np.asarray(c) / EPS, 0), rtol=1e-6)
  np.testing.assert_array_equal(jr.jumprelu(h, theta, EPS), np.where(offsets > 0, h, 0))
  # Batched: theta's cotangent sums over every leading axis.
  hb = jnp.stack([h, h + 1.0, h])[None]
  g = jax.grad(lambda t: jnp.sum(jr.heaviside(hb, t, EPS)))(theta)
  np.testing.assert_allclose(g, 2 * np.where(inside, -1 / EPS, 0), rtol=1e-6)


def test_threshold_gradient_of_the_loss_only_for_latents_near_their_threshold():
  cfg = _cfg(jumprelu_bandwidth=0.2, l0_warm_up_steps=0)
  params = init_params(cfg, jax.random.key(3))
  x = jnp.asarray(_batches(1, seed=2)[0][:8])
  with jax.default_matmul_precision("highest"):
    h = np.asarray(SAE(params, cfg).encode_pre(x))
    g = jax.grad(lambda p: loss(p, x, cfg)[0])(params)["log_threshold"]
  near = np.any(np.abs(h - cfg.jumprelu_init_threshold) < cfg.jumprelu_bandwidth / 2, axis=0)
  assert 0 < near.sum() < D_SAE
  np.testing.assert_array_equal(np.asarray(g) != 0, near)


def test_l0_coefficient_warms_up_like_lambda():
  cfg = _cfg(l0_coefficient=2.0, l0_warm_up_steps=10)
  np.testing.assert_allclose(l0_coefficient_at(cfg, jnp.array([0, 5, 10, 99])), [0.0, 1.0, 2.0, 2.0])
  assert l0_coefficient_at(_cfg(l0_warm_up_steps=0), 0) == np.float32(0.05)
  x = jnp.asarray(_batches(1)[0])
  params = init_params(cfg, jax.random.key(0))
  _, parts = loss(params, x, cfg, 5)
  np.testing.assert_allclose(parts["l0_loss"], 1.0 * parts["l0"], rtol=1e-6)  # L0 of H(h - theta) = f > 0


def test_training_on_synthetic_sparse_data():
  cfg = _cfg()
  data = _batches(302)
  params, opt_state = init_train_state(cfg, jax.random.key(0))
  step_fn = jax.jit(make_train_step(cfg), donate_argnums=(0, 1))
  metrics = []
  for t, x in enumerate(data[:300]):
    params, opt_state, m = step_fn(params, opt_state, jnp.int32(t), jnp.asarray(x))
    metrics.append(m)
  metrics = jax.device_get(metrics)
  assert np.mean([m["explained_variance"] for m in metrics[-20:]]) > 0.5
  assert metrics[-1]["l0"] < 0.75 * metrics[0]["l0"]  # the L0 penalty prunes
  assert metrics[-1]["l0_coefficient"] == cfg.l0_coefficient
  assert np.any(np.abs(np.asarray(params["log_threshold"]) - np.log(0.1)) > 1e-3)  # thresholds learn
  np.testing.assert_allclose(np.linalg.norm(params["W_dec"], axis=1), 1, rtol=1e-5)
  for x in data[300:]:
    assert _ev(params, cfg, x) > 0.5


def test_folds_keep_the_features():
  """Norm-factor fold (threshold unchanged) and W_dec-norm fold (threshold * n) give the same features."""
  cfg = _cfg(normalize_decoder=False)
  params = SAE(init_params(cfg, jax.random.key(1)), cfg).inference().params
  params["threshold"] = jnp.full((D_SAE,), 0.02)
  params["b_dec"] = jnp.linspace(-0.1, 0.1, D)
  x = _batches(1)[0] / 3.0
  s = np.float32(1.7)
  with jax.default_matmul_precision("highest"):
    f = np.asarray(SAE(params, cfg).encode(jnp.asarray(x * s)))
    folded = fold_activation_norm_scaling_factor(params, s)
    np.testing.assert_array_equal(folded["threshold"], params["threshold"])
    np.testing.assert_allclose(SAE(folded, cfg).encode(jnp.asarray(x)), f, rtol=1e-4, atol=1e-5)
    unit = fold_W_dec_norm(params)
    n = np.linalg.norm(np.asarray(params["W_dec"]), axis=1)
    np.testing.assert_allclose(SAE(unit, cfg).encode(jnp.asarray(x * s)), f * n, rtol=1e-4, atol=1e-5)
    assert (np.asarray(SAE(unit, cfg).encode(jnp.asarray(x * s))) > 0).sum() == (f > 0).sum()


def test_sharded_step_equals_single_device():
  mesh = shd.make_mesh(data=2, model=4)
  cfg = _cfg(l0_warm_up_steps=0, l0_coefficient=0.1, jumprelu_bandwidth=0.5, jumprelu_init_threshold=0.3,
             lr=1e-2)
  data = _batches(3, seed=7)[:, :32] * 0.5
  results = []
  with jax.default_matmul_precision("highest"):
    step_fn = jax.jit(make_train_step(cfg))
    for sharded in (False, True):
      params, opt_state = init_train_state(cfg, jax.random.key(0))
      if sharded:
        params = jax.device_put(params, {n: NamedSharding(mesh, s) for n, s in param_specs(cfg).items()})
      for t, x in enumerate(data):
        x = jnp.asarray(x)
        if sharded:
          x = jax.device_put(x, NamedSharding(mesh, P("data", None)))
        params, opt_state, m = step_fn(params, opt_state, jnp.int32(t), x)
      results.append((jax.device_get(params), jax.device_get(m)))
  (p1, m1), (p8, m8) = results
  assert np.any(p1["log_threshold"] != np.log(0.3))
  for n in p1:
    np.testing.assert_allclose(p8[n], p1[n], rtol=1e-4, atol=1e-5)
  for key in ("loss", "mse_loss", "l0_loss", "l0", "grad_norm"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_init(normalize):
  cfg = _cfg(normalize_decoder=normalize)
  p = init_params(cfg, jax.random.key(0))
  norm = 1.0 if normalize else cfg.decoder_init_norm
  np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=1), norm, rtol=1e-6)
  np.testing.assert_array_equal(p["W_enc"], np.asarray(p["W_dec"]).T)
  np.testing.assert_allclose(np.exp(p["log_threshold"]), 0.1, rtol=1e-6)
  assert not np.any(p["b_enc"]) and not np.any(p["b_dec"])
  assert not cfg.apply_b_dec_to_input  # Gemma Scope's encoder has no pre-bias

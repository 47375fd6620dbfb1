"""TopK and BatchTopK SAEs: selection, unit-norm decoder, AuxK, training, sharding, config errors.

References are numpy re-computations of the formulas in sae_jax/sae/topk.py (sparsify / OpenAI / SAELens).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.sae import SAE, SAEConfig, init_params, init_train_state, loss, make_train_step
from sae_jax.sae import batchtopk as btk_mod
from sae_jax.sae import topk as topk_mod
from sae_jax.sae.base import project_out_parallel
from sae_jax.sae.trainer import param_shardings
from synthetic_acts import SyntheticActs

D, D_SAE, B = 16, 64, 64


def _cfg(architecture="topk", **kw):
  base = dict(d_in=D, d_sae=D_SAE, architecture=architecture, k=8, n_steps=300, batch_size=B, lr=3e-3,
              lr_decay_steps=0, dead_steps_threshold=50, hook_layer=1)
  return SAEConfig(**dict(base, **kw))


def _batches(n, seed=0):
  """Synthetic activations scaled to mean norm sqrt(D), as the trainer's norm factor does."""
  producer = SyntheticActs(D, chunk=B, seed=seed)
  xs = np.stack([np.asarray(producer()[0]) for _ in range(n)])
  return xs * np.float32(np.sqrt(D) / np.mean(np.linalg.norm(xs[:8], axis=-1)))


def _np_topk_mask(a, k):
  """numpy reference: the k largest per row, ties to the lower index (stable sort of -a)."""
  idx = np.argsort(-a, axis=1, kind="stable")[:, :k]
  mask = np.zeros(a.shape, bool)
  np.put_along_axis(mask, idx, True, axis=1)
  return mask


def _ev(params, cfg, x):
  sae = SAE(params, cfg)
  x_hat = np.asarray(sae.decode(sae.encode(jnp.asarray(x))))
  return float(np.mean(1 - np.sum((x_hat - x) ** 2, -1) / np.sum((x - x.mean(0)) ** 2, -1)))


def _train(cfg, batches):
  params, opt_state = init_train_state(cfg, jax.random.key(cfg.seed))
  step_fn = jax.jit(make_train_step(cfg), donate_argnums=(0, 1))
  metrics = []
  for t, x in enumerate(batches):
    params, opt_state, m = step_fn(params, opt_state, jnp.int32(t), jnp.asarray(x))
    metrics.append(m)
  return params, opt_state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def trained():
  """topk and batchtopk trained 300 steps on synthetic sparse data, plus held-out batches."""
  data = _batches(304)
  out = {}
  for arch in ("topk", "batchtopk"):
    cfg = _cfg(arch)
    params, opt_state, metrics = _train(cfg, data[:300])
    out[arch] = (cfg, params, opt_state, metrics)
  return out, data[300:]


# --- selection ----------------------------------------------------------------------------------------------------

def test_topk_keeps_exactly_the_k_largest_per_token():
  cfg = _cfg()
  params = init_params(cfg, jax.random.key(1))
  x = _batches(1, seed=3)[0]
  x = x - x.mean(0)  # centred inputs: about half the pre-activations are positive, far more than k
  with jax.default_matmul_precision("highest"):
    f = np.asarray(jax.jit(lambda s, x: s.encode(x))(SAE(params, cfg), jnp.asarray(x)))
    a = np.maximum(np.asarray(SAE(params, cfg).encode_pre(jnp.asarray(x))), 0)
  assert np.all((a > 0).sum(1) > cfg.k)
  np.testing.assert_array_equal((f != 0).sum(1), np.full(B, cfg.k))
  np.testing.assert_array_equal(f != 0, _np_topk_mask(a, cfg.k))
  np.testing.assert_array_equal(f[f != 0], a[f != 0])
  # Leading dims are kept: [2, B/2, d_in] gives the same features.
  f3 = np.asarray(SAE(params, cfg).encode(jnp.asarray(x.reshape(2, B // 2, D))))
  np.testing.assert_array_equal(f3.reshape(B, D_SAE), f)


@pytest.mark.parametrize("k", [1, 3, 16, 20])
def test_sharded_topk_mask_equals_global_top_k_with_ties(k):
  """Local top k per latent shard + merge = the global top k, ties included (integer-valued rows)."""
  mesh = shd.make_mesh(data=2, model=4)
  a = np.random.RandomState(k).randint(0, 4, size=(8, 64)).astype(np.float32)
  sharded = jax.device_put(jnp.asarray(a), NamedSharding(mesh, P("data", "model")))
  mask = jax.jit(lambda a: topk_mod.topk_mask(a, k, mesh))(sharded)
  np.testing.assert_array_equal(np.asarray(mask), _np_topk_mask(a, k))
  np.testing.assert_array_equal(np.asarray(topk_mod.topk_mask(jnp.asarray(a), k)), _np_topk_mask(a, k))


def test_batchtopk_keeps_k_times_batch_over_the_whole_batch():
  cfg = _cfg("batchtopk")
  params = init_params(cfg, jax.random.key(2))
  x = _batches(1, seed=4)[0]
  x = x - x.mean(0)
  with jax.default_matmul_precision("highest"):
    a = jax.nn.relu(SAE(params, cfg).encode_pre(jnp.asarray(x)))
    f = np.asarray(btk_mod.select(a, cfg))
  a = np.asarray(a)
  kth = np.sort(a.ravel())[::-1][cfg.k * B - 1]
  assert float(btk_mod.kth_largest_nonnegative(jnp.asarray(a), cfg.k * B)) == kth
  assert (f > 0).sum() == cfg.k * B
  per_token = (f > 0).sum(1)
  assert per_token.min() < cfg.k < per_token.max()  # the budget is shared by the batch, not per token
  np.testing.assert_array_equal(f > 0, a >= kth)
  # Fewer positives than k * B: all positives kept, nothing else.
  few = np.zeros((4, 8), np.float32)
  few[0, :3] = [3.0, 1.0, 2.0]
  np.testing.assert_array_equal(np.asarray(btk_mod.batch_topk_mask(jnp.asarray(few), 5)) & (few > 0), few > 0)


# --- decoder norm and the parallel gradient ---------------------------------------------------------------------

def test_decoder_rows_stay_unit_norm_and_parallel_gradient_is_removed():
  cfg = _cfg()
  params, opt_state = init_train_state(cfg, jax.random.key(0))
  np.testing.assert_allclose(np.linalg.norm(params["W_dec"], axis=1), 1, rtol=1e-6)
  np.testing.assert_array_equal(params["W_enc"], params["W_dec"].T)
  w_old = np.asarray(params["W_dec"])
  x = jnp.asarray(_batches(1)[0])
  g = jax.jit(jax.grad(lambda p: loss(p, x, cfg)[0]))(params)["W_dec"]
  assert np.max(np.abs(np.sum(np.asarray(g) * w_old, 1))) > 1e-2  # the raw gradient has a parallel part
  g_proj = np.asarray(project_out_parallel(g, params["W_dec"]))
  np.testing.assert_allclose(np.sum(g_proj * w_old, 1), 0, atol=1e-6 * np.abs(g_proj).max())
  np.testing.assert_allclose(g_proj, g - np.sum(g * w_old, 1, keepdims=True) * w_old, rtol=1e-5, atol=1e-7)
  step_fn = jax.jit(make_train_step(cfg))
  params, opt_state, _ = step_fn(params, opt_state, jnp.int32(0), x)
  # Adam's first moment is (1 - b1) * clipped gradient: orthogonal to the rows it was computed at.
  mu = np.asarray(opt_state.inner[1].mu["W_dec"])
  np.testing.assert_allclose(np.sum(mu * w_old, 1), 0, atol=1e-6 * np.abs(mu).max())
  for t in range(1, 5):
    params, opt_state, _ = step_fn(params, opt_state, jnp.int32(t), x)
    np.testing.assert_allclose(np.linalg.norm(params["W_dec"], axis=1), 1, rtol=1e-6)


# --- AuxK -----------------------------------------------------------------------------------------------------------

def _np_auxk(params, x, cfg, dead):
  """numpy AuxK: alpha * min(n_dead / aux_k, 1) * ||e_hat - e||^2 / ||e - mean e||^2 (sums over the batch)."""
  p = {n: np.asarray(v, np.float64) for n, v in params.items()}
  a = np.maximum((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0)
  f = np.where(_np_topk_mask(a, cfg.k), a, 0)
  e = x - (f @ p["W_dec"] + p["b_dec"])
  cand = np.where(dead[None], a, -np.inf)
  z = np.where(_np_topk_mask(cand, cfg.aux_k_effective) & dead[None], a, 0)
  num = np.sum((z @ p["W_dec"] - e) ** 2)
  return cfg.aux_k_coefficient * min(dead.sum() / cfg.aux_k_effective, 1) * num / np.sum((e - e.mean(0)) ** 2)


def test_auxk_is_zero_without_dead_latents_and_matches_the_formula_with_them():
  cfg = _cfg(aux_k=6, aux_k_coefficient=0.5)
  params = init_params(cfg, jax.random.key(5))
  x = _batches(1, seed=5)[0]
  aux_and_grad = jax.jit(jax.value_and_grad(lambda p, dead: loss(p, jnp.asarray(x), cfg, 0, dead)[1]["aux_loss"]))
  with jax.default_matmul_precision("highest"):
    aux, _ = aux_and_grad(params, jnp.zeros(D_SAE, bool))
    assert float(aux) == 0.0
    for n_dead in (3, 40):  # fewer dead latents than aux_k (down-weighted) and more
      dead = np.zeros(D_SAE, bool)
      dead[np.random.RandomState(n_dead).choice(D_SAE, n_dead, replace=False)] = True
      aux, g = aux_and_grad(params, jnp.asarray(dead))
      assert float(aux) > 0
      np.testing.assert_allclose(aux, _np_auxk(params, x.astype(np.float64), cfg, dead), rtol=1e-4)
      # Of the latents, only dead ones learn from it: no live decoder row, encoder column or bias moves.
      assert np.all(np.asarray(g["W_dec"])[~dead] == 0) and np.any(np.asarray(g["W_dec"])[dead] != 0)
      assert np.all(np.asarray(g["W_enc"])[:, ~dead] == 0) and np.all(np.asarray(g["b_enc"])[~dead] == 0)


def test_step_tracks_dead_latents_and_applies_auxk():
  cfg = _cfg(dead_steps_threshold=3)
  params, opt_state = init_train_state(cfg, jax.random.key(0))
  x = jnp.asarray(_batches(1)[0])
  step_fn = jax.jit(make_train_step(cfg))
  params, opt_state, m = step_fn(params, opt_state, jnp.int32(0), x)
  fired = np.asarray(m["feature_fire_count"]) > 0
  np.testing.assert_array_equal(np.asarray(opt_state.steps_since_fired), np.where(fired, 0, 1))
  assert float(m["aux_loss"]) == 0.0
  forced = opt_state._replace(steps_since_fired=jnp.asarray(np.where(np.arange(D_SAE) < 20, 3, 0), jnp.int32))
  _, _, m = step_fn(params, forced, jnp.int32(1), x)
  assert float(m["aux_loss"]) > 0 and float(m["dead_fraction_auxk"]) == 20 / D_SAE


# --- training -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_training_on_synthetic_sparse_data(trained, arch):
  runs, held_out = trained
  cfg, params, _, metrics = runs[arch]
  assert metrics[-1]["mse_loss"] < 0.2 * metrics[0]["mse_loss"]
  assert np.mean([m["explained_variance"] for m in metrics[-20:]]) > 0.5
  # At most k per token (fewer when fewer pre-activations are positive, as in sparsify); k * B per batch.
  l0 = np.array([m["l0"] for m in metrics])
  assert np.all(l0 <= cfg.k) and l0.mean() > 0.95 * cfg.k
  if arch == "batchtopk":
    np.testing.assert_array_equal(l0, cfg.k)
  for x in held_out:  # the inference encoder (batchtopk: JumpReLU with the learned threshold) on new tokens
    assert _ev(params, cfg, x) > 0.5
  np.testing.assert_allclose(np.linalg.norm(params["W_dec"], axis=1), 1, rtol=1e-5)


def test_batchtopk_exports_a_jumprelu_threshold_that_reproduces_the_batch_selection(trained):
  runs, held_out = trained
  cfg, params, _, metrics = runs["batchtopk"]
  threshold = np.asarray(params["threshold"])
  assert np.all(threshold == threshold[0]) and threshold[0] > 0 and metrics[-1]["threshold"] == threshold[0]
  # The running estimate follows the batches' smallest selected activation (EMA with rate 0.01).
  for x in held_out:
    with jax.default_matmul_precision("highest"):
      a = jax.nn.relu(SAE(params, cfg).encode_pre(jnp.asarray(x)))
      batch_sel = np.asarray(btk_mod.select(a, cfg)) > 0
      jump_sel = np.asarray(SAE(params, cfg).encode(jnp.asarray(x))) > 0
    agree = (batch_sel & jump_sel).sum() / (batch_sel | jump_sel).sum()
    assert agree > 0.8, agree
    assert abs(jump_sel.sum(1).mean() / cfg.k - 1) < 0.3


# --- sharding -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sharded_step_equals_single_device(arch):
  """Params sharded as the trainer shards them on a 2 (data) x 4 (model) mesh, batch on data: = 1 device.

  Both ways of selecting across latent shards: GSPMD's (no mesh given) and ours in shard_map (mesh given).
  """
  mesh = shd.make_mesh(data=2, model=4)
  cfg = _cfg(arch, k=4, aux_k=8, dead_steps_threshold=2, lr=1e-2)
  shardings = param_shardings(cfg, mesh)
  data = _batches(4, seed=7)[:, :32] * 0.5
  results = []
  with jax.default_matmul_precision("highest"):
    for sharded, step_mesh in ((False, None), (True, None), (True, mesh)):
      step_fn = jax.jit(make_train_step(cfg, step_mesh))
      params, opt_state = init_train_state(cfg, jax.random.key(0))
      if sharded:
        params = jax.device_put(params, shardings)
      metrics = []
      for t, x in enumerate(data):
        x = jnp.asarray(x)
        if sharded:
          x = jax.device_put(x, NamedSharding(mesh, P("data", None)))
        params, opt_state, m = step_fn(params, opt_state, jnp.int32(t), x)
        metrics.append(jax.device_get(m))
      if sharded:
        assert params["W_enc"].sharding.spec == P(None, "model")
      results.append((jax.device_get(params), metrics, np.asarray(opt_state.steps_since_fired)))
  (p1, m1, s1) = results[0]
  assert max(m["aux_loss"] for m in m1) > 0  # AuxK took part
  for p8, m8, s8 in results[1:]:
    for n in p1:
      np.testing.assert_allclose(p8[n], p1[n], rtol=1e-4, atol=1e-5)
    for a, b in zip(m1, m8):
      for key in ("loss", "mse_loss", "aux_loss", "l0", "grad_norm"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7)
      np.testing.assert_array_equal(b["feature_fire_count"], a["feature_fire_count"])
    np.testing.assert_array_equal(s8, s1)


# --- sparse decode = dense mask -------------------------------------------------------------------------------------

def _dense_mask(s, k):
  """The k largest per row, ties to the lower index (stable sort of -s), as a dense bool mask."""
  idx = jnp.argsort(-s, axis=1, stable=True)[:, :k]
  return jnp.zeros(s.shape, bool).at[jnp.arange(s.shape[0])[:, None], idx].set(True)


def _dense_loss(params, x, cfg, dead):
  """The dense-mask formulation written out: f = a on its row's top k else 0, x_hat = f @ W_dec + b_dec, + AuxK."""
  a = jax.nn.relu((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
  f = jnp.where(_dense_mask(a, cfg.k), a, 0.0)
  x_hat = f @ params["W_dec"] + params["b_dec"]
  mse = jnp.mean(jnp.sum(jnp.square(x_hat - x), -1))
  e = jax.lax.stop_gradient(x - x_hat)
  z = jnp.where(_dense_mask(jnp.where(dead, a, -jnp.inf), cfg.aux_k_effective) & dead, a, 0.0)
  scale = cfg.aux_k_coefficient * jnp.minimum(jnp.sum(dead) / cfg.aux_k_effective, 1.0)
  aux = scale * jnp.sum(jnp.square(z @ params["W_dec"] - e)) / jnp.sum(jnp.square(e - e.mean(0)))
  return mse + aux, {"mse_loss": mse, "aux_loss": aux, "feature_fire_count": jnp.sum(f > 0, 0)}


def _dense_step(cfg, params, adam_state, since_fired, x):
  """One reference step: dense gradient, parallel part removed, torch clip, Adam, constant lr, unit rows."""
  dead = since_fired >= cfg.dead_steps_threshold
  (loss_value, parts), g = jax.value_and_grad(_dense_loss, has_aux=True)(params, x, cfg, dead)
  w = params["W_dec"]
  g["W_dec"] = g["W_dec"] - jnp.sum(g["W_dec"] * w, 1, keepdims=True) * w
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in g.values()))
  g = {n: v * jnp.minimum(1.0, cfg.clip_grad_norm / (norm + 1e-6)) for n, v in g.items()}
  updates, adam_state = optax.scale_by_adam(cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps).update(g, adam_state)
  new = {n: params[n] - cfg.lr * updates[n] for n in params}
  new["W_dec"] = new["W_dec"] / (jnp.linalg.norm(new["W_dec"], axis=1, keepdims=True) + jnp.finfo(jnp.float32).eps)
  since_fired = jnp.where(parts["feature_fire_count"] > 0, 0, since_fired + 1)
  return new, adam_state, since_fired, dict(parts, loss=loss_value, grad_norm=norm)


def _put(mesh, cfg, params, x):
  if mesh is None:
    return params, x
  return jax.device_put(params, param_shardings(cfg, mesh)), jax.device_put(x, NamedSharding(mesh, P("data", None)))


@pytest.mark.parametrize("mesh_shape", [None, (2, 4)])
def test_sparse_decode_with_ties_equals_dense_mask_exactly(mesh_shape):
  """Integer-valued x and params: a has many ties, including at the k-th place, and every sum is exact in float32,
  so loss and gradients must match the dense formulation bit for bit (a different tie winner would change them).
  """
  mesh = shd.make_mesh(data=mesh_shape[0], model=mesh_shape[1]) if mesh_shape else None
  cfg = _cfg(k=6)
  rs = np.random.RandomState(0)
  params = {"W_enc": rs.randint(-1, 2, (D, D_SAE)), "b_enc": rs.randint(-1, 2, D_SAE),
            "W_dec": rs.randint(-2, 3, (D_SAE, D)), "b_dec": rs.randint(-1, 2, D)}
  params = {n: jnp.asarray(v, jnp.float32) for n, v in params.items()}
  x = jnp.asarray(rs.randint(-2, 3, (32, D)), jnp.float32)
  a = np.maximum(np.asarray((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]), 0)
  kth = -np.sort(-a, 1)[:, cfg.k - 1:cfg.k + 1]
  assert np.sum(kth[:, 0] == kth[:, 1]) > 10 and np.all(kth[:, 0] > 0)  # ties straddle the cut in > 10 of 32 rows
  no_dead = jnp.zeros(D_SAE, bool)
  (ref_loss, ref_parts), ref_grads = jax.jit(jax.value_and_grad(_dense_loss, has_aux=True), static_argnums=2)(
      params, x, cfg, no_dead)
  sparams, sx = _put(mesh, cfg, params, x)
  (got_loss, got_parts), got_grads = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=(2, 5))(
      sparams, sx, cfg, 0, no_dead, mesh)
  assert float(got_loss) == float(ref_loss)
  np.testing.assert_array_equal(got_parts["feature_fire_count"], ref_parts["feature_fire_count"])
  for n in params:
    np.testing.assert_array_equal(got_grads[n], ref_grads[n], err_msg=n)
  # And train steps from these params (the first one with the ties), tolerances as in the test below.
  opt_state = init_train_state(cfg, jax.random.key(0))[1]
  ref = (params, optax.scale_by_adam().init(params), jnp.zeros(D_SAE, jnp.int32))
  step_fn, ref_step = jax.jit(make_train_step(cfg, mesh)), jax.jit(_dense_step, static_argnums=0)
  for t in range(3):
    sparams, opt_state, m = step_fn(sparams, opt_state, jnp.int32(t), sx)
    *ref, rm = ref_step(cfg, *ref, x)
    np.testing.assert_allclose(m["loss"], rm["loss"], rtol=1e-5)
    for n in params:
      np.testing.assert_allclose(sparams[n], ref[0][n], rtol=0, atol=1e-6, err_msg=f"step {t} {n}")


@pytest.mark.parametrize("mesh_shape", [None, (2, 4)])
def test_sparse_decode_steps_equal_dense_mask_steps(mesh_shape):
  """5 train steps (latents die after 2 steps, so AuxK joins in) against the dense reference, 1 device and 2 x 4.

  The two differ only in summation order (k products instead of a d_sae-long dot with zeros, partial sums psummed
  over shards, the pre-bias gradient summed over the batch first), i.e. float32 rounding: here losses differ by
  <= 3e-7 relative and params (entries ~0.25 under unit rows) by <= 1.5e-7 absolute, ~5 ulp. The tolerances, rtol
  1e-5 and atol 1e-6, leave ~5x margin.
  """
  mesh = shd.make_mesh(data=mesh_shape[0], model=mesh_shape[1]) if mesh_shape else None
  cfg = _cfg(k=4, aux_k=8, dead_steps_threshold=2, lr=1e-2)
  data = _batches(5, seed=11)[:, :32]
  params, opt_state = init_train_state(cfg, jax.random.key(3))
  ref = (params, optax.scale_by_adam().init(params), jnp.zeros(D_SAE, jnp.int32))
  ref_step = jax.jit(_dense_step, static_argnums=0)
  step_fn = jax.jit(make_train_step(cfg, mesh))
  params, _ = _put(mesh, cfg, params, data[0])
  for t, x in enumerate(data):
    _, sx = _put(mesh, cfg, params, jnp.asarray(x))
    params, opt_state, m = step_fn(params, opt_state, jnp.int32(t), sx)
    *ref, rm = ref_step(cfg, *ref, jnp.asarray(x))
    for key in ("loss", "mse_loss", "aux_loss", "grad_norm"):
      np.testing.assert_allclose(m[key], rm[key], rtol=1e-5, atol=1e-7, err_msg=f"step {t} {key}")
    np.testing.assert_array_equal(m["feature_fire_count"], rm["feature_fire_count"])
    np.testing.assert_array_equal(opt_state.steps_since_fired, ref[2])
    for n in params:
      np.testing.assert_allclose(params[n], ref[0][n], rtol=0, atol=1e-6, err_msg=f"step {t} {n}")
  assert float(m["aux_loss"]) > 0  # AuxK took part
  if mesh is not None:
    assert params["W_dec"].sharding.spec == P("model", None)


def _dense_dots(jaxpr, size):
  """Number of dot_generals of >= `size` multiply-adds, outside lax.cond branches (AuxK's stays dense)."""
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "cond":
      continue
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      count += np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[i] for i in contract]) >= size
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
          count += _dense_dots(getattr(sub, "jaxpr", sub), size)
  return count


@pytest.mark.parametrize("mesh_shape", [None, (2, 4)])
def test_sparse_decode_leaves_no_dense_decoder_matmul(mesh_shape):
  """The loss and its gradient have 2 [N, d_sae] x [d_sae, d_in]-sized dots, the encoder's forward x W_enc and
  dW_enc. The dense formulation has 9: those, g_h W_enc^T for the pre-bias (topk sums it over the batch first),
  the decoder's f W_dec, dW_dec = f^T g and g W_dec^T, and AuxK's 3 (topk's are in a cond, not counted). Under
  the mesh the count is per shard (size / 4)."""
  mesh = shd.make_mesh(data=mesh_shape[0], model=mesh_shape[1]) if mesh_shape else None
  d_sae, n = 128, 24
  cfg = _cfg(d_sae=d_sae)
  params = init_params(cfg, jax.random.key(0))
  x, dead = jnp.zeros((n, D)), jnp.ones(d_sae, bool)
  size = n * d_sae * D // (4 if mesh else 1)
  sparse = jax.make_jaxpr(jax.value_and_grad(lambda p: loss(p, x, cfg, 0, dead, mesh)[0]))(params)
  dense = jax.make_jaxpr(jax.value_and_grad(lambda p: _dense_loss(p, x, cfg, jnp.zeros(d_sae, bool))[0]))(params)
  assert _dense_dots(sparse.jaxpr, size) == 2
  assert _dense_dots(dense.jaxpr, n * d_sae * D) == 9


# --- config and dispatch --------------------------------------------------------------------------------------------

def test_bad_configs_raise_user_error():
  with pytest.raises(UserError, match="k=65: expected an integer in \\[1, d_sae=64\\] for architecture='topk'"):
    _cfg(k=65)
  with pytest.raises(UserError, match="architecture='batchtopk'"):
    _cfg("batchtopk", k=100)
  with pytest.raises(UserError, match="k=0: expected an integer >= 1"):
    _cfg(k=0)
  with pytest.raises(UserError, match="architecture='gated': expected one of"):
    _cfg("gated")
  with pytest.raises(UserError, match="aux_k=65"):
    _cfg(aux_k=65)
  with pytest.raises(UserError, match="normalize_decoder=True: expected false for architecture='standard'"):
    SAEConfig(d_in=4, d_sae=8, normalize_decoder=True)
  with pytest.raises(UserError, match="apply_b_dec_to_input='yes': expected true or false"):
    _cfg(apply_b_dec_to_input="yes")
  with pytest.raises(UserError, match="topk_threshold_lr=0.0: expected a number in \\(0, 1\\]"):
    _cfg("batchtopk", topk_threshold_lr=0)
  with pytest.raises(UserError, match="aux_k_coefficient=-1"):
    _cfg(aux_k_coefficient=-1)


def test_architecture_defaults_and_replace():
  cfg = _cfg()
  assert cfg.apply_b_dec_to_input and cfg.normalize_decoder and cfg.aux_k_effective == D // 2
  std = SAEConfig(d_in=D, d_sae=D_SAE)
  assert not std.apply_b_dec_to_input and not std.normalize_decoder
  assert std.replace(architecture="topk", k=4).apply_b_dec_to_input  # a new architecture takes its defaults
  assert not std.replace(architecture="topk", k=4, apply_b_dec_to_input=False).apply_b_dec_to_input
  assert SAEConfig.from_dict(cfg.to_dict()) == cfg
  assert SAEConfig.from_dict(_cfg(apply_b_dec_to_input=False).to_dict()).apply_b_dec_to_input is False


def test_encode_needs_a_threshold():
  """The encoder dispatches on the config (batchtopk: JumpReLU at inference), which needs a threshold."""
  cfg = _cfg("batchtopk")
  params = init_params(cfg, jax.random.key(0))
  x = jnp.asarray(_batches(1)[0])
  standard = SAEConfig(d_in=D, d_sae=D_SAE, apply_b_dec_to_input=True)
  np.testing.assert_array_equal(SAE(params, standard).encode(x),
                                jax.nn.relu((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]))
  del params["threshold"]
  with pytest.raises(UserError, match="batchtopk SAE params have no 'threshold'"):
    SAE(params, cfg).encode(x)

"""The `standard` SAE against SAELens 5.5.2 (tests/fixtures/saelens_standard, rules of its README section 1.5).

Sizes, schedules and hyper-parameters come from the fixture's cfg_* values; nothing else is taken from it
except the stored init (torch's RNG cannot be reproduced) and the inputs.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES
from sae_jax.errors import UserError
from sae_jax.sae import (SAE, SAEConfig, estimate_norm_scaling_factor, fold_activation_norm_scaling_factor,
                         fold_W_dec_norm, init_params, l1_coefficient_at, loss, lr_at, make_optimizer,
                         make_train_step, clip_by_global_norm_torch)

NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


def _report(rule, **values):
  """Measured deviations, shown with `pytest -s` (the numbers the README's x-check quotes)."""
  print(f"\n[{rule}] " + ", ".join(f"{k}={v:.3g}" for k, v in values.items()))


@pytest.fixture(scope="module")
def fx():
  with np.load(os.path.join(FIXTURES, "saelens_standard", "trajectory.npz")) as z:
    return {k: z[k][()] if z[k].ndim == 0 else z[k] for k in z.files}  # scalars as numpy scalars


@pytest.fixture(scope="module")
def cfg(fx):
  assert fx["inputs"].shape[0] == fx["cfg_n_steps"]  # one stored batch per step of the trajectory
  return SAEConfig(
      d_in=fx["cfg_d_in"], d_sae=fx["cfg_d_sae"], batch_size=fx["cfg_batch_size"], n_steps=fx["cfg_n_steps"],
      lr=fx["cfg_lr"], l1_coefficient=fx["cfg_l1_coefficient"], l1_warm_up_steps=fx["cfg_l1_warm_up_steps"],
      lr_decay_steps=fx["cfg_lr_decay_steps"], lr_warm_up_steps=fx["cfg_lr_warm_up_steps"],
      adam_beta1=fx["cfg_adam_beta1"], adam_beta2=fx["cfg_adam_beta2"], adam_eps=fx["cfg_adam_eps"],
      clip_grad_norm=fx["cfg_clip_grad_norm"], decoder_init_norm=fx["cfg_decoder_init_norm"])


def _params(fx, prefix):
  return {n: jnp.asarray(fx[f"{prefix}_{n}"]) for n in NAMES}


def _scaled(fx, t):
  """x at step t = float32(inputs[t]) * float32(s), as the fixture's activation store hands it out."""
  return fx["inputs"][t] * np.float32(fx["norm_scaling_factor"])


@pytest.fixture(scope="module")
def run(fx, cfg):
  """Our own N jitted steps from init_* on the stored inputs: per-step metrics and parameter snapshots."""
  with jax.default_matmul_precision("highest"):
    step_fn = jax.jit(make_train_step(cfg), donate_argnums=(0, 1))
    params = _params(fx, "init")
    opt_state = make_optimizer(cfg).init(params)
    metrics, snapshots = [], {}
    for t in range(cfg.n_steps):
      params, opt_state, m = step_fn(params, opt_state, jnp.int32(t), jnp.asarray(_scaled(fx, t)))
      metrics.append(jax.device_get(m))
      if t in (0, 1):
        snapshots[f"after{t + 1}"] = jax.device_get(params)
    snapshots["final"] = jax.device_get(params)
  stacked = {k: np.stack([m[k] for m in metrics]) for k in metrics[0]}
  return stacked, snapshots


def _grads(params, x, cfg, t):
  """Gradients of the loss at step t (lambda_t from the schedule)."""
  with jax.default_matmul_precision("highest"):
    return jax.jit(jax.grad(lambda p, x, t: loss(p, x, cfg, t)[0]))(params, jnp.asarray(x), jnp.int32(t))


# --- init ------------------------------------------------------------------------------------------------------

def _check_init_properties(p, d_in, d_sae, norm):
  assert p["W_enc"].shape == (d_in, d_sae) and p["W_dec"].shape == (d_sae, d_in)
  assert all(np.asarray(v).dtype == np.float32 for v in p.values())
  np.testing.assert_allclose(np.linalg.norm(np.asarray(p["W_dec"], np.float64), axis=1), norm, rtol=1e-6)
  assert np.all(np.asarray(p["W_dec"]) >= 0) and np.mean(np.asarray(p["W_dec"]) > 0) > 0.999
  np.testing.assert_array_equal(np.asarray(p["W_enc"]), np.asarray(p["W_dec"]).T)
  assert not np.any(np.asarray(p["b_enc"])) and not np.any(np.asarray(p["b_dec"]))
  assert p["b_enc"].shape == (d_sae,) and p["b_dec"].shape == (d_in,)


def test_init_properties(fx, cfg):
  ours = init_params(cfg, jax.random.key(cfg.seed))
  _check_init_properties(ours, cfg.d_in, cfg.d_sae, cfg.decoder_init_norm)
  _check_init_properties(_params(fx, "init"), cfg.d_in, cfg.d_sae, cfg.decoder_init_norm)  # SAELens' has them too
  again = init_params(cfg, jax.random.key(cfg.seed))
  other = init_params(cfg, jax.random.key(cfg.seed + 1))
  np.testing.assert_array_equal(ours["W_dec"], again["W_dec"])
  assert not np.array_equal(ours["W_dec"], other["W_dec"])


# --- E: single-step exactness -------------------------------------------------------------------------------------

def test_E1_step0_forward(fx, cfg):
  sae, x = SAE(_params(fx, "init"), cfg), _scaled(fx, 0)
  np.testing.assert_array_equal(x, fx["step0_sae_in"])
  with jax.default_matmul_precision("highest"):
    h = sae.encode_pre(jnp.asarray(x))
    f = jax.nn.relu(h)
    x_hat = sae.decode(f)
  devs = {}
  for name, ours in (("hidden_pre", h), ("feature_acts", f), ("sae_out", x_hat)):
    ref = fx[f"step0_{name}"]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    devs[name] = float(np.max(np.abs(np.asarray(ours) - ref) / (np.abs(ref) + 1e-30)))
  _report("E1 max rel", **devs)


def test_E2_gradients(fx, cfg):
  devs = {}
  for t, prefix in ((0, "init"), (1, "after1")):
    grads = _grads(_params(fx, prefix), _scaled(fx, t), cfg, t)
    for n in NAMES:
      ref = fx[f"step{t}_grad_{n}"]
      dev = float(np.max(np.abs(np.asarray(grads[n]) - ref)) / np.max(np.abs(ref)))
      devs[f"step{t}_{n}"] = dev
      assert dev <= 1e-4, (t, n, dev)
  _report("E2 max|diff|/max|g|", **devs)


def test_E3_params_after_1_and_2_steps(fx, run):
  _, snaps = run
  devs = {}
  for prefix in ("after1", "after2"):
    for n in NAMES:
      np.testing.assert_allclose(snaps[prefix][n], fx[f"{prefix}_{n}"], rtol=1e-4, atol=1e-5)
      devs[f"{prefix}_{n}"] = float(np.max(np.abs(snaps[prefix][n] - fx[f"{prefix}_{n}"])))
  _report("E3 max|diff|", **devs)


# --- C: schedules and the whole trajectory ------------------------------------------------------------------------

def test_C0_schedules(fx, cfg):
  steps = jnp.arange(cfg.n_steps)
  lr, lam = np.asarray(lr_at(cfg, steps)), np.asarray(l1_coefficient_at(cfg, steps))
  np.testing.assert_allclose(lr, fx["step_lr"], rtol=1e-6)
  np.testing.assert_allclose(lam, fx["step_l1_coefficient"], rtol=1e-6)
  assert lam[0] == 0 and lr[-1] > 0
  _report("C0 max rel", lr=float(np.max(np.abs(lr - fx["step_lr"]) / fx["step_lr"])),
          l1=float(np.max(np.abs(lam - fx["step_l1_coefficient"]) / np.maximum(fx["step_l1_coefficient"], 1e-30))))


@pytest.mark.parametrize("n, warm_up, decay", [(40, 0, 10), (30, 5, 10), (20, 1, 0), (12, 4, 8), (9, 0, 0)])
def test_lr_schedule_matches_torch_sequential_lr(n, warm_up, decay):
  """SAELens' composition for the `constant` scheduler, rebuilt from torch's own LR schedulers."""
  import torch
  opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
  scheds, milestones = [], []
  if warm_up:
    scheds.append(torch.optim.lr_scheduler.LinearLR(opt, 1 / warm_up, 1.0, total_iters=warm_up - 1))
    milestones.append(warm_up)
  scheds.append(torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
  if decay:
    scheds.append(torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=decay))
    milestones.append(n - decay)
  sched = torch.optim.lr_scheduler.SequentialLR(opt, scheds, milestones=milestones)
  expected = []
  for _ in range(n):
    expected.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
  cfg = SAEConfig(d_in=4, d_sae=8, n_steps=n, lr=1e-3, lr_warm_up_steps=warm_up, lr_decay_steps=decay)
  np.testing.assert_allclose(np.asarray(lr_at(cfg, jnp.arange(n))), expected, rtol=1e-6, atol=1e-12)


def test_C1_C1b_C2_per_step_losses_and_l0(fx, cfg, run):
  m, _ = run
  np.testing.assert_allclose(m["loss"], fx["step_loss"], rtol=1e-5)
  np.testing.assert_allclose(m["mse_loss"], fx["step_mse_loss"], rtol=1e-5)
  np.testing.assert_allclose(m["l1_loss"], fx["step_l1_loss"], rtol=2e-4, atol=1e-6)
  assert np.max(np.abs(m["l0"] - fx["step_l0"])) <= 3 / cfg.batch_size
  # Not rules of the README, but the same logged quantities: tight too.
  np.testing.assert_allclose(m["sparsity"], fx["step_sparsity"], rtol=2e-4, atol=1e-6)  # as C1b
  np.testing.assert_allclose(m["explained_variance"], fx["step_explained_variance"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(m["grad_norm"], fx["step_grad_norm"], rtol=1e-4)
  np.testing.assert_allclose(m["lr"], fx["step_lr"], rtol=1e-6)
  assert m["feature_fire_count"].shape == (cfg.n_steps, cfg.d_sae)
  np.testing.assert_allclose(m["feature_fire_count"].sum(-1) / cfg.batch_size, m["l0"], rtol=1e-6)

  def rel(k, ref):
    return float(np.max(np.abs(m[k] - fx[ref]) / np.abs(fx[ref])))
  _report("C1/C1b/C2", loss_rel=rel("loss", "step_loss"), mse_rel=rel("mse_loss", "step_mse_loss"),
          l1_abs=float(np.max(np.abs(m["l1_loss"] - fx["step_l1_loss"]))),
          l0_abs=float(np.max(np.abs(m["l0"] - fx["step_l0"]))), sparsity_rel=rel("sparsity", "step_sparsity"),
          ev_abs=float(np.max(np.abs(m["explained_variance"] - fx["step_explained_variance"]))),
          grad_norm_rel=rel("grad_norm", "step_grad_norm"))


def _per_feature_close(ours, ref, name):
  """Fraction of features (W_enc columns / W_dec rows / b_enc entries) allclose(1e-4, 1e-5), relative Frobenius."""
  o, r = np.asarray(ours), np.asarray(ref)
  if name == "W_enc":
    o, r = o.T, r.T
  close = np.isclose(o, r, rtol=1e-4, atol=1e-5)
  frac = float(np.mean(close.reshape(close.shape[0], -1).all(axis=1)))
  frob = float(np.linalg.norm(o - r) / np.linalg.norm(r))
  return frac, frob


def test_C3_final_folded_unitnorm_params(fx, run):
  _, snaps = run
  s = fx["norm_scaling_factor"]
  ours = {"final": snaps["final"]}
  ours["folded"] = fold_activation_norm_scaling_factor(ours["final"], s)
  ours["unitnorm"] = fold_W_dec_norm(ours["folded"])
  devs = {}
  for prefix, p in ours.items():
    for n in NAMES:
      ref = fx[f"{prefix}_{n}"]
      if n == "b_dec":
        np.testing.assert_allclose(p[n], ref, rtol=1e-4, atol=1e-5)
        devs[f"{prefix}_{n}_max"] = float(np.max(np.abs(np.asarray(p[n]) - ref)))
        continue
      frac, frob = _per_feature_close(p[n], ref, n)
      assert frac >= 0.95 and frob <= 1e-2, (prefix, n, frac, frob)
      devs[f"{prefix}_{n}_frob"] = frob
      devs[f"{prefix}_{n}_maxabs"] = float(np.max(np.abs(np.asarray(p[n]) - ref)))
      devs[f"{prefix}_{n}_frac"] = frac
  _report("C3", **devs)


# --- F and S: folds and the norm factor (no trajectory involved) -------------------------------------------------

def test_F_folds_on_stored_params(fx):
  folded = fold_activation_norm_scaling_factor(_params(fx, "final"), fx["norm_scaling_factor"])
  unit = fold_W_dec_norm(_params(fx, "folded"))
  devs = {}
  for n in NAMES:
    np.testing.assert_allclose(folded[n], fx[f"folded_{n}"], rtol=1e-6)
    np.testing.assert_allclose(unit[n], fx[f"unitnorm_{n}"], rtol=1e-6)
    devs[f"folded_{n}"] = float(np.max(np.abs(np.asarray(folded[n]) - fx[f"folded_{n}"])))
    devs[f"unitnorm_{n}"] = float(np.max(np.abs(np.asarray(unit[n]) - fx[f"unitnorm_{n}"])))
  np.testing.assert_allclose(np.linalg.norm(fx["folded_W_dec"], axis=1), fx["folded_W_dec_norms"], rtol=1e-6)
  _report("F max|diff|", **devs)


def test_folded_saes_on_raw_inputs(fx, cfg):
  """The folded SAE on raw x = the unfolded one on s*x; unit-norm features = folded ones times ||W_dec_i||."""
  x = jnp.asarray(fx["inputs"][0])
  with jax.default_matmul_precision("highest"):
    for prefix in ("folded", "unitnorm"):
      sae = SAE(_params(fx, prefix), cfg)
      f = sae.encode(x)
      np.testing.assert_allclose(f, fx[f"eval_{prefix}_feature_acts"], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(sae.decode(f), fx[f"eval_{prefix}_sae_out"], rtol=1e-5, atol=1e-5)


def test_S_norm_scaling_factor(fx):
  batches = list(fx["inputs"])
  s_ref = estimate_norm_scaling_factor(iter(batches), "reference")
  s_all = estimate_norm_scaling_factor(batches, "all_tokens")
  np.testing.assert_allclose(s_ref, fx["norm_scaling_factor"], rtol=1e-6)
  np.testing.assert_allclose(s_all, fx["norm_scaling_factor_all_tokens"], rtol=1e-6)
  # [B, 1, d_in] batches (SAELens' shape) read the same first token.
  assert estimate_norm_scaling_factor([b[:, None, :] for b in batches]) == s_ref
  _report("S rel", reference=abs(s_ref / fx["norm_scaling_factor"] - 1),
          all_tokens=abs(s_all / fx["norm_scaling_factor_all_tokens"] - 1))


def test_norm_scaling_factor_errors():
  with pytest.raises(UserError, match="no activation batches"):
    estimate_norm_scaling_factor([])
  with pytest.raises(UserError, match="norm estimate mode 'first'"):
    estimate_norm_scaling_factor([np.ones((2, 4))], "first")


# --- pieces ---------------------------------------------------------------------------------------------------------

def test_clip_uses_torch_formula():
  clip = clip_by_global_norm_torch(1.0)
  g = {"a": jnp.array([3.0, 4.0]), "b": jnp.zeros((2,))}  # norm 5
  out, _ = clip.update(g, clip.init(g))
  np.testing.assert_allclose(out["a"], np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-7)
  small = {"a": jnp.array([0.3, 0.4])}
  np.testing.assert_array_equal(clip.update(small, clip.init(small))[0]["a"], small["a"])


def test_config_errors_name_the_field():
  with pytest.raises(UserError, match="d_sae=0: expected an integer >= 1"):
    SAEConfig(d_in=4, d_sae=0)
  with pytest.raises(UserError, match="architecture='topk'"):
    SAEConfig(d_in=4, d_sae=8, architecture="topk")
  with pytest.raises(UserError, match="hook_site='attn_out'"):
    SAEConfig(d_in=4, d_sae=8, hook_site="attn_out")
  with pytest.raises(UserError, match="lr_warm_up_steps \\+ lr_decay_steps <= n_steps=10"):
    SAEConfig(d_in=4, d_sae=8, n_steps=10, lr_warm_up_steps=5, lr_decay_steps=6)
  with pytest.raises(UserError, match="unknown SAE config keys \\['l1'\\]"):
    SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "l1": 1.0})
  with pytest.raises(UserError, match="SAE config is missing \\['d_sae'\\]"):
    SAEConfig.from_dict({"d_in": 4})
  with pytest.raises(UserError, match="prepend_bos='yes': expected true or false"):
    SAEConfig(d_in=4, d_sae=8, prepend_bos="yes")
  cfg = SAEConfig(d_in=np.int64(4), d_sae=8, lr=np.float64(1e-3))
  assert type(cfg.d_in) is int and type(cfg.lr) is float and cfg.hook_name == "blocks.19.hook_resid_post"
  assert SAEConfig.from_dict(cfg.to_dict()) == cfg


def test_train_step_is_the_same_sharded(fx, cfg):
  """Params split over d_sae ("model") and the batch over "data" (up to 2 x 4 fake devices, as the fixture's
  batch and d_sae divide) = one device."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  data = math.gcd(cfg.batch_size, 2)
  model = math.gcd(cfg.d_sae, 8 // data)
  mesh = Mesh(np.asarray(jax.devices()[:data * model]).reshape(data, model), ("data", "model"))
  specs = {"W_enc": P(None, "model"), "b_enc": P("model"), "W_dec": P("model", None), "b_dec": P()}
  step_fn = jax.jit(make_train_step(cfg))
  results = []
  with jax.default_matmul_precision("highest"):
    for sharded in (False, True):
      params = _params(fx, "init")
      if sharded:
        params = {n: jax.device_put(p, NamedSharding(mesh, specs[n])) for n, p in params.items()}
      opt_state = make_optimizer(cfg).init(params)
      for t in range(min(3, cfg.n_steps)):
        x = jnp.asarray(_scaled(fx, t))
        if sharded:
          x = jax.device_put(x, NamedSharding(mesh, P("data", None)))
        params, opt_state, m = step_fn(params, opt_state, jnp.int32(t), x)
      results.append((jax.device_get(params), jax.device_get(m)))
  (p1, m1), (p8, m8) = results
  for n in NAMES:
    np.testing.assert_allclose(p8[n], p1[n], rtol=1e-4, atol=1e-5)  # E3's rule: Adam amplifies rounding near g = 0
  for k in ("loss", "mse_loss", "l1_loss", "l0", "grad_norm"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5)

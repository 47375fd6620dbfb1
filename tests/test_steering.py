"""Steering: our jitted transform against PyTorch forward hooks on HF transformers (SmolLM2-135M, float32), in a
forward and in the engine's greedy generation; the traced switch and sweep (bitwise off, one compile); units;
and the builder's checks.

The torch hooks are written from the formulas, not from our code: the intervention hook is the reference's
literal SAE round trip (encode, keep the error, set f_i = c, decode, add the error back) on the full SAE.
"""

import contextlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from conftest import CompileCounter
from sae_jax.errors import UserError
from sae_jax.features.steer import build_steering, dashboard_max_activations, describe, describe_text
from sae_jax.generation import Engine, Request
from sae_jax.models.checkpoint import load_any
from sae_jax.models.inference import forward_logits
from sae_jax.sae import SAE, SAEConfig, load_saelens, save_saelens
from sae_jax.steering import SteeringArgs, SteeringPlan, steer

LAYER = 12
D_SAE = 256
STRENGTH, MAX_ACT = 2.0, 5.840  # the paper's setting: c = 11.68
NEW_TOKENS = 8
# Float32 on both sides, but different kernels (XLA vs torch summation orders) through 30 layers: unsteered
# logits (|logits| ~ 20) already differ by ~1e-4, and steered ones by the same (observed 0.7-1.1e-4). Steering
# adds a few f32 dots on [T, 576], far below that, so 1e-3 is 10x the observed error, while the steering effect
# itself is > 1 (checked): a wrong formula (a sign, a unit row for a raw one, a missed site) fails by far.
LOGIT_ATOL = 1e-3


def _random_sae(d_in: int, seed: int = 0, **cfg_kwargs):
  """Standard-SAE params whose decoder rows are far from unit norm (as the released SAE's) and whose features
  fire on about half the tokens (so both ReLU branches are exercised)."""
  rng = np.random.default_rng(seed)
  w_dec = rng.normal(size=(D_SAE, d_in))
  w_dec *= rng.uniform(0.5, 3.0, size=(D_SAE, 1)) / np.linalg.norm(w_dec, axis=1, keepdims=True)
  params = {"W_enc": rng.normal(size=(d_in, D_SAE)) * 0.3 / np.sqrt(d_in), "b_enc": rng.normal(size=D_SAE) * 0.1,
            "W_dec": w_dec, "b_dec": rng.normal(size=d_in) * 0.01}
  cfg = SAEConfig(d_in=d_in, d_sae=D_SAE, hook_layer=LAYER, **cfg_kwargs)
  return {k: v.astype(np.float32) for k, v in params.items()}, cfg


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
  """Through save_saelens / load_saelens, the path a user's SAE takes."""
  params, cfg = _random_sae(576)
  return load_saelens(save_saelens(str(tmp_path_factory.mktemp("sae") / "sae"), SAE(params, cfg)))


@pytest.fixture(scope="module")
def smol(assets):
  """Our f32 model (and its split), HF's f32 model, tokens [2, T] of two prompts cut to one length, and our
  unsteered logits (checked against HF's, which sets the tolerance)."""
  tok = transformers.AutoTokenizer.from_pretrained(assets.smollm2_hf)
  prompts = ["Solve step by step: what is 17 * 23? First, 17 * 20 = 340, then 17 * 3 = 51, so",
             "Is 221 a prime number? Let me think it over: 221 = 13 * 17, so the answer is"]
  ids = [tok(p)["input_ids"] for p in prompts]
  t = min(len(i) for i in ids)
  tokens = np.asarray([i[:t] for i in ids], np.int32)
  model = load_any(assets.smollm2_hf, dtype=jnp.float32)
  hf = transformers.AutoModelForCausalLM.from_pretrained(assets.smollm2_hf, dtype=torch.float32).eval()
  graphdef, state = nnx.split(model)
  base = np.asarray(forward_logits(graphdef, state, jnp.asarray(tokens), jnp.ones(tokens.shape, bool)))
  smol = {"model": model, "graphdef": graphdef, "state": state, "hf": hf, "tokens": tokens, "base": base}
  unsteered_err = float(np.abs(base - _torch_logits(smol, None, None)).max())
  print(f"unsteered: max |logit diff| vs torch {unsteered_err:.2e}")
  assert unsteered_err <= LOGIT_ATOL
  return smol


def _ours(smol, steering_or_plan, args=None):
  plan, args = (steering_or_plan.plan, steering_or_plan.args) if args is None else (steering_or_plan, args)
  tokens = jnp.asarray(smol["tokens"])
  return np.asarray(forward_logits(smol["graphdef"], smol["state"], tokens, jnp.ones(tokens.shape, bool),
                                   hook_args=args, make_hooks=plan))


@contextlib.contextmanager
def _hooked(module, edit):
  """`edit(h) -> h'` as a forward hook on `module`'s output (no module: unsteered), torch on one thread."""

  def hook(_, __, output):
    if isinstance(output, tuple):
      return (edit(output[0]),) + output[1:]
    return edit(output)

  handle = module.register_forward_hook(hook) if module is not None else None
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # on a shared 2-core machine torch's spinning threads run ~10x slower than one
  try:
    with torch.no_grad():
      yield
  finally:
    torch.set_num_threads(threads)
    if handle is not None:
      handle.remove()


def _torch_logits(smol, module, edit):
  with _hooked(module, edit):
    return smol["hf"](input_ids=torch.as_tensor(smol["tokens"], dtype=torch.long)).logits.numpy()


def _torch_greedy(smol, prompt, n, module=None, edit=None):
  """HF `generate`, greedy: the hook fires on the prompt's forward and on every new token's, as vLLM's does."""
  with _hooked(module, edit):
    out = smol["hf"].generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
  return out[0, len(prompt):].tolist()


def _site_module(smol, site):
  """HF's decoder layer returns resid_post; the reference's vLLM hook effectively edits the MLP output."""
  layer = smol["hf"].model.layers[LAYER]
  return layer.mlp if site == "mlp_out" else layer


def _torch_reference_intervention(sae, ids, c, fired=None):
  """The reference hook body on the whole SAE: f = ReLU(h W_enc + b_enc); err = h - dec(f); f[ids] = c;
  h' = dec(f) + err."""
  p = {k: torch.as_tensor(v) for k, v in sae.params.items()}

  def edit(h):
    f = torch.relu(h.float() @ p["W_enc"] + p["b_enc"])
    if fired is not None:
      fired.append((f[..., ids] > 0).float().mean().item())
    err = h.float() - (f @ p["W_dec"] + p["b_dec"])
    f[..., ids] = torch.as_tensor(c, dtype=torch.float32)
    return (f @ p["W_dec"] + p["b_dec"] + err).to(h.dtype)

  return edit


def _unit(sae, i):
  row = torch.as_tensor(sae.params["W_dec"][i])
  return row / row.norm()


def _torch_clamp(sae, ids, cs):
  """h' = h - (h.d) d + c d per unit direction d (deltas of several features summed)."""

  def edit(h):
    out = h.clone()
    for i, c in zip(ids, cs):
      d = _unit(sae, i)
      out = out + (c - h @ d)[..., None] * d
    return out

  return edit


def _torch_add(sae, ids, cs):
  def edit(h):
    return h + sum(c * _unit(sae, i) for i, c in zip(ids, cs))

  return edit


def _assert_matches(ours, ref, base):
  err = float(np.abs(ours - ref).max())
  effect = float(np.abs(ref - base).max())
  assert err <= LOGIT_ATOL, (err, effect)
  assert effect > 1.0, effect  # the steering changed something the comparison can see
  return err, effect


# ---- parity with torch hooks ----


@pytest.mark.parametrize("site", ["resid_post", "mlp_out"])
def test_intervention_matches_reference_hook(smol, sae, site):
  fid, fired = 7, []
  steering = build_steering(sae, [fid], STRENGTH, MAX_ACT, method="intervention", site=site, layer=LAYER,
                            model_cfg=smol["model"].cfg)
  ref = _torch_logits(smol, _site_module(smol, site),
                      _torch_reference_intervention(sae, [fid], STRENGTH * MAX_ACT, fired))
  assert 0.05 < fired[0] < 0.95, fired  # the feature is on at some tokens and off at others
  err, effect = _assert_matches(_ours(smol, steering), ref, smol["base"])
  print(f"intervention at {site}: max |logit diff| vs torch {err:.2e} (steering moved logits by {effect:.2f})")


@pytest.mark.parametrize("method", ["clamp", "add"])
def test_clamp_and_add_match_torch_hooks(smol, sae, method):
  fid = 11
  steering = build_steering(sae, [fid], STRENGTH, MAX_ACT, method=method, layer=LAYER, units="folded",
                            model_cfg=smol["model"].cfg)
  edit = (_torch_clamp if method == "clamp" else _torch_add)(sae, [fid], [STRENGTH * MAX_ACT])
  ref = _torch_logits(smol, _site_module(smol, "resid_post"), edit)
  err, effect = _assert_matches(_ours(smol, steering), ref, smol["base"])
  print(f"{method}: max |logit diff| vs torch {err:.2e} (steering moved logits by {effect:.2f})")


def test_several_features_at_once(smol, sae):
  ids, strengths, maxes = [3, 40, 200], [2.0, -1.0, 4.0], [5.84, 3.0, 1.5]
  cs = [s * m for s, m in zip(strengths, maxes)]
  steering = build_steering(sae, ids, strengths, maxes, layer=LAYER)
  ref = _torch_logits(smol, _site_module(smol, "resid_post"), _torch_reference_intervention(sae, ids, cs))
  _assert_matches(_ours(smol, steering), ref, smol["base"])  # (several clamped features: the transform test)


def test_strength_zero_ablates_and_is_not_off(smol, sae):
  fid = 7
  steering = build_steering(sae, [fid], 0.0, MAX_ACT, layer=LAYER)
  ablated = _ours(smol, steering)
  ref = _torch_logits(smol, _site_module(smol, "resid_post"), _torch_reference_intervention(sae, [fid], 0.0))
  assert np.abs(ablated - ref).max() <= LOGIT_ATOL
  assert np.abs(ablated - smol["base"]).max() > 1e-2  # the feature fires here, so removing it shows


# ---- the traced switch and sweep ----


def test_off_is_bitwise_unsteered(smol, sae):
  for method, site in [("intervention", "resid_post"), ("intervention", "mlp_out"), ("add", "resid_post")]:
    steering = build_steering(sae, [7], STRENGTH, MAX_ACT, method=method, site=site, layer=LAYER, enabled=False)
    np.testing.assert_array_equal(_ours(smol, steering), smol["base"])


def test_sweep_over_strengths_features_and_switch_reuses_one_compile(smol, sae):
  """After one warm-up pass, other strengths, features and the switch compile nothing (no XLA compile at all,
  and no new entry in the jitted forward's cache)."""

  def sweep(strengths, features):
    first = build_steering(sae, [features[0]], strengths[0], MAX_ACT, layer=LAYER)
    outs = [_ours(smol, first)] + [_ours(smol, first.with_strengths(s)) for s in strengths[1:]]
    outs += [_ours(smol, build_steering(sae, [f], STRENGTH, MAX_ACT, layer=LAYER)) for f in features[1:]]
    off = _ours(smol, SteeringPlan(LAYER), first.args.switched(False))
    again = _ours(smol, first.plan, first.args.switched(False).switched(True))
    return outs, off, again

  sweep([1.0, 3.0], [7, 9])
  size = forward_logits._cache_size()
  with CompileCounter() as compiles:
    outs, off, again = sweep([2.0, 0.5, 4.0, 0.0, -2.0], [7, 8, 100, 255])
  assert compiles.counts == {} and forward_logits._cache_size() == size, compiles.counts
  np.testing.assert_array_equal(off, smol["base"])
  np.testing.assert_array_equal(again, outs[0])
  assert len({o.tobytes() for o in outs}) == len(outs)  # every setting steered differently


def test_steered_greedy_generation_equals_hf_generate_with_the_hook(smol, sae):
  """The reference's form (intervention on mlp_out; strength 8 so that 8 tokens show it) in the engine's jitted
  prefill and decode steps: the same greedy tokens as HF `generate` with the torch hook, which fires on the
  prompt and on every new token; switched off, the same compiled steps give HF's unsteered tokens."""
  strength = 8.0
  steering = build_steering(sae, [7], strength, MAX_ACT, site="mlp_out", layer=LAYER)
  engine = Engine(smol["model"], 2, 64, make_hooks=steering.plan)
  prompts = [[int(t) for t in smol["tokens"][0]], [int(t) for t in smol["tokens"][1][:12]]]
  requests = [Request(i, tuple(p), NEW_TOKENS) for i, p in enumerate(prompts)]
  steered = {r.id: r.tokens for r in engine.generate(requests, steering.args)}
  off = {r.id: r.tokens for r in engine.generate(requests, steering.args.switched(False))}
  edit = _torch_reference_intervention(sae, [7], strength * MAX_ACT)
  for i, p in enumerate(prompts):
    assert steered[i] == _torch_greedy(smol, p, NEW_TOKENS, _site_module(smol, "mlp_out"), edit)
    assert off[i] == _torch_greedy(smol, p, NEW_TOKENS)
  assert steered != off  # the steering changed the generated text


# ---- units ----


def test_folded_and_raw_units_agree_when_c_scales_with_the_row_norm(smol, sae):
  fid = 11
  norm = float(np.linalg.norm(sae.params["W_dec"][fid]))
  for method in ("add", "intervention"):
    raw = build_steering(sae, [fid], STRENGTH, MAX_ACT, method=method, layer=LAYER, units="raw")
    folded = build_steering(sae, [fid], STRENGTH, MAX_ACT * norm, method=method, layer=LAYER, units="folded")
    np.testing.assert_allclose(_ours(smol, folded), _ours(smol, raw), atol=1e-4, rtol=0)
    d_raw, d_folded = describe(raw)[0], describe(folded)[0]
    assert d_raw["row_norm"] == pytest.approx(norm) and d_raw["target"] == pytest.approx(STRENGTH * MAX_ACT)
    assert d_raw["vector_norm"] == pytest.approx(d_folded["vector_norm"], rel=1e-6)
    assert d_folded["target_folded"] == pytest.approx(d_folded["target"])
  # add with raw rows moves h by c * W_dec[i], not c * unit(W_dec[i]): same direction, |W_dec[i]| times the size.
  raw_add = build_steering(sae, [fid], STRENGTH, MAX_ACT, method="add", layer=LAYER, units="raw")
  np.testing.assert_allclose(np.asarray(raw_add.args.w_dec[0]), sae.params["W_dec"][fid], rtol=1e-6)


def test_folded_units_scale_jumprelu_thresholds_and_keep_the_pre_bias():
  """A JumpReLU SAE with a pre-bias (model-free): folded with c * |row| steers exactly as raw with c."""
  params, cfg = _random_sae(32, architecture="jumprelu", apply_b_dec_to_input=True)
  params["threshold"] = np.full(D_SAE, 0.05, np.float32)
  sae = _loaded((params, cfg))
  ids, maxes = [4, 9], np.array([3.0, 1.5])
  norms = np.linalg.norm(params["W_dec"][ids], axis=1)
  raw = build_steering(sae, ids, 2.0, maxes)
  folded = build_steering(sae, ids, 2.0, maxes * norms, units="folded")
  np.testing.assert_allclose(np.asarray(folded.args.threshold), 0.05 * norms, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(folded.args.pre_bias), params["b_dec"])
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 32)) * 0.5, jnp.float32)
  pre = (np.asarray(x) - params["b_dec"]) @ params["W_enc"][:, ids] + params["b_enc"][ids]
  assert 0 < (pre > 0.05).mean() < 1  # both sides of the threshold are exercised
  np.testing.assert_allclose(np.asarray(steer("intervention", folded.args, x)),
                             np.asarray(steer("intervention", raw.args, x)), atol=1e-5)


def test_norm_scaling_factor_is_folded_into_the_rows(tmp_path):
  params, cfg = _random_sae(32)
  loaded = load_saelens(save_saelens(str(tmp_path / "s"), SAE(params, cfg, "scaled", 4.0)))
  assert loaded.units == "scaled" and loaded.scale == 4.0
  steering = build_steering(loaded, [5], 1.0, 2.0)
  raw_input = loaded.raw().params
  np.testing.assert_allclose(np.asarray(steering.args.w_dec[0]), raw_input["W_dec"][5], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(steering.args.w_enc[0]), raw_input["W_enc"][:, 5], rtol=1e-6)
  assert describe(steering)[0]["row_norm"] == pytest.approx(np.linalg.norm(params["W_dec"][5]) / 4.0)
  assert steering.plan == SteeringPlan(LAYER, "resid_post", "intervention")  # the SAE's hook layer by default
  assert hash(SteeringPlan(np.int64(LAYER))) == hash(steering.plan)  # one jit cache entry however it was made


# ---- the transform on its own: JumpReLU, pre-bias, per-row switch, bf16 ----


def test_transform_jumprelu_prebias_per_row_and_dtype():
  rng = np.random.default_rng(3)
  n, d = 2, 16
  x = rng.normal(size=(3, 5, d)).astype(np.float32)
  w_enc, w_dec = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  b_enc, thr, pre = rng.normal(size=n) * 0.1, np.array([0.3, 0.8]), rng.normal(size=d) * 0.2
  target = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 0.5]])
  args = SteeringArgs(enabled=jnp.asarray([True, False, True]), w_dec=jnp.asarray(w_dec, jnp.float32),
                      target=jnp.asarray(target, jnp.float32), w_enc=jnp.asarray(w_enc, jnp.float32),
                      b_enc=jnp.asarray(b_enc, jnp.float32), threshold=jnp.asarray(thr, jnp.float32),
                      pre_bias=jnp.asarray(pre, jnp.float32))
  h = (x - pre) @ w_enc.T + b_enc
  f = np.where(h > thr, np.maximum(h, 0), 0)
  assert 0 < (f > 0).mean() < 1
  want = x + np.einsum("btn,nd->btd", target[:, None, :] - f, w_dec)
  want[1] = x[1]
  got = jax.jit(lambda a, x: steer("intervention", a, x))(args, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got[1]), x[1])
  xb = jnp.asarray(x, jnp.bfloat16)
  got_b = steer("intervention", args, xb)
  assert got_b.dtype == jnp.bfloat16
  want_b = steer("intervention", args, xb.astype(jnp.float32)).astype(jnp.bfloat16)  # f32 math, one rounding
  np.testing.assert_array_equal(np.asarray(got_b, np.float32), np.asarray(want_b, np.float32))
  np.testing.assert_array_equal(np.asarray(got_b[1]), np.asarray(xb[1]))
  clamp = steer("clamp", args.replace(enabled=jnp.asarray(True)), jnp.asarray(x[:, :, :]))
  coord = x @ w_dec.T / (w_dec * w_dec).sum(1)
  np.testing.assert_allclose(np.asarray(clamp), x + np.einsum("btn,nd->btd", target[:, None] - coord, w_dec),
                             atol=1e-5)


# ---- the builder's checks and dashboards ----


def test_max_activation_from_dashboard_and_describe(sae, tmp_path):
  data = {"meta": {}, "features": [{"feature": 7, "max_activation": 5.84}, {"feature": 9, "max_activation": 0.0}]}
  (tmp_path / "features.json").write_text(json.dumps(data))
  steering = build_steering(sae, [7], STRENGTH, dashboard=str(tmp_path), layer=LAYER)
  row = describe(steering)[0]
  norm = float(np.linalg.norm(sae.params["W_dec"][7]))
  assert row["target"] == pytest.approx(11.68) and row["dashboard_max"] == 5.84
  assert row["target_folded"] == pytest.approx(11.68 * norm)
  assert row["of_dashboard_max"] == pytest.approx(11.68 * norm / 5.84)
  assert "feature 7" in describe_text(steering) and "dashboard max 5.84" in describe_text(steering)
  given = build_steering(sae, [7, 8], STRENGTH, 3.0, dashboard=str(tmp_path), layer=LAYER)
  assert [r["dashboard_max"] for r in describe(given)] == [5.84, None]
  with pytest.raises(UserError, match="feature 8 is not in"):
    build_steering(sae, [8], STRENGTH, dashboard=str(tmp_path))
  with pytest.raises(UserError, match="never fired"):
    dashboard_max_activations(str(tmp_path), [9])
  with pytest.raises(UserError, match="no dashboard statistics"):
    build_steering(sae, [7], STRENGTH, dashboard=str(tmp_path / "missing"))


def test_bad_requests_are_one_line_user_errors(smol, sae):
  model_cfg = smol["model"].cfg
  cases = [
      (dict(features=[D_SAE]), "feature 256 is out of range: the SAE has 256 features"),
      (dict(features=[-1]), "out of range"),
      (dict(features=[3, 3]), "repeat"),
      (dict(strengths=float("nan")), "strength must be finite"),
      (dict(strengths=[1.0, 2.0]), "2 values of steering strength for 1 features"),
      (dict(max_activations=float("inf")), "max activation must be finite"),
      (dict(max_activations=None), "needs the max activation"),
      (dict(method="steer"), "unknown steering method"),
      (dict(site="resid"), "unknown steering site"),
      (dict(units="unit"), "unknown steering units"),
      (dict(layer=30, model_cfg=model_cfg), "layer 30 is out of range"),
      (dict(layer=-1), "layer must be an integer >= 0"),
  ]
  for change, message in cases:
    kwargs = {**dict(features=[3], strengths=STRENGTH, max_activations=MAX_ACT, layer=LAYER), **change}
    with pytest.raises(UserError, match=message) as e:
      build_steering(sae, **kwargs)
    assert "\n" not in str(e.value)
  wide = _loaded(_random_sae(64))
  with pytest.raises(UserError, match="SAE d_in 64 != model width 576"):
    build_steering(wide, [3], STRENGTH, MAX_ACT, model_cfg=model_cfg)
  topk = _loaded(_random_sae(576, architecture="topk", k=8))
  with pytest.raises(UserError, match="topk SAE is not supported"):
    build_steering(topk, [3], STRENGTH, MAX_ACT)
  assert build_steering(topk, [3], STRENGTH, MAX_ACT, method="add").args.w_enc is None


def _loaded(params_cfg) -> SAE:
  params, cfg = params_cfg
  return SAE(params, cfg)

"""Feature steering as a model hook transform, traceable so one compiled prefill/decode step serves every setting.

A `SteeringPlan` (layer, site, method) is static and hashable: pass the plan itself as a jitted step's static
`make_hooks` callable. A `SteeringArgs` pytree holds everything a sweep varies (on/off, which features as their
encoder columns and decoder rows, targets c = strength * max activation), so changing strengths, features or
the switch reuses the compiled step. This module knows nothing about SAE files: `sae_jax.features.steer` builds
the args from an SAE, and generation never imports `sae_jax.sae`.

Per feature j with decoder row r_j and target c_j, at every position of every forward, the activation h of the
hooked site becomes h + sum_j delta_j(h):

* `intervention`: delta_j = (c_j - f_j(h)) r_j, f_j(h) = act((h - pre_bias) . e_j + b_j), act = ReLU, or
  JumpReLU when a threshold is given. This is an SAE forward with f_j set to c_j and the reconstruction error
  kept; c = 0 ablates the feature.
* `clamp`: delta_j = (c_j - a_j(h)) r_j with a_j(h) = h . r_j / |r_j|^2, the coordinate of h along r_j.
* `add`: delta_j = c_j r_j.

Rows are used as given: unit rows make clamp and add the textbook forms (h - (h.d)d + c d, h + c d); raw
(unfolded) rows keep c in the SAE's own units, as the reference's intervention does. Several features add
their deltas, each computed from the unsteered h.

Sites: `resid_post` edits the stream the SAE was trained on. `mlp_out` encodes the layer's MLP output and adds
the delta there; since resid_post = resid_mid + mlp_out, the stream moves by the same delta. That is what a
forward hook on vLLM's Llama decoder layer does (its first output is the MLP output, the residual is added by
the next layer), i.e. the reference's behaviour. Any other site is encoded and edited in place the same way.
"""

import dataclasses
import operator

import flax.struct
import jax
import jax.numpy as jnp

from sae_jax.errors import UserError
from sae_jax.models.transformer import SITES, Hooks

METHODS = ("intervention", "clamp", "add")
_HIGHEST = jax.lax.Precision.HIGHEST  # f32 dots really in f32 on TPU too (the default uses bf16 passes)


@flax.struct.dataclass
class SteeringArgs:
  """The traced half of steering. n = features steered at once, d = model width, B = batch rows.

  `enabled` is [] (all rows) or [B] (per row); `target` is [n] or [B, n]. `w_enc`, `b_enc`, `threshold` and
  `pre_bias` are read by `intervention` only (None elsewhere is fine). Arrays may live on any device; the
  transform computes in float32.
  """

  enabled: jax.Array  # bool [] or [B]
  w_dec: jax.Array  # [n, d] decoder rows, in the units the targets are in
  target: jax.Array  # [n] or [B, n]: c = strength * max activation
  w_enc: jax.Array | None = None  # [n, d] encoder columns (W_enc[:, ids].T)
  b_enc: jax.Array | None = None  # [n]
  threshold: jax.Array | None = None  # [n] JumpReLU thresholds; None: ReLU
  pre_bias: jax.Array | None = None  # [d] subtracted before encoding (SAEs with apply_b_dec_to_input)

  def switched(self, on: bool) -> "SteeringArgs":
    """The same args turned on or off, with the switch's dtype and shape kept (no recompile)."""
    return self.replace(enabled=jnp.full(jnp.shape(self.enabled), on, bool))

  def with_targets(self, target) -> "SteeringArgs":
    """New targets c (same shape): a strength sweep without a recompile."""
    return self.replace(target=jnp.asarray(target, jnp.float32).reshape(jnp.shape(self.target)))


@dataclasses.dataclass(frozen=True)
class SteeringPlan:
  """The static half: where and how to steer. `plan(args)` (or `plan.make_hooks(args)`) gives the `Hooks`.

  Compare and hash by value, so two equal plans hit the same jit cache entry when passed as a static arg.
  """

  layer: int
  site: str = "resid_post"
  method: str = "intervention"

  def __post_init__(self):
    if self.method not in METHODS:
      raise UserError(f"unknown steering method {self.method!r}: expected one of {METHODS}")
    if self.site not in SITES:
      raise UserError(f"unknown steering site {self.site!r}: expected one of {SITES}")
    try:
      layer = operator.index(self.layer)  # numpy ints too (stored as int, so the plan hashes the same)
    except TypeError:
      layer = -1
    if isinstance(self.layer, bool) or layer < 0:
      raise UserError(f"steering layer must be an integer >= 0, got {self.layer!r}")
    object.__setattr__(self, "layer", int(layer))

  def make_hooks(self, args: SteeringArgs) -> Hooks:
    _check_shapes(self.method, args)
    return Hooks(transforms={(self.layer, self.site): lambda x: steer(self.method, args, x)})

  __call__ = make_hooks


def steer(method: str, args: SteeringArgs, x: jax.Array) -> jax.Array:
  """x [B, T, d] (or [..., d] with [] switch and [n] targets) -> steered x in x's dtype.

  Off rows return x itself through `jnp.where`, so a switched-off step is bitwise the unsteered one.
  """
  if method not in METHODS:
    raise UserError(f"unknown steering method {method!r}: expected one of {METHODS}")
  xf = x.astype(jnp.float32)
  w_dec = jnp.asarray(args.w_dec, jnp.float32)
  c = _per_row(jnp.asarray(args.target, jnp.float32), x.ndim, trailing=1)
  if method == "add":
    delta = jnp.einsum("...n,nd->...d", c, w_dec, precision=_HIGHEST)
  else:
    coord = _feature_acts(args, xf) if method == "intervention" else _coordinates(xf, w_dec)
    delta = jnp.einsum("...n,nd->...d", c - coord, w_dec, precision=_HIGHEST)
  steered = (xf + delta).astype(x.dtype)
  on = _per_row(jnp.asarray(args.enabled, bool), x.ndim, trailing=0)
  return jnp.where(on, steered, x)


def _feature_acts(args: SteeringArgs, xf: jax.Array) -> jax.Array:
  """The steered features' activations [..., n] of x (float32): ReLU, or JumpReLU with a threshold."""
  if args.pre_bias is not None:
    xf = xf - jnp.asarray(args.pre_bias, jnp.float32)
  pre = jnp.einsum("...d,nd->...n", xf, jnp.asarray(args.w_enc, jnp.float32), precision=_HIGHEST)
  pre = pre + jnp.asarray(args.b_enc, jnp.float32)
  acts = jax.nn.relu(pre)
  if args.threshold is not None:
    acts = jnp.where(pre > jnp.asarray(args.threshold, jnp.float32), acts, 0.0)
  return acts


def _coordinates(xf: jax.Array, w_dec: jax.Array) -> jax.Array:
  """x . r / |r|^2 per row r: the multiple of r that x's projection onto r is."""
  dots = jnp.einsum("...d,nd->...n", xf, w_dec, precision=_HIGHEST)
  return dots / jnp.sum(w_dec * w_dec, axis=-1)


def _per_row(a: jax.Array, x_ndim: int, trailing: int) -> jax.Array:
  """A value given once ([...trailing]) or per batch row ([B, ...trailing]), shaped to broadcast against
  [B, T, ...trailing] activations."""
  if a.ndim == trailing:
    return a
  return a.reshape(a.shape[:1] + (1,) * (x_ndim - 1 - trailing) + a.shape[1:])


def _check_shapes(method: str, args: SteeringArgs) -> None:
  """Trace-time checks, so a malformed pytree fails with a sentence instead of a broadcasting error."""
  shape = jnp.shape(args.w_dec)
  if len(shape) != 2:
    raise UserError(f"steering w_dec must be [n_features, d], got {shape}")
  n, d = shape
  if jnp.shape(args.target)[-1:] != (n,) or len(jnp.shape(args.target)) > 2:
    raise UserError(f"steering target must be [{n}] or [batch, {n}], got {jnp.shape(args.target)}")
  if len(jnp.shape(args.enabled)) > 1:
    raise UserError(f"steering switch must be [] or [batch], got {jnp.shape(args.enabled)}")
  if method != "intervention":
    return
  if args.w_enc is None or args.b_enc is None:
    raise UserError("intervention steering needs the encoder columns w_enc [n, d] and biases b_enc [n]")
  expected = {"w_enc": (n, d), "b_enc": (n,), "threshold": (n,), "pre_bias": (d,)}
  for name, want in expected.items():
    value = getattr(args, name)
    if value is not None and tuple(jnp.shape(value)) != want:
      raise UserError(f"steering {name} must be {list(want)}, got {list(jnp.shape(value))}")

"""One table of architectures and one SAE value that every consumer takes.

`ARCHITECTURES` maps each `SAEConfig.architecture` to its module. Every module exports the same set:

  param_names(training)        its tensors: training state, or (training=False) inference / on-disk form
  init_params(cfg, key)        step-0 params
  encode(params, x, cfg)       the inference encoder: feature activations [..., d_sae] of x [..., d_in]
  loss_terms(params, x, cfg, step, dead, mesh)
                               (x_hat, fire counts [d_sae], penalty, parts) of one batch; `loss` adds the MSE
                               and the reconstruction metrics (base.py), the same for every architecture
  after_update(new, old, parts, cfg)
                               (new params, parts): what the train step does after the optimizer update
  inference_params(params)     the inference / on-disk form of training params
  saelens_keys(cfg)            its keys of SAELens' cfg.json
  PER_LATENT                   a latent's activation reads only its own encoder column (so latents can be sliced)
  TRACKS_FIRING                the optimizer state carries steps-since-fired counters (train.SAEOptState)

An `SAE` is params + config + the units its params work in, so no caller passes a scale or a fold flag along.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import PartitionSpec

from sae_jax import pod
from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.sae import base, batchtopk, jumprelu, standard, topk
from sae_jax.sae.config import SAEConfig

ARCHITECTURES = {"standard": standard, "topk": topk, "batchtopk": batchtopk, "jumprelu": jumprelu}
# Logical axes of every tensor any architecture has ("latent" is the dictionary axis, sharded on `model`).
PARAM_AXES = {"W_enc": (None, "latent"), "b_enc": ("latent",), "W_dec": ("latent", None), "b_dec": (None,),
              "threshold": ("latent",), "log_threshold": ("latent",)}
# What the params of an SAE take and give: "scaled" = trained on scale * x (SAELens' expected_average_only_in
# before its end-of-training fold); "raw" = site activations as the model produces them; "folded" = raw, with
# unit-norm decoder rows, so features are in units of a unit decoder direction (what ReasonScore and the
# dashboards read, as the reference does).
UNITS = ("scaled", "raw", "folded")


def architecture(cfg: SAEConfig):
  """The module of `cfg.architecture`."""
  return ARCHITECTURES[cfg.architecture]


def param_names(cfg: SAEConfig, training: bool = True) -> tuple[str, ...]:
  return architecture(cfg).param_names(training)


def param_shapes(cfg: SAEConfig, training: bool = True) -> dict[str, tuple[int, ...]]:
  sizes = {None: cfg.d_in, "latent": cfg.d_sae}
  return {n: tuple(sizes[a] for a in PARAM_AXES[n]) for n in param_names(cfg, training)}


def param_specs(cfg: SAEConfig, training: bool = True) -> dict[str, PartitionSpec]:
  """PartitionSpecs (latents on the mesh axis of "latent", the rest replicated) for `NamedSharding(mesh, spec)`."""
  latent = shd.LOGICAL_RULES["latent"]
  return {n: PartitionSpec(*(latent if a == "latent" else None for a in PARAM_AXES[n]))
          for n in param_names(cfg, training)}


def init_params(cfg: SAEConfig, key: jax.Array) -> dict[str, jax.Array]:
  """Step-0 training params (standard: SAELens' heuristic init; the others: random unit directions)."""
  return architecture(cfg).init_params(cfg, key)


def loss(params, x, cfg: SAEConfig, step=0, dead=None, mesh=None):
  """(loss, parts) of one batch x [B, d_in] (scaled units) at 0-based step `step`: mse_loss + the architecture's
  penalty (standard: lambda_t * decoder-norm-weighted L1; topk / batchtopk: AuxK over the latents marked in `dead`
  [d_sae] bool, none if None; jumprelu: the warmed-up L0 penalty). parts always has mse_loss, l0,
  explained_variance and feature_fire_count [d_sae]. `mesh` (the one params and batch are sharded on) lets topk's
  per-token selection run shard-locally.
  """
  if dead is None:
    dead = jnp.zeros((cfg.d_sae,), bool)
  x_hat, fired, penalty, parts = architecture(cfg).loss_terms(params, x, cfg, step, dead, mesh)
  metrics = base.reconstruction_metrics(x, x_hat, fired)
  return metrics["mse_loss"] + penalty, {**parts, **metrics}


def fold_activation_norm_scaling_factor(params, s: float):
  """Weights trained on s*x -> weights for raw x: W_enc*s, W_dec/s, b_dec/s (b_enc unchanged), in float32.

  Features are unchanged and the reconstruction comes out in raw units. SAELens does this at the end of `fit()`.
  Other tensors (the jumprelu / batchtopk `threshold`, `log_threshold`) act on the unchanged pre-activations, so
  they pass through as they are.
  """
  s = np.float32(s)
  return {**params, "W_enc": params["W_enc"] * s, "b_enc": params["b_enc"], "W_dec": params["W_dec"] / s,
          "b_dec": params["b_dec"] / s}


def fold_W_dec_norm(params):  # noqa: N802 (SAELens' name)
  """Unit-norm decoder rows: W_dec_i / n_i, W_enc[:, i] * n_i, b_enc_i * n_i (b_dec unchanged).

  Reconstructions are unchanged and features come out in units of a unit decoder direction, which is what
  ReasonScore and the dashboards read. A JumpReLU threshold scales with its pre-activation (threshold * n_i, as
  SAELens' JumpReLU fold). A TopK SAE's ranking changes unless the rows are unit norm already (the default).
  """
  n = jnp.linalg.norm(params["W_dec"], axis=1)
  out = {**params, "W_enc": params["W_enc"] * n, "b_enc": params["b_enc"] * n,
         "W_dec": params["W_dec"] / n[:, None], "b_dec": params["b_dec"]}
  if "threshold" in params:
    out["threshold"] = params["threshold"] * n
  if "log_threshold" in params:
    out["log_threshold"] = params["log_threshold"] + jnp.log(n)
  return out


def checked_params(params, cfg: SAEConfig, where: str) -> dict[str, np.ndarray]:
  """The inference-form tensors as contiguous float32 numpy arrays, names and shapes checked against cfg."""
  expected = param_shapes(cfg, training=False)
  missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
  if missing or extra:
    raise UserError(f"{where}: tensors missing {missing}, unexpected {extra}: expected exactly {sorted(expected)}")
  out = {}
  for name, shape in expected.items():
    a = np.ascontiguousarray(np.asarray(params[name], np.float32))
    if a.shape != shape:
      raise UserError(f"{where}: tensor {name} has shape {a.shape}: "
                      f"expected {shape} from d_in={cfg.d_in}, d_sae={cfg.d_sae}")
    out[name] = a
  return out


@struct.dataclass
class SAE:
  """An SAE: params (a pytree, so an SAE passes through jit), its config, and the units its params work in.

  `encode` takes raw site activations and `decode` gives them back in raw units whatever the units: an SAE in
  "scaled" units multiplies by `scale` (the norm scaling factor) on the way in and divides on the way out.
  `raw()` and `folded()` convert (each a no-op when there is nothing to fold).
  """

  params: dict
  cfg: SAEConfig = struct.field(pytree_node=False)
  units: str = struct.field(pytree_node=False, default="raw")
  scale: float = struct.field(pytree_node=False, default=1.0)

  def __post_init__(self):
    if self.units not in UNITS:
      raise UserError(f"SAE units {self.units!r}: expected one of {UNITS}")
    if self.units != "scaled" and self.scale != 1.0:
      raise UserError(f"an SAE in {self.units} units has no scale (got {self.scale}): use units='scaled'")

  @property
  def arch(self):
    return architecture(self.cfg)

  @property
  def d_in(self) -> int:
    return self.cfg.d_in

  @property
  def d_sae(self) -> int:
    """Latents in `params` (fewer than cfg.d_sae after `take`)."""
    return int(np.shape(self.params["b_enc"])[0])

  def _input(self, x):
    x = jnp.asarray(x).astype(jnp.float32)
    return x * self.scale if self.units == "scaled" else x

  def encode_pre(self, x):
    """Pre-activations h = (x [- b_dec]) W_enc + b_enc of raw activations x [..., d_in]."""
    return base.encode_pre(self.params, self._input(x), self.cfg.apply_b_dec_to_input)

  def encode(self, x):
    """Feature activations [..., d_sae] of raw activations x [..., d_in] (the architecture's inference encoder)."""
    return self.arch.encode(self.params, self._input(x), self.cfg)

  def decode(self, f):
    """The reconstruction of features f [..., d_sae], in raw units."""
    x_hat = base.decode(self.params, f)
    return x_hat / self.scale if self.units == "scaled" else x_hat

  def raw(self) -> "SAE":
    """The same SAE with the scale folded into its params (SAELens' fold at the end of training)."""
    if self.units != "scaled":
      return self
    return SAE(fold_activation_norm_scaling_factor(self.params, self.scale), self.cfg, "raw")

  def folded(self) -> "SAE":
    """Raw units with unit-norm decoder rows (`fold_W_dec_norm`): features in units of a decoder direction."""
    if self.units == "folded":
      return self
    return SAE(fold_W_dec_norm(self.raw().params), self.cfg, "folded")

  def inference(self) -> "SAE":
    """Params in inference / on-disk form (a jumprelu log_threshold becomes threshold)."""
    return self.replace(params=self.arch.inference_params(self.params))

  def encoder_only(self) -> "SAE":
    """Without W_dec, for consumers that only encode (decode then fails)."""
    return self.replace(params={k: v for k, v in self.params.items() if k != "W_dec"})

  def take(self, features) -> "SAE":
    """The SAE restricted to latents `features` (their encoder columns, decoder rows, thresholds), whose
    `encode` gives those features only; for architectures whose latents are independent (PER_LATENT)."""
    if not self.arch.PER_LATENT:
      raise UserError(f"a {self.cfg.architecture} SAE's latents depend on each other: encode them all")
    idx = np.asarray(features, np.int64)
    index = {k: tuple(idx if a == "latent" else slice(None) for a in PARAM_AXES[k]) for k in self.params}
    return self.replace(params={k: v[index[k]] for k, v in self.params.items()})

  def numpy(self) -> "SAE":
    """Params as float32 numpy arrays on the host."""
    return self.replace(params={k: np.asarray(v, np.float32) for k, v in pod.to_host(dict(self.params)).items()})

  def place(self, mesh) -> "SAE":
    """Params as float32 device arrays; with a `mesh`, latents split on its `model` axis (when it divides)."""
    def put(name, a):
      a = a if hasattr(a, "dtype") else np.asarray(a)
      a = a.astype(np.float32) if a.dtype != np.float32 else a
      return jnp.asarray(a) if mesh is None else jax.device_put(a, param_sharding(name, a.shape, mesh))

    return self.replace(params={k: put(k, v) for k, v in self.params.items()})

  def check_width(self, width: int, what: str = "model width") -> None:
    self.cfg.check_width(width, what)

  @classmethod
  def abstract(cls, cfg: SAEConfig, mesh, units: str = "folded") -> "SAE":
    """Inference-form params as ShapeDtypeStructs placed as `place(mesh)` puts them (for AOT compilation)."""
    return cls({k: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=param_sharding(k, shape, mesh))
                for k, shape in param_shapes(cfg, training=False).items()}, cfg, units)


def param_sharding(name: str, shape, mesh):
  """Where `place` puts the tensor `name`: its latent axis on `model` when the mesh divides it."""
  return shd.logical_sharding(PARAM_AXES[name], shape, mesh)

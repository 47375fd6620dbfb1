"""From an SAE and a steering request (features, strengths, max activations) to `sae_jax.steering`'s plan and args.

Units. The reference steers with c = strength * max activation on the released SAE's raw decoder rows, which
are not unit norm, while the max activation (5.840 in the paper) comes from dashboards, which read the
W_dec-norm-folded SAE (ours do too). `units="raw"` reproduces that: rows as released, c as given.
`units="folded"` uses unit rows with encoder columns scaled to match, so c is in the dashboards' units. The
two agree when c_folded = c_raw * |W_dec[i]|; `describe` prints both so a user sees which units a setting is in.

Weights trained on s * x (an unfolded norm scaling factor s) are folded to take raw site activations first:
the features are unchanged and the rows come out in activation units.
"""

import dataclasses
import json
import math
import os

import jax.numpy as jnp
import numpy as np

from sae_jax.errors import UserError
from sae_jax.features.dashboard import check_features
from sae_jax.steering import SteeringArgs, SteeringPlan

UNITS = ("raw", "folded")


@dataclasses.dataclass(frozen=True)
class Steering:
  """A built steering setting: `plan` (static) and `args` (traced) for the model, plus what `describe` shows."""

  plan: SteeringPlan
  args: SteeringArgs
  features: tuple[int, ...]
  strengths: tuple[float, ...]
  max_activations: tuple[float, ...]
  max_source: str  # "given" or the features.json path
  units: str
  raw_row_norms: tuple[float, ...]  # |W_dec[i]| as released (over s if the weights expect s * x)
  dashboard_max: tuple[float | None, ...]  # folded units, when a dashboard has the feature

  @property
  def targets(self) -> np.ndarray:
    return np.asarray(self.strengths, np.float64) * np.asarray(self.max_activations, np.float64)

  def with_strengths(self, strengths) -> "Steering":
    """Another strength for each feature (or one for all): same shapes, so the compiled step is reused."""
    strengths = _per_feature("strength", strengths, len(self.features))
    targets = _targets(strengths, self.max_activations)
    return dataclasses.replace(self, strengths=tuple(strengths), args=self.args.with_targets(targets))


def feature_tensors(sae, features) -> dict:
  """Everything steering reads from an `SAE` (the only function that touches one), for the selected features
  only: the full W_enc of the paper's SAE is 1 GiB, and nothing here reads more than its columns. An SAE in
  "scaled" units has its norm scaling factor folded into those columns and rows.

  Returns the checked feature ids [n]; float32 numpy tensors for raw site activations: w_enc [n, d], b_enc [n],
  w_dec [n, d], b_dec [d], threshold [n] or None; and architecture, apply_b_dec_to_input, d_in, hook_layer.
  """
  cfg, p = sae.cfg, sae.params
  features = _feature_ids(features, int(cfg.d_sae))
  s = np.float32(sae.scale if sae.units == "scaled" else 1.0)
  threshold = p.get("threshold")
  return {"ids": features, "w_enc": np.asarray(p["W_enc"][:, features].T, np.float32) * s,
          "b_enc": np.asarray(p["b_enc"][features], np.float32),
          "w_dec": np.asarray(p["W_dec"][features], np.float32) / s,
          "b_dec": np.asarray(p["b_dec"], np.float32) / s,
          "threshold": None if threshold is None else np.asarray(threshold[features], np.float32),
          "architecture": cfg.architecture, "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
          "d_in": int(cfg.d_in), "hook_layer": int(cfg.hook_layer)}


def dashboard_max_activations(dashboard: str, features, required: bool = True) -> list[float | None]:
  """Max activation of each feature in a dashboard dir (or its features.json), in folded units.

  A feature the dashboard lacks, or that never fired there, is an error when `required`, else None.
  """
  path = _dashboard_json(dashboard)
  try:
    with open(path) as f:
      data = json.load(f)
    table = {int(f["feature"]): float(f["max_activation"]) for f in data["features"]}
  except FileNotFoundError:
    raise UserError(f"no dashboard statistics at {path}: run launch/dashboard.py, or give the max activation")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is not a dashboard features.json ({type(e).__name__}: {e})") from None
  out = []
  for i in features:
    value = table.get(int(i))
    if required and value is None:
      raise UserError(f"feature {int(i)} is not in {path} (it has {sorted(table)[:20]}): "
                      "build its dashboard or give the max activation")
    if required and not value > 0:
      raise UserError(f"feature {int(i)} never fired in the dashboard corpus ({path}: max activation {value}): "
                      "give the max activation")
    out.append(value)
  return out


def build_steering(sae, features, strengths, max_activations=None, *, dashboard: str | None = None,
                   method: str = "intervention", site: str = "resid_post", layer: int | None = None,
                   units: str = "raw", model_cfg=None,
                   enabled: bool = True) -> Steering:
  """Steering of `features` (ids) of `sae` (an `SAE`) with c = strength * max activation per feature.

  `strengths` and `max_activations` are one number or one per feature; without `max_activations` they are
  read from `dashboard` (a launch/dashboard.py output dir), which is otherwise only shown by `describe`.
  `layer` defaults to the SAE's hook layer; `site` is "resid_post" or the reference's "mlp_out" (see
  `sae_jax.steering`). `model_cfg` (the model's `ModelConfig`) checks width and layer against the model.
  """
  t = feature_tensors(sae, features)
  ids = t["ids"]
  plan = SteeringPlan(layer=t["hook_layer"] if layer is None else layer, site=site, method=method)
  if units not in UNITS:
    raise UserError(f"unknown steering units {units!r}: expected one of {UNITS}")
  strengths = _per_feature("strength", strengths, len(ids))
  if model_cfg is not None:
    if t["d_in"] != model_cfg.hidden_size:
      raise UserError(f"SAE d_in {t['d_in']} != model width {model_cfg.hidden_size}")
    if plan.layer >= model_cfg.num_layers:
      raise UserError(f"steering layer {plan.layer} is out of range: the model has {model_cfg.num_layers} layers")
  if method == "intervention" and t["architecture"] == "topk":
    raise UserError("intervention steering of a topk SAE is not supported: a latent's activation depends on the "
                    "top k of all latents; use method 'clamp' or 'add', or a standard / jumprelu SAE")
  norms = np.linalg.norm(t["w_dec"].astype(np.float64), axis=1)
  if not np.all(norms > 0):
    raise UserError(f"feature {int(ids[np.argmin(norms)])} has a zero decoder row: it has no direction to steer")
  dash = dashboard_max_activations(dashboard, ids, required=max_activations is None) if dashboard else None
  if max_activations is None:
    if dash is None:
      raise UserError("steering needs the max activation of each feature: give it, or a dashboard dir")
    max_activations, source = dash, _dashboard_json(dashboard)
  else:
    source = "given"
  max_activations = _per_feature("max activation", max_activations, len(ids))
  targets = _targets(strengths, max_activations)
  args = _args(method, t, norms, targets, units, enabled)
  return Steering(plan=plan, args=args, features=tuple(int(i) for i in ids), strengths=tuple(strengths),
                  max_activations=tuple(max_activations), max_source=source, units=units,
                  raw_row_norms=tuple(float(n) for n in norms),
                  dashboard_max=tuple(dash) if dash else (None,) * len(ids))


def _args(method, t, norms, targets, units, enabled) -> SteeringArgs:
  """Folded units: unit rows, and encoder columns, biases and thresholds times |W_dec[i]| (SAELens' fold)."""
  scale = (norms if units == "folded" else np.ones_like(norms)).astype(np.float32)
  encoder = {}
  if method == "intervention":
    encoder = {"w_enc": jnp.asarray(t["w_enc"] * scale[:, None]), "b_enc": jnp.asarray(t["b_enc"] * scale),
               "threshold": None if t["threshold"] is None else jnp.asarray(t["threshold"] * scale),
               "pre_bias": jnp.asarray(t["b_dec"]) if t["apply_b_dec_to_input"] else None}
  return SteeringArgs(enabled=jnp.asarray(bool(enabled)), w_dec=jnp.asarray(t["w_dec"] / scale[:, None]),
                      target=jnp.asarray(targets, jnp.float32), **encoder)


def describe(steering: Steering) -> list[dict]:
  """Per feature: the numbers that say which units a setting is in.

  `row_norm` is |W_dec[i]| as released (over the norm scaling factor s if the weights expect s * x); `target`
  is c in the setting's units; `target_folded` is c in unit-row units (= the norm of the vector c * row: the
  component the steered activation is set to, or what `add` adds); `dashboard_max` is the dashboard's max
  activation (folded units) when known, and `of_dashboard_max` how many of those the target is.
  """
  rows = []
  for j, fid in enumerate(steering.features):
    c = float(steering.targets[j])
    row_norm = steering.raw_row_norms[j]
    folded = c * row_norm if steering.units == "raw" else c
    dash = steering.dashboard_max[j]
    rows.append({"feature": fid, "method": steering.plan.method, "layer": steering.plan.layer,
                 "site": steering.plan.site, "units": steering.units, "strength": steering.strengths[j],
                 "max_activation": steering.max_activations[j], "max_source": steering.max_source,
                 "target": c, "row_norm": row_norm, "target_folded": folded, "vector_norm": abs(folded),
                 "dashboard_max": dash, "of_dashboard_max": folded / dash if dash else None})
  return rows


def describe_text(steering: Steering) -> str:
  """`describe` as lines a launch script prints before generating."""
  lines = []
  for r in describe(steering):
    dash = ("" if r["dashboard_max"] is None else
            f", dashboard max {r['dashboard_max']:.4g} (target = {r['of_dashboard_max']:.3g}x of it)")
    lines.append(f"feature {r['feature']} ({r['method']} at layer {r['layer']} {r['site']}, {r['units']} units): "
                 f"c = {r['strength']:g} x {r['max_activation']:.4g} = {r['target']:.4g}; |W_dec| {r['row_norm']:.4g}; "
                 f"steering vector norm |c| x |row| = {r['vector_norm']:.4g} (c in folded units "
                 f"{r['target_folded']:.4g}){dash}")
  return "\n".join(lines)


def _dashboard_json(dashboard: str) -> str:
  return dashboard if dashboard.endswith(".json") else os.path.join(dashboard, "features.json")


def _targets(strengths, max_activations) -> np.ndarray:
  targets = np.asarray(strengths, np.float64) * np.asarray(max_activations, np.float64)
  if not np.all(np.abs(targets) < np.finfo(np.float32).max):
    raise UserError(f"steering targets strength * max activation overflow float32: {targets.tolist()}")
  return targets


def _feature_ids(features, d_sae: int) -> np.ndarray:
  try:
    ids = [int(f) for f in np.atleast_1d(features)]
  except (TypeError, ValueError):
    raise UserError(f"steering features must be integer ids, got {features!r}") from None
  if not ids:
    raise UserError("no features to steer")
  return check_features(ids, d_sae)  # in range, no repeats


def _per_feature(name: str, values, n: int) -> list[float]:
  """One finite number, or n of them, as floats."""
  try:
    values = [float(v) for v in np.atleast_1d(np.asarray(values, dtype=object))]
  except (TypeError, ValueError):
    raise UserError(f"steering {name} must be a number or one per feature, got {values!r}") from None
  if len(values) == 1:
    values = values * n
  if len(values) != n:
    raise UserError(f"{len(values)} values of steering {name} for {n} features: expected 1 or {n}")
  for v in values:
    if not math.isfinite(v):
      raise UserError(f"steering {name} must be finite, got {v}")
  return values


__all__ = ["UNITS", "Steering", "build_steering", "dashboard_max_activations", "describe",
           "describe_text", "feature_tensors"]

"""The SAE config: architecture, where its activations come from, and how it is trained.

Defaults are the paper's `training/configs/r1-distill-llama-8b.yaml` (sae_jax/paper.md, "The SAE") except the
sizes, which every config must give. The other architectures (topk, batchtopk, jumprelu) read their own fields
below; `apply_b_dec_to_input` and `normalize_decoder` left as None take the architecture's default
(`ARCH_DEFAULTS`).
"""

import dataclasses
import math
import numbers
import re
from typing import Any

import numpy as np

from sae_jax.errors import UserError
from sae_jax.models.transformer import SITES

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
# (apply_b_dec_to_input, normalize_decoder) when left None: the paper's SAELens config for standard; sparsify /
# OpenAI (pre-bias, unit-norm decoder) for topk and batchtopk; for jumprelu Gemma Scope's encoder (no pre-bias)
# and, our choice, the same unit-norm decoder (SAELens 5.5.2 leaves its W_dec free: normalize_decoder=False).
ARCH_DEFAULTS = {"standard": (False, False), "topk": (True, True), "batchtopk": (True, True),
                 "jumprelu": (False, True)}
NORMALIZE_ACTIVATIONS = ("expected_average_only_in", "none")
NORM_ESTIMATES = ("reference", "all_tokens")
_MAY_BE_ZERO = ("hook_layer", "lr_warm_up_steps", "lr_decay_steps", "l1_warm_up_steps", "seed", "aux_k",
                "l0_warm_up_steps")
_OPTIONAL_BOOLS = ("apply_b_dec_to_input", "normalize_decoder")
_KINDS = {int: (numbers.Integral, "an integer"), float: (numbers.Real, "a number"), bool: (bool, "true or false"),
          str: (str, "a string")}
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.hook_(\w+)$")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
  """One SAE run. Step counts are optimizer steps; `batch_size` is tokens per step."""

  d_in: int
  d_sae: int
  architecture: str = "standard"
  apply_b_dec_to_input: bool | None = None  # subtract b_dec from the encoder input; None: ARCH_DEFAULTS
  # Where the activations come from (SAELens names them model_name / hook_name / context_size ...).
  model_name: str = ""
  hook_layer: int = 19
  hook_site: str = "resid_post"
  context_size: int = 1024
  dataset_path: str = ""
  prepend_bos: bool = False
  exclude_special_tokens: tuple[int, ...] = (128000, 128001)
  # Training.
  n_steps: int = 200_000
  batch_size: int = 4096
  lr: float = 5e-5
  lr_warm_up_steps: int = 0
  lr_decay_steps: int = 40_000
  l1_coefficient: float = 5.0
  l1_warm_up_steps: int = 10_000
  adam_beta1: float = 0.9
  adam_beta2: float = 0.999
  adam_eps: float = 1e-8
  clip_grad_norm: float = 1.0
  decoder_init_norm: float = 0.1
  normalize_activations: str = "expected_average_only_in"
  norm_estimate: str = "reference"  # SAELens 5.5.2 reads token 0 of each batch; "all_tokens" reads all
  n_batches_for_norm_estimate: int = 1000
  seed: int = 42
  # Every architecture but standard: unit-norm decoder rows (renormalised after each update, the gradient
  # component parallel to each row removed first). standard must keep it off (SAELens' decoder-norm-weighted L1).
  normalize_decoder: bool | None = None
  # topk / batchtopk: k latents per token (batchtopk: k * batch_size per batch) and AuxK for dead latents.
  k: int = 32
  aux_k: int = 0  # dead latents per token in the AuxK reconstruction; 0: d_in // 2 (sparsify's heuristic)
  aux_k_coefficient: float = 1 / 32  # OpenAI's alpha
  dead_steps_threshold: int = 1000  # steps without firing after which a latent counts as dead (SAELens' window)
  topk_threshold_lr: float = 0.01  # batchtopk: EMA rate of the inference threshold (SAELens)
  # jumprelu (Rajamanoharan et al. 2024; SAELens' defaults).
  jumprelu_bandwidth: float = 0.001
  jumprelu_init_threshold: float = 0.001
  l0_coefficient: float = 1.0
  l0_warm_up_steps: int = 10_000

  def __post_init__(self):
    for f in dataclasses.fields(self):  # numpy scalars (e.g. from an .npz) become plain Python values for JSON
      if f.type in _KINDS:
        _coerce(self, f.name, f.type)
    try:
      object.__setattr__(self, "exclude_special_tokens", tuple(int(t) for t in self.exclude_special_tokens))
    except (TypeError, ValueError):
      raise UserError(f"SAE config exclude_special_tokens={self.exclude_special_tokens!r}: "
                      "expected a list of token ids") from None
    _choice("architecture", self.architecture, ARCHITECTURES)
    for name, default in zip(_OPTIONAL_BOOLS, ARCH_DEFAULTS[self.architecture]):
      value = getattr(self, name)
      if value is None:
        object.__setattr__(self, name, default)
      elif isinstance(value, (bool, np.bool_)):
        object.__setattr__(self, name, bool(value))
      else:
        raise UserError(f"SAE config {name}={value!r}: expected true or false")
    _choice("hook_site", self.hook_site, SITES)
    _choice("normalize_activations", self.normalize_activations, NORMALIZE_ACTIVATIONS)
    _choice("norm_estimate", self.norm_estimate, NORM_ESTIMATES)
    for f in dataclasses.fields(self):
      if f.type is int:
        low = 0 if f.name in _MAY_BE_ZERO else 1
        _check(self, f.name, getattr(self, f.name) >= low, f"an integer >= {low}")
    for f in dataclasses.fields(self):
      if f.type is float:
        _check(self, f.name, math.isfinite(getattr(self, f.name)), "a finite number")
    for name in ("lr", "clip_grad_norm", "decoder_init_norm", "adam_eps", "jumprelu_bandwidth",
                 "jumprelu_init_threshold"):
      _check(self, name, getattr(self, name) > 0, "a number > 0")
    for name in ("l1_coefficient", "l0_coefficient", "aux_k_coefficient"):
      _check(self, name, getattr(self, name) >= 0, "a number >= 0")
    _check(self, "topk_threshold_lr", 0 < self.topk_threshold_lr <= 1, "a number in (0, 1]")
    if self.architecture == "standard":
      _check(self, "normalize_decoder", not self.normalize_decoder,
             "false for architecture='standard' (SAELens' decoder-norm-weighted L1)")
    if self.architecture in ("topk", "batchtopk"):
      _check(self, "k", self.k <= self.d_sae,
             f"an integer in [1, d_sae={self.d_sae}] for architecture={self.architecture!r}")
    _check(self, "aux_k", self.aux_k <= self.d_sae, f"an integer in [0, d_sae={self.d_sae}] (0: d_in // 2)")
    for name in ("adam_beta1", "adam_beta2"):
      _check(self, name, 0 <= getattr(self, name) < 1, "a number in [0, 1)")
    _check(self, "lr_warm_up_steps", self.lr_warm_up_steps + self.lr_decay_steps <= self.n_steps,
           f"lr_warm_up_steps + lr_decay_steps <= n_steps={self.n_steps}")

  @property
  def hook_name(self) -> str:
    """The TransformerLens / SAELens name of the hook, e.g. `blocks.19.hook_resid_post`."""
    return f"blocks.{self.hook_layer}.hook_{self.hook_site}"

  @property
  def aux_k_effective(self) -> int:
    """Dead latents per token in AuxK: `aux_k`, or d_in // 2 (sparsify, OpenAI appendix B.1), at most d_sae."""
    return min(self.aux_k or max(self.d_in // 2, 1), self.d_sae)

  def check_width(self, width: int, what: str = "model width") -> None:
    """The one-line error for activations of another width than the SAE's d_in."""
    if int(width) != self.d_in:
      raise UserError(f"SAE d_in {self.d_in} != {what} {int(width)}")

  @property
  def training_tokens(self) -> int:
    return self.n_steps * self.batch_size

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["exclude_special_tokens"] = list(self.exclude_special_tokens)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
    """Unknown keys are an error (a typo must not silently fall back to a default)."""
    fields = dataclasses.fields(cls)
    unknown = sorted(set(d) - {f.name for f in fields})
    if unknown:
      raise UserError(f"unknown SAE config keys {unknown}: expected some of {sorted(f.name for f in fields)}")
    missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in d]
    if missing:
      raise UserError(f"SAE config is missing {missing}: expected every field without a default")
    return cls(**d)

  def replace(self, **changes) -> "SAEConfig":
    """A changed architecture takes its own defaults for the None-able fields unless they are given too."""
    if changes.get("architecture", self.architecture) != self.architecture:
      for name in _OPTIONAL_BOOLS:
        changes.setdefault(name, None)
    return dataclasses.replace(self, **changes)


def parse_hook_name(hook_name: str) -> tuple[int, str]:
  """`blocks.19.hook_resid_post` -> (19, "resid_post")."""
  m = _HOOK_NAME.match(str(hook_name))
  if not m or m.group(2) not in SITES:
    raise UserError(f"unsupported hook_name {hook_name!r}: "
                    f"expected 'blocks.<layer>.hook_<site>' with site in {SITES}")
  return int(m.group(1)), m.group(2)


def _choice(name, value, allowed):
  if value not in allowed:
    raise UserError(f"SAE config {name}={value!r}: expected one of {allowed}")


def _check(cfg, name, ok, expected):
  if not ok:
    raise UserError(f"SAE config {name}={getattr(cfg, name)!r}: expected {expected}")


def _coerce(cfg, name, cast):
  value, (kind, what) = getattr(cfg, name), _KINDS[cast]
  if (isinstance(value, bool) and cast is not bool) or not isinstance(value, kind):
    raise UserError(f"SAE config {name}={value!r}: expected {what}")
  object.__setattr__(cfg, name, cast(value))

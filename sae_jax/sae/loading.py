"""One entry point for every SAE file the library reads: `load_sae(spec)`, used by every script that takes --sae.

`spec` is a local dir, in SAELens format (`sae_weights.safetensors`: ours, SAELens 5.x or 6) or sparsify's
(`sae.safetensors`), or a hub SAE named as SAELens' `SAE.from_pretrained(release, sae_id)` names it, written
`release/sae_id`: a release of SAELens' pretrained_saes.yaml (read from an installed sae-lens, which is then
needed for release names), or a hub repo id `owner/name` followed by the sae_id, which is the folder in that repo
(what SAELens does with a repo id its yaml does not list); e.g. the paper's SAE is
`andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts/blocks.19.hook_resid_post`. Hub files are fetched by
huggingface_hub into its cache (with HF_HUB_OFFLINE=1, from that cache only).
"""

import dataclasses
import functools
import importlib.util
import os

from sae_jax.errors import UserError
from sae_jax.sae.core import SAE
from sae_jax.sae.saelens_format import CFG_FILENAME, WEIGHTS_FILENAME, load_saelens
from sae_jax.sae.sparsify_format import WEIGHTS_FILENAME as SPARSIFY_WEIGHTS
from sae_jax.sae.sparsify_format import load_sparsify


@dataclasses.dataclass(frozen=True)
class HubSAE:
  """Where a hub SAE lives and what SAELens' yaml adds to its cfg.json."""

  repo_id: str
  folder: str
  config_overrides: dict = dataclasses.field(default_factory=dict)
  norm_scaling_factor: float | None = None


def load_sae(spec: str, what: str = "--sae") -> SAE:
  """The SAE at `spec` (a local dir in any format we read, or a hub `release/sae_id`); one-line errors."""
  spec = str(spec)
  if os.path.isdir(spec):
    return _load_dir(spec)
  if os.path.exists(spec):
    raise UserError(f"{what} {spec!r} is a file: expected a SAELens or sparsify SAE dir (the one holding it)")
  if not spec or os.path.isabs(spec) or spec.startswith(("~", ".")) or "/" not in spec.strip("/"):
    raise UserError(f"{what} {spec!r}: no such SAE dir: expected a SAELens or sparsify SAE dir, or a hub SAE "
                    "'release/sae_id'")
  hub = hub_location(spec, what)
  path = _download(hub, spec, what)
  return load_saelens(path, hub.config_overrides, hub.norm_scaling_factor)


def _load_dir(path: str) -> SAE:
  """SAELens or sparsify, told apart by the weights file's name."""
  if os.path.isfile(os.path.join(path, SPARSIFY_WEIGHTS)) and not os.path.isfile(os.path.join(path,
                                                                                             WEIGHTS_FILENAME)):
    return load_sparsify(path)
  return load_saelens(path)


def hub_location(spec: str, what: str = "--sae", directory: dict | None = None) -> HubSAE:
  """`release/sae_id` -> HubSAE, with SAELens' pretrained_saes.yaml (`directory`, default: the installed
  sae-lens' one) for release names; a spec whose first part is no release there is `owner/name/sae_id`."""
  directory = pretrained_saes_directory() if directory is None else directory
  release, _, sae_id = spec.strip("/").partition("/")
  if release in directory:
    entry = directory[release]
    saes = {s["id"]: s for s in entry.get("saes", [])}
    if sae_id not in saes:
      raise UserError(f"{what} {spec!r}: release {release!r} of SAELens' pretrained SAEs has no sae_id {sae_id!r}: "
                      f"expected one of {sorted(saes)[:5]}{' ...' if len(saes) > 5 else ''}")
    if entry.get("conversion_func") is not None:
      raise UserError(f"{what} {spec!r}: release {release!r} is stored in another format (SAELens converts it with "
                      f"{entry['conversion_func']!r}): expected a release in SAELens format")
    sae = saes[sae_id]
    return HubSAE(entry["repo_id"], str(sae["path"]), dict(entry.get("config_overrides") or {}),
                  sae.get("norm_scaling_factor"))
  owner, _, rest = spec.strip("/").partition("/")
  name, _, folder = rest.partition("/")
  if not folder:
    known = "" if directory else " (SAELens release names need sae-lens installed)"
    raise UserError(f"{what} {spec!r}: no such SAE dir, and not a hub SAE: expected a release of SAELens' "
                    f"pretrained SAEs{known} or a hub repo id, then the sae_id: 'release/sae_id' or "
                    "'owner/name/sae_id'")
  return HubSAE(f"{owner}/{name}", folder)


@functools.lru_cache(maxsize=1)
def pretrained_saes_directory() -> dict:
  """SAELens' pretrained_saes.yaml (release -> repo_id, conversion_func, config_overrides, saes: [{id, path,
  norm_scaling_factor}]) from an installed sae-lens, found without importing it (torch, transformer-lens); {}
  without one."""
  spec = importlib.util.find_spec("sae_lens")
  path = os.path.join(os.path.dirname(spec.origin), "pretrained_saes.yaml") if spec and spec.origin else ""
  return read_pretrained_saes_yaml(path) if os.path.isfile(path) else {}


def read_pretrained_saes_yaml(path: str) -> dict:
  import yaml
  with open(path) as f:
    return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}


def _download(hub: HubSAE, spec: str, what: str) -> str:
  """The local dir (in huggingface_hub's cache) holding the hub SAE's cfg.json and weights."""
  import huggingface_hub
  from huggingface_hub.errors import HfHubHTTPError

  where = f"{what} {spec!r}: no such SAE dir, and the hub SAE (repo {hub.repo_id}, folder {hub.folder})"
  paths = []
  try:
    for name in (CFG_FILENAME, WEIGHTS_FILENAME):
      paths.append(huggingface_hub.hf_hub_download(hub.repo_id, f"{hub.folder}/{name}"))
  except (OSError, HfHubHTTPError, ValueError) as e:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")
    if offline or isinstance(e, huggingface_hub.errors.LocalEntryNotFoundError):
      raise UserError(f"{where} is not in the local hub cache and the hub cannot be reached"
                      f"{' (HF_HUB_OFFLINE=1)' if offline else ''}: download it where the hub is reachable "
                      f"(`hf download {hub.repo_id} --include '{hub.folder}/*'`) or pass a local SAE dir") from None
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"{where} could not be downloaded: {type(e).__name__}: {first}") from None
  return os.path.dirname(paths[0])

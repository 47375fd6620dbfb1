"""Device mesh and the one table that maps logical axes to mesh axes.

The same code runs on 1 device, 8 fake CPU devices and a TPU pod: only the mesh shape changes.
"""

import dataclasses
from typing import Iterator

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from sae_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "model")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated). The only sharding table.
LOGICAL_RULES = {
    "batch": ("data", "fsdp"),
    "seq": None,
    "vocab": "model",
    "embed": "fsdp",
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
    "norm": None,
    "latent": "model",  # SAE dictionary axis
}

# Logical axes of every parameter, by the last two names of its path (module, leaf).
PARAM_AXES = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("q_proj", "kernel"): ("embed", "heads"),
    ("k_proj", "kernel"): ("embed", "kv_heads"),
    ("v_proj", "kernel"): ("embed", "kv_heads"),
    ("o_proj", "kernel"): ("heads", "embed"),
    ("q_proj", "bias"): ("heads",),
    ("k_proj", "bias"): ("kv_heads",),
    ("v_proj", "bias"): ("kv_heads",),
    ("o_proj", "bias"): ("embed",),
    ("gate_proj", "kernel"): ("embed", "mlp"),
    ("up_proj", "kernel"): ("embed", "mlp"),
    ("down_proj", "kernel"): ("mlp", "embed"),
    ("lm_head", "kernel"): ("embed", "vocab"),
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes (config section `mesh`); -1 takes the remaining devices. SAE latents shard on `model`."""

  data: int = -1
  fsdp: int = 1
  model: int = 1

  def make(self, devices=None) -> Mesh:
    return make_mesh(self.data, self.fsdp, self.model, devices=devices)


def make_mesh(data: int = 1, fsdp: int = 1, model: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, model) mesh; one size may be -1 to take all remaining devices.

  Axes are Auto (GSPMD propagation): under Explicit axes `lax.top_k` over a sharded axis fails.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, model]
  if sizes.count(-1) > 1:
    raise UserError("at most one mesh axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"{len(devices)} devices do not divide by mesh axes {sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise UserError(
        f"mesh data={sizes[0]} x fsdp={sizes[1]} x model={sizes[2]} needs {int(np.prod(sizes))} devices, "
        f"have {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_spec(logical_axes, shape, mesh: Mesh) -> PartitionSpec:
  """PartitionSpec for an array; a dim that the mesh axes do not divide stays replicated."""
  spec = []
  for name, size in zip(logical_axes, shape):
    axes = LOGICAL_RULES.get(name) if name else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    spec.append(None if not axes or size % n else (axes[0] if len(axes) == 1 else axes))
  return PartitionSpec(*spec)


def logical_sharding(logical_axes, shape, mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, logical_spec(logical_axes, shape, mesh))


def param_logical_axes(path: tuple) -> tuple:
  key = tuple(str(p) for p in path[-2:])
  if key in PARAM_AXES:
    return PARAM_AXES[key]
  if key[-1] == "weight":  # RMSNorm scales
    return ("norm",)
  raise KeyError(f"no logical axes for parameter {'.'.join(map(str, path))}")


def param_shardings(abstract_state, mesh: Mesh):
  """NamedSharding for every leaf of an (abstract) nnx.State, from PARAM_AXES and LOGICAL_RULES."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: logical_sharding(param_logical_axes(_names(path)), leaf.shape, mesh),
      abstract_state)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Tokens and activations: batch on (data, fsdp), everything else replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def put_rows(rows, sharding: NamedSharding) -> jax.Array:
  """The global array of `rows` (an array-like with the same contents on every process, e.g. a memmap) placed
  by `sharding`: each process reads only the rows its own devices hold."""
  return jax.make_array_from_callback(tuple(rows.shape), sharding, lambda index: np.asarray(rows[index]))


def data_shards(mesh: Mesh) -> int:
  """How many ways a batch of rows splits (the `batch` rule: data x fsdp)."""
  return int(mesh.shape["data"] * mesh.shape["fsdp"])


def check_batch_splits(rows: int, mesh: Mesh, what: str) -> None:
  """`what` of `rows` rows must split evenly over the mesh's data shards."""
  n = data_shards(mesh)
  if rows % n:
    raise UserError(f"{what} of {rows} rows does not split over data x fsdp = {n} devices: make it a multiple "
                    f"of {n} or move devices to the model axis")


def token_batches(rows, batch_rows: int, mesh: Mesh | None = None, pad: bool = False) -> Iterator[tuple]:
  """(start, n_real, tokens [B, T]) over `rows` [n, T], placed on the mesh's data axes when `mesh` is given.

  `pad` repeats the last row up to `batch_rows` in the final batch, so a jitted consumer compiles once.
  """
  if batch_rows <= 0:
    raise UserError(f"batch_rows must be positive, got {batch_rows}")
  for start in range(0, len(rows), batch_rows):
    tokens = np.asarray(rows[start:start + batch_rows])
    n = tokens.shape[0]
    if pad and n < batch_rows:
      tokens = np.concatenate([tokens, np.repeat(tokens[-1:], batch_rows - n, axis=0)])
    if mesh is not None:
      check_batch_splits(tokens.shape[0], mesh, f"a batch (rows {start}-{start + n - 1})")
      tokens = put_rows(tokens, batch_sharding(mesh, 2))
    yield start, n, tokens


def _names(path) -> tuple:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(getattr(k, attr))
        break
  return tuple(out)

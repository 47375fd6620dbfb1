"""Mesh presets per Cloud TPU slice, and the slice facts the launch/tpu scripts need: one table.

Each preset is the mesh under which every stage of the paper's run (R1-Distill-Llama-8B in bf16, a 65,536-latent
SAE, the steered benchmarks) fits the slice's HBM, checked with launch/aot_compile.py (docs/reproduce.md has
the numbers). `python3 configs/meshes.py NAME` prints it as `--config.mesh.*` flags:

  python launch/train_sae.py --config=configs/paper_r1_llama8b_l19.py \
      $(python3 configs/meshes.py v5e-16)

(`launch/tpu/run.sh` puts them right after --config, before the stage's own overrides, which therefore win.)
`python3 configs/meshes.py NAME --shell` prints the slice's facts as shell assignments for the launch/tpu
scripts; this file needs only the standard library, so it runs on a workstation without the project installed.

Why these meshes: the 8 KV heads, 32 query heads, the MLP (14,336), the vocabulary (128,256) and the SAE's
latents all split 8 ways on `model`, so the weights and the SAE state are divided, not copied; a v5e chip
(16 GiB) cannot hold the 15 GiB of bf16 weights replicated. A 16-chip v5e slice adds `data=2` rather than
`model=16`, which would replicate the KV cache (8 KV heads). `data x fsdp` must divide data.store_batch_rows
(8), sae.batch_size and the decode slots.
"""

import sys

# name: gcloud's --accelerator-type, the TPU VM runtime image (--version / --runtime-version), hosts (VMs)
# and chips of the slice, libtpu's topology name for launch/aot_compile.py --topology, and the mesh. A v4 and
# v5p chip has two TensorCores that JAX drives as one device, so "v4-8" / "v5p-8" (8 cores) are 4 devices.
PRESETS = {
    "v4-8": dict(accelerator="v4-8", runtime="tpu-ubuntu2204-base", hosts=1, chips=4, topology="v4:2x2x1",
                 mesh=dict(data=1, fsdp=1, model=4)),
    "v5e-8": dict(accelerator="v5litepod-8", runtime="v2-alpha-tpuv5-lite", hosts=1, chips=8, topology="v5e:2x4",
                  mesh=dict(data=1, fsdp=1, model=8)),
    "v5e-16": dict(accelerator="v5litepod-16", runtime="v2-alpha-tpuv5-lite", hosts=4, chips=16,
                   topology="v5e:4x4", mesh=dict(data=2, fsdp=1, model=8)),
    "v5p-8": dict(accelerator="v5p-8", runtime="v2-alpha-tpuv5", hosts=1, chips=4, topology="v5p:2x2x1",
                  mesh=dict(data=1, fsdp=1, model=4)),
    "v6e-8": dict(accelerator="v6e-8", runtime="v2-alpha-tpuv6e", hosts=1, chips=8, topology="v6e:2x4",
                  mesh=dict(data=1, fsdp=1, model=8)),
}


def preset(name: str) -> dict:
  """The preset of a slice name (e.g. "v5e-16"); an unknown name is a ValueError listing the known ones."""
  if name not in PRESETS:
    raise ValueError(f"unknown TPU slice {name!r}: expected one of {', '.join(PRESETS)}")
  return PRESETS[name]


def mesh_flags(name: str) -> str:
  """The slice's mesh as `--config.mesh.<axis>=<size>` flags, space-separated."""
  return " ".join(f"--config.mesh.{axis}={size}" for axis, size in preset(name)["mesh"].items())


def _shell(name: str) -> str:
  p = preset(name)
  return "\n".join([f"ACCELERATOR={p['accelerator']}", f"RUNTIME={p['runtime']}", f"HOSTS={p['hosts']}",
                    f"CHIPS={p['chips']}", f"TOPOLOGY={p['topology']}", f"MESH=\"{mesh_flags(name)}\""])


if __name__ == "__main__":
  args = sys.argv[1:]
  if len(args) not in (1, 2) or (len(args) == 2 and args[1] != "--shell"):
    print(f"usage: python3 configs/meshes.py NAME [--shell]  (NAME: {', '.join(PRESETS)})", file=sys.stderr)
    sys.exit(2)
  try:
    print(_shell(args[0]) if len(args) == 2 else mesh_flags(args[0]))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

"""Check a TPU plan before renting it: compile the pipeline's steps for a TPU topology on this (CPU) machine.

  python launch/aot_compile.py --topology=v5e:2x2 --config=configs/paper_r1_llama8b_l19.py \
      --config.mesh.model=4 --out=plans/v5e_2x2.json

  python launch/aot_compile.py --topology=v5e:2x4 --config=configs/eval_paper_r1_llama8b.py --stages=evaluate \
      --config.mesh.data=1 --config.mesh.model=8 --out=plans/eval_v5e_2x4.json

Needs libtpu (in requirements.txt), not a TPU. Each stage's real jitted step (collect: the forward to the hook
layer; train_sae: the SAE train step; reason_score: the accumulator step; evaluate: the engine's steered decode
step) is compiled for the topology's devices on the config's mesh, without reading weights. Prints JSON: per
stage the compile time, bytes per device (arguments, outputs, temps, code, XLA's peak, total), whether that fits
the chip's HBM, flops and bytes accessed per step, the estimated step time, tokens/s and MFU, and the wall time
and chip-hours of the config's full run (`full_run`: 819.2M training tokens for the paper, its extraction set);
and `runs`: what train_sae.py and reason_score.py hold on a device at once, and their full runs. A table of
these goes to stderr. When a stage or script does not fit, the report is still printed (and written), then one
`error:` line and exit 2. `evaluate` adds the most slots that fit and the wall time of the paper's benchmarks at
--mean_new_tokens per sample (see `sae_jax.aot.evaluate_stage`). With --out, the JSON is also written there,
with run.json beside it.
"""

import json
import os
import sys

# The topology's devices are compile-only; the process itself runs on the CPU (set before jax is imported).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

import common  # noqa: E402
from sae_jax import aot  # noqa: E402
from sae_jax import io as sio  # noqa: E402
from sae_jax.errors import UserError  # noqa: E402

# The mesh is config.mesh over the topology's devices (override with --config.mesh.fsdp=4 etc.).
SECTIONS = ("model", "mesh", "data", "activations", "sae", "trainer", "engine", "sampling", "steering")
FLAGS = flags.FLAGS
flags.DEFINE_string("topology", None, "TPU topology to compile for, as libtpu names it: <chip>:<shape>, e.g. "
                    "v5e:2x2 (4 chips), v5e:4x4, v4:2x2x1, v5p:2x2x1, v6e:2x2.")
common.define_config(SECTIONS, out="Optional JSON file for the report (stdout gets it always); run.json is "
                     "written beside it.")
flags.DEFINE_list("stages", ["collect", "train_sae", "reason_score"], "Stages to compile: collect (model forward to "
                  "sae.hook_layer on data.store_batch_rows x data.context_size tokens), train_sae (one SAE step on "
                  "sae.batch_size activations), reason_score (one accumulator step on a collect batch), evaluate "
                  "(the steered decode step on engine.slots rows of engine.max_len tokens, 0: the most that fit and "
                  "sampling.max_new_tokens; steering.* picks the hook; an eval config such as "
                  "configs/eval_paper_r1_llama8b.py).")
flags.DEFINE_integer("mean_new_tokens", aot.MEAN_NEW_TOKENS, "evaluate: assumed mean generated tokens per sample for "
                     "the benchmarks' wall time (at most the cache's tokens).")
flags.adopt_module_key_flags(common)


def plan(c) -> dict:
  report = {"topology": FLAGS.topology, **aot.plan(c, aot.topology_devices(FLAGS.topology), tuple(FLAGS.stages),
                                                   FLAGS.mean_new_tokens, log=lambda m: print(m, file=sys.stderr))}
  for line in aot.summary(report) + aot.fit_warnings(report):
    print(line, file=sys.stderr)
  if FLAGS.out:
    sio.write_json(FLAGS.out, report)
  failed = aot.not_fitting(report)
  if failed:  # the report is still printed and written: it says what to change
    print(json.dumps(report, default=float))
    mesh = " ".join(f"{k}={v}" for k, v in report["mesh"].items())
    raise UserError(f"{FLAGS.topology} with mesh {mesh} does not fit {', '.join(failed)}: see the advice above")
  return report


if __name__ == "__main__":
  common.main(SECTIONS, plan, required=("topology",),
              out_dir=lambda c: os.path.dirname(os.path.abspath(FLAGS.out)) if FLAGS.out else None)

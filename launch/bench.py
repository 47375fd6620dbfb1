"""Benchmarks against the real peer, measured in the same run, one subcommand each:

  python launch/bench.py forward      [--batch=8 --seq=512 --dtypes=float32,bfloat16 --cases=full,truncated]
  python launch/bench.py sae          [--sae_d_in=576,2048 --sae_archs=standard,topk]  (needs .venv-bench)
  python launch/bench.py reasonscore  [--rs_d_sae=4608 --rs_rows=32 --rs_seq=128 --rs_reference_passes=3]
  python launch/bench.py generate     [--gen_slots=16 --gen_new_tokens=64 --dtypes=float32,bfloat16]

Common flags: --repeats, --warmup, --seed, --model (HF dir; default the offline SmolLM2-135M-Instruct asset) and
--out (a dir or .json path). Each benchmark lives in `launch/bench/<name>.py` (its docstring says what is
compared); `launch/bench/common.py` runs the paired rounds (sides alternating, order flipped every round) and
reports median and range with the load average. Every report is JSON on stdout.
`sae`'s peer is SAELens 5.5.2 itself, in its own virtualenv: `bash launch/bench_env.sh` builds `.venv-bench`.
"""

from absl import app

from bench import common, forward, generate, reasonscore, sae
from sae_jax.errors import UserError, exit_on_user_error

SUBCOMMANDS = {"forward": forward.run, "sae": sae.run, "reasonscore": reasonscore.run, "generate": generate.run}


@exit_on_user_error
def main(argv):
  args = argv[1:]
  names = ", ".join(SUBCOMMANDS)
  if len(args) != 1 or args[0] not in SUBCOMMANDS:
    got = " ".join(args) or "nothing"
    raise UserError(f"expected one subcommand, one of {names}; got {got!r}")
  common.emit(args[0], SUBCOMMANDS[args[0]]())


if __name__ == "__main__":
  app.run(main)

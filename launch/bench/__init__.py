"""The benchmarks behind `launch/bench.py`, one module per subcommand, each exposing `run() -> dict`.

`common` holds what every benchmark shares (paired rounds, median and range, load average, machine info);
`saelens_worker.py` runs inside the bench virtualenv (`launch/bench_env.sh`), never imported here.
"""

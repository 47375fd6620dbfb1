"""The processes of one run: a TPU pod's hosts, or `launch/local_pod.sh` on one machine.

Every process runs the same script (SPMD): they compute on one global mesh, each feeds the rows its devices
hold, and each file has one writer: process 0 for metadata, manifests, JSON, reports and dashboards; the
process that holds them for activation shards; Orbax's multi-host path for checkpoints. How a process learns
it is in a pod is read here only, from the environment, before any other JAX call:

* `SAE_JAX_COORDINATOR=host:port`, `SAE_JAX_NUM_PROCESSES=N`, `SAE_JAX_PROCESS_ID=i` (what local_pod.sh sets;
  CPU processes talk through gloo);
* on a TPU pod (`TPU_WORKER_HOSTNAMES` lists several hosts) or with `JAX_COORDINATOR_ADDRESS`, JAX finds the
  rest itself.

`SAE_JAX_WRITE_LOG=DIR` makes `sae_jax.io` append every path it writes to `DIR/writes_<process>.txt` (what
tests check "one writer per file" with).
"""

import os

import numpy as np

COORDINATOR, NUM_PROCESSES, PROCESS_ID = "SAE_JAX_COORDINATOR", "SAE_JAX_NUM_PROCESSES", "SAE_JAX_PROCESS_ID"
WRITE_LOG = "SAE_JAX_WRITE_LOG"
_state = {"initialized": False}


def _jax_finds_it() -> bool:
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def in_pod() -> bool:
  """Whether the environment says this process is one of several."""
  return bool(os.environ.get(COORDINATOR)) or _jax_finds_it()


def initialize() -> None:
  """`jax.distributed.initialize` once when the environment names a pod; a no-op otherwise (or twice)."""
  if _state["initialized"] or not in_pod():
    return
  import jax
  if os.environ.get(COORDINATOR):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes need it for collectives
    jax.distributed.initialize(coordinator_address=os.environ[COORDINATOR],
                               num_processes=int(os.environ[NUM_PROCESSES]),
                               process_id=int(os.environ[PROCESS_ID]))
  else:
    jax.distributed.initialize()
  _state["initialized"] = True


def index() -> int:
  """This process's index (0 outside a pod), without starting JAX's backends when not in a pod."""
  if not in_pod():
    return 0
  initialize()
  import jax
  return jax.process_index()


def count() -> int:
  if not in_pod():
    return 1
  initialize()
  import jax
  return jax.process_count()


def is_writer() -> bool:
  """Process 0 writes every file that is not one process's own (metadata, JSON, reports, dashboards)."""
  return index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all arrive (e.g. after process 0 wrote what the others read next)."""
  if count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def broadcast(value):
  """Process 0's `value` (a number or numpy array) on every process, so all take the same decision."""
  if count() == 1:
    return value
  from jax.experimental import multihost_utils
  return multihost_utils.broadcast_one_to_all(np.asarray(value))


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (e.g. a SIGTERM one process got)."""
  if count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray([bool(flag)]))))


def shared_map(fn, items, timeout_s: int = 3600):
  """`fn(item)` (a numpy array) for each of `items`, in order, on every process; in a pod each process computes
  only items i = its index (mod the process count) and the results travel through JAX's distributed key-value
  store (e.g. tokenizing a corpus: each process tokenizes its share of the document batches)."""
  n = count()
  if n == 1:
    yield from (fn(item) for item in items)
    return
  import io

  from jax._src import distributed
  client = distributed.global_state.client
  _state["maps"] = _state.get("maps", 0) + 1
  prefix, me, mine = f"sae_jax/shared_map/{_state['maps']}/", index(), []
  for i, item in enumerate(items):
    key = f"{prefix}{i}"
    if i % n == me:
      buf = io.BytesIO()
      np.save(buf, np.asarray(fn(item)), allow_pickle=False)
      client.key_value_set_bytes(key, buf.getvalue())
      mine.append(key)
    yield np.load(io.BytesIO(client.blocking_key_value_get_bytes(key, timeout_s * 1000)), allow_pickle=False)
  barrier(prefix)  # every process has read every result: free the store
  for key in mine:
    client.key_value_delete(key)


def pace(tree):
  """`tree`, once computed, on a pod of CPU processes; at once elsewhere. Call it on each step's result in a
  loop of steps with collectives: XLA's CPU (gloo) collectives deadlock when many such programs are in flight
  (a 2-process ReasonScore stopped, idle, after 17 of 20 batches). TPU pods keep their async dispatch."""
  if count() > 1:
    import jax
    if jax.default_backend() == "cpu":
      jax.block_until_ready(tree)
  return tree


def to_host(tree):
  """Numpy copies of every array of `tree`, whole on every process (gathered when other processes hold parts)."""
  import jax

  def one(a):
    if isinstance(a, jax.Array) and not (a.is_fully_addressable or a.is_fully_replicated):
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)

  return jax.tree.map(one, tree)


def log_write(path: str) -> None:
  """Appends `path` to this process's write log when `SAE_JAX_WRITE_LOG` names a dir."""
  where = os.environ.get(WRITE_LOG)
  if where:
    os.makedirs(where, exist_ok=True)
    with open(os.path.join(where, f"writes_{index()}.txt"), "a") as f:
      f.write(os.path.abspath(path) if "://" not in str(path) else str(path))
      f.write("\n")

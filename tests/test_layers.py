"""Import layers (WORKSPACE.md): models, data <- activations, generation, steering, evals <- sae <- features <- runs
<- aot <- launch. So generation and steering never see an SAE: features builds steering from one.

Imports are read with `ast`, those inside functions too, so a cycle or an upward import cannot hide in a function
body. Fast: nothing is imported.
"""

import ast
import os

from conftest import REPO

# Lowest first. A module may import modules of its own unit (the entry it belongs to) and of any lower layer;
# units of one layer do not import each other, except in the first (small utilities with no sae_jax imports of
# their own but errors and io).
LAYERS = (
    ("sae_jax", "sae_jax.errors", "sae_jax.io", "sae_jax.runinfo", "sae_jax.assets", "sae_jax.paper",
     "sae_jax.pod"),
    ("sae_jax.models", "sae_jax.data"),
    ("sae_jax.activations", "sae_jax.generation", "sae_jax.steering", "sae_jax.evals"),
    ("sae_jax.sae",),
    ("sae_jax.features",),
    ("sae_jax.runs",),
    ("sae_jax.aot",),
)


def _modules() -> dict[str, str]:
  """Module name -> file, for every .py under sae_jax/ (a package is its __init__)."""
  out = {}
  for root, _, files in os.walk(os.path.join(REPO, "sae_jax")):
    for f in files:
      if f.endswith(".py"):
        parts = os.path.relpath(os.path.join(root, f), REPO)[:-3].split(os.sep)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(root, f)
  return out


def _imports(path: str, modules: dict) -> set[str]:
  """The sae_jax modules `path` imports anywhere in its body (`from pkg import sub` counts as pkg.sub)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names}
  return {m for m in found if m.split(".")[0] == "sae_jax"}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, modules) for name, path in modules.items()}


def _unit(module: str) -> tuple[int, str]:
  """(layer, unit) of a module: the longest LAYERS entry it is or lies under."""
  best = None
  for i, layer in enumerate(LAYERS):
    for unit in layer:
      if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
        best = (i, unit)
  assert best is not None, f"{module} is in no layer: add it to LAYERS here and to WORKSPACE.md"
  return best


def test_every_import_goes_down_the_layers():
  bad = []
  for module, imported in _graph().items():
    layer, unit = _unit(module)
    for target in imported:
      t_layer, t_unit = _unit(target)
      if t_layer > layer or (t_layer == layer and t_unit != unit and layer > 0):
        bad.append(f"{module} ({unit}) imports {target} ({t_unit})")
  assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
  """Tarjan's strongly connected components of the module graph: each must be a single module."""
  graph = _graph()
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in graph:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
  """The rule is only as good as the parser: a function-level import counts."""
  src = tmp_path / "m.py"
  src.write_text("def f():\n  from sae_jax.sae import trainer\n  import sae_jax.runs\n")
  assert _imports(str(src), {"sae_jax.sae.trainer": ""}) == {"sae_jax.sae.trainer", "sae_jax.runs"}

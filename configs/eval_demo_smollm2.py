"""The demo's evaluation: SmolLM2-135M-Instruct on offline reasoning-gym arithmetic, unsteered against the demo
SAE's top ReasonScore feature at two strengths (folded units: c = strength x the dashboard's max activation
along the unit decoder direction), greedy and short so it runs in a minute on a CPU. `launch/demo.sh` gives the
model, the SAE, the feature and the dashboard.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model.dtype = "float32"
  c.mesh.data = 1
  c.tasks.update(names=("arithmetic",), limit=12)
  c.sampling.update(template="tokenizer", temperature=0.0, top_p=1.0, max_new_tokens=48)
  c.engine.update(slots=8, max_len=256)
  c.steering.update(strengths=(2.0, 8.0), method="intervention", site="resid_post", units="folded")
  return c

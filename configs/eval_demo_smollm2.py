"""The demo's evaluation: SmolLM2-135M-Instruct on offline reasoning-gym arithmetic, the baseline against the
demo SAE's top ReasonScore feature at two strengths, greedy and short so it runs in a minute or two on a CPU.
`launch/demo.sh` fills the paths and the feature.
"""

from configs import eval_paper_r1_llama8b as paper


def get_config():
  c = paper.base_config()
  c.model.update(path="", dtype="float32")
  c.mesh.data = 1
  c.tasks.update(names=("arithmetic",), limit=12)
  c.eval.update(template="tokenizer", temperature=0.0, top_p=1.0, max_new_tokens=48, seed=1234)
  c.engine.update(slots=8, max_len=256)
  c.steering.update(strengths=(2.0, 8.0), method="intervention", site="resid_post", units="folded", layer=-1)
  return c

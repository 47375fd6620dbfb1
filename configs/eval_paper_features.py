"""The paper's reasoning features (reflection, uncertainty / exploration, edge cases) steered one at a time at
strength 2.0. Their max activations are not published: they are read from a dashboard of these features
(launch/dashboard.py --features=...), given with --dashboard.
"""

from configs import eval_paper_r1_llama8b as paper


def get_config():
  c = paper.get_config()
  c.steering.update(features=(3942, 4395, 16441, 16778, 25953, 46379, 46691, 61104), max_activations=())
  return c

"""The paper's reasoning features steered one at a time at strength 2.0 (feature ids as listed for the paper:
reflection, uncertainty / exploration, edge cases). Their max activations are not published: they are read
from a dashboard dir of these features (launch/dashboard.py), so set --config.steering.dashboard.
"""

from configs import eval_paper_r1_llama8b as paper


def get_config():
  c = paper.get_config()
  c.steering.update(features=(3942, 4395, 16441, 16778, 25953, 46379, 46691, 61104), max_activations=())
  return c

"""The reference's dashboards, the default config of dashboard.py: the first 10,000 rows
of the extraction set, unshuffled, as SAEDashboard read them; no model is set (give --config.model.path)."""

from configs import paper_reasonscore_extraction as extraction
from sae_jax import paper


def get_config():
  c = extraction.get_config()
  c.data.update(num_rows=paper.DASHBOARD_ROWS, shuffle_seed=-1)
  return c

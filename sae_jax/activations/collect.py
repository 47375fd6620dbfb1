"""The truncated forward that returns one hook site, and the token stream it turns into activations."""

import jax
import numpy as np

from sae_jax.errors import UserError
from sae_jax.models import sharding as shd
from sae_jax.models.inference import make_site_fn  # noqa: F401  (the collector's forward)
from sae_jax.models.transformer import Transformer


class ActivationSource:
  """Token rows -> activation chunks with excluded ids (BOS/EOS by default) marked for dropping.

  `rows` is an array-like [n_rows, context] (numpy or a memmap of the packed corpus); each call runs the
  model on the next `batch_rows` rows (a last partial batch is never run). `position` (batches consumed) and `seek`
  let a resumed run continue; the shuffle buffer rewinds it to 0 to start the data again.
  """

  def __init__(self, model: Transformer, rows, layer: int, site: str = "resid_post", exclude_ids=(),
               batch_rows: int = 8, mesh=None):
    if len(rows) < batch_rows:
      raise UserError(f"the token corpus has {len(rows)} rows, fewer than one batch of {batch_rows}")
    self.site_fn = make_site_fn(model, layer, site, mesh)
    self.rows, self.batch_rows = rows, batch_rows
    self.exclude_ids = np.asarray(sorted(set(exclude_ids)), np.int64)
    self.mesh = mesh
    self.position = 0
    self.d_model = model.cfg.hidden_size
    self.batches_per_epoch = len(rows) // batch_rows

  def seek(self, position: int) -> None:
    self.position = position

  def __call__(self):
    """(activations [B*T, d] on device, split on rows over the mesh's data axes; keep mask [B*T] on host) of
    the next token batch, or None."""
    index = self.position
    if index >= self.batches_per_epoch:
      return None
    tokens = self.rows[index * self.batch_rows:(index + 1) * self.batch_rows]
    keep = ~np.isin(np.asarray(tokens).reshape(-1), self.exclude_ids)
    placed = shd.put_rows(tokens, shd.batch_sharding(self.mesh)) if self.mesh is not None else np.asarray(tokens)
    acts = self.site_fn(placed).reshape(-1, self.d_model)
    if self.mesh is not None:  # each process holds the rows of its devices (what it writes or feeds)
      acts = jax.device_put(acts, shd.batch_sharding(self.mesh))
    self.position += 1
    return acts, keep

"""Every key a run reads, with its default: the dataclasses' (`sae_jax.runs.SECTIONS`), nothing restated.

The other configs start here and change only what their run changes. Keys without a default (`sae.d_in`,
`sae.d_sae`, `trainer.out_dir`) must be set by the run that reads them.
"""

from sae_jax import runs


def get_config():
  return runs.default_config()

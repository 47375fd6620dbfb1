"""Tokenizers by object, dir or hub id: one loader for packing, the demo corpus and the launch scripts."""

from sae_jax.errors import UserError


def load_tokenizer(tokenizer):
  """A tokenizer object, or a dir / hub id loaded with `AutoTokenizer`."""
  if not isinstance(tokenizer, str):
    return tokenizer
  from transformers import AutoTokenizer
  try:
    return AutoTokenizer.from_pretrained(tokenizer)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot load a tokenizer from {tokenizer!r}: {str(e).splitlines()[0]}") from None

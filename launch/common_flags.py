"""Flags shared by the feature scripts (reason_score.py, dashboard.py, diff_models.py), and their readers.

One definition per flag, so the scripts agree on names, meaning and the paper's defaults. Where the
scripts differ on purpose (the dashboards read the first 10,000 rows unshuffled and ignore no ids by
default), the difference is an argument here.
"""

from absl import flags

from sae_jax.errors import UserError

FLAGS = flags.FLAGS
PAPER_EXTRACTION_DATA = "open-thoughts/OpenThoughts-114k#builder=openthoughts_subset,config=metadata"
CORPUS_FLAGS = ("data", "context_size", "packing", "shuffle_seed")  # what a cache of activations fixes already


def define_site_flags() -> None:
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Model dtype (the paper: bfloat16).")
  flags.DEFINE_integer("layer", None, "Layer of the hook site (default: the SAE's hook layer).")
  flags.DEFINE_string("site", None, "Hook site (default: the SAE's hook site).")
  flags.DEFINE_list("mesh", ["-1", "1", "1"], "Mesh sizes data,fsdp,model (latents shard on model).")


def define_corpus_flags(*, n_rows: int, shuffle: bool, tokenizer_help: str = "Tokenizer dir (default: the "
                        "model's).") -> None:
  """--data/--tokenizer/--context_size/--packing/--n_rows/--batch_rows, and --shuffle_seed when `shuffle`."""
  flags.DEFINE_multi_string("data", [PAPER_EXTRACTION_DATA], "Text source spec(s) `PATH#key=value,...` (see "
                            "sae_jax.data.parse_source); repeatable. Default: the paper's extraction set.")
  flags.DEFINE_string("tokenizer", None, tokenizer_help)
  flags.DEFINE_integer("context_size", 1024, "Tokens per row.")
  flags.DEFINE_enum("packing", "reference", ["reference", "clean"], "Row packing (reference = TransformerLens).")
  if shuffle:
    flags.DEFINE_integer("n_rows", n_rows, "Rows used, taken after the shuffle (0: all).")
    flags.DEFINE_integer("shuffle_seed", 42, "Seed of the row shuffle (HF datasets); -1 keeps corpus order.")
  else:
    flags.DEFINE_integer("n_rows", n_rows, "The first rows of the packed corpus, unshuffled (0: all).")
  flags.DEFINE_integer("batch_rows", 8, "Rows per model call.")


def define_reasonscore_flags() -> None:
  flags.DEFINE_string("vocab", None, "JSON file with the list of reasoning strings (default: the paper's 34).")
  flags.DEFINE_list("window", ["1", "2"], "ReasonScore window widening (left, right) around matched tokens.")
  flags.DEFINE_enum("window_mode", "reference", ["reference", "intended"],
                    "reference: the reference's distinct-starts/ends rule; intended: plain union of windows.")
  flags.DEFINE_float("alpha", 0.7, "ReasonScore entropy exponent.")
  flags.DEFINE_list("ignore_ids", None, "Token ids left out of every statistic (default: the tokenizer's BOS "
                    "and EOS).")


def int_list(name: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in FLAGS[name].value)
  except ValueError:
    raise UserError(f"--{name} takes integers, got {FLAGS[name].value}") from None


def mesh():
  from sae_jax.models import sharding
  return sharding.make_mesh(*int_list("mesh"))


def hook(sae) -> tuple[int, str]:
  """(layer, site): the flags, else the SAE's own hook."""
  return (sae.cfg.hook_layer if FLAGS.layer is None else FLAGS.layer), (FLAGS.site or sae.cfg.hook_site)


def vocabulary(tokenizer):
  from sae_jax.features import DEFAULT_REASON_STRINGS, Vocabulary, load_reason_strings
  strings = load_reason_strings(FLAGS.vocab) if FLAGS.vocab else DEFAULT_REASON_STRINGS
  return Vocabulary.from_tokenizer(tokenizer, strings)


def ignore_ids(tokenizer) -> tuple[int, ...]:
  """--ignore_ids, or the tokenizer's BOS and EOS (the reference's 128000, 128001 for Llama-3)."""
  if FLAGS.ignore_ids is None:
    return tuple(sorted({i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None}))
  return int_list("ignore_ids")


def reasonscore_settings(tokenizer) -> dict:
  """Keywords of `ReasonScoreAccumulator` from the flags."""
  return {"window": int_list("window"), "mode": FLAGS.window_mode, "ignore_ids": ignore_ids(tokenizer)}


def corpus_rows(tokenizer):
  """The token rows [n, context_size] the flags describe (shuffled only where the script has --shuffle_seed)."""
  from sae_jax.data.packing import extraction_rows
  seed = FLAGS.shuffle_seed if "shuffle_seed" in FLAGS else -1
  return extraction_rows(FLAGS.data, tokenizer, FLAGS.context_size, FLAGS.packing, FLAGS.n_rows, seed)


def open_cache(path: str, sae, layer: int, site: str):
  """`CachedRows` of an activation cache, checked against the SAE hook; the corpus flags must be unset."""
  from sae_jax.activations.shards import CachedRows
  given = [f"--{name}" for name in CORPUS_FLAGS if name in FLAGS and FLAGS[name].present]
  if given:
    raise UserError(f"{', '.join(given)} cannot be used with cached activations: the cache fixes its rows")
  cache = CachedRows(path, d=sae.cfg.d_in)
  cached = (cache.meta.get("layer"), cache.meta.get("site"))
  if cached != (layer, site):
    raise UserError(f"activation cache {path} holds layer {cached[0]} {cached[1]}, the SAE reads layer {layer} "
                    f"{site}")
  return cache


def head_rows(rows):
  """The first --n_rows of a cache's rows (0: all)."""
  if FLAGS.n_rows < 0:
    raise UserError(f"--n_rows must be >= 0, got {FLAGS.n_rows}")
  return rows[:FLAGS.n_rows] if FLAGS.n_rows else rows

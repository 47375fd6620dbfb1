"""Where the text comes from: hub ids, `save_to_disk` dirs, jsonl/json/parquet files (local or gs://).

Every source ends as a `datasets.Dataset` with one column: `text`, so packing never cares where text came
from, or `tokens` for an already tokenized dataset (a column of id sequences, as TransformerLens'
`tokenize_and_concatenate`, SAELens' pretokenize runner and the paper's released training set write it), whose
rows are used as they are. A source is a `SourceSpec`, or a string `PATH` / `PATH#key=value,key=value`:

  data/*.jsonl#column=content,weight=2      gs://bucket/lmsys/*.parquet#builder=lmsys
  open-thoughts/OpenThoughts-114k#config=metadata,builder=openthoughts
  demo#n=2000                               (the offline demo corpus; needs the model's tokenizer)
  /data/lmsys-openthoughts-tokenized        (a `tokens` column: rows of ids, no packing)
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob as globlib
import importlib.util
import os
from typing import Any, Mapping

from sae_jax.data import text as T
from sae_jax.data.demo import demo_corpus
from sae_jax.errors import UserError

BUILDERS = ("lmsys", "openthoughts", "openthoughts_subset")
TOKEN_COLUMNS = ("tokens", "input_ids")  # read when there is no `text` column, as SAELens does
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One source. `builder` turns raw rows into `text` (sae_jax/paper.md, "Text templates"); else `column` is read:
  text, or ids (a column of integer sequences, e.g. `tokens`: a tokenized source, its rows used as they are).

  shuffle_seed: "auto" = the reference's `.shuffle(seed=42)` for the lmsys/openthoughts builders and no
  shuffle otherwise; an int shuffles documents with that seed; None keeps file order.
  weight: share of rows when several sources are mixed (see `packing.mix_rows`).
  """

  path: str
  column: str = "text"  # without a `text` column, `tokens` or `input_ids` is read if there
  builder: str | None = None
  split: str = "train"
  config: str | None = None  # HF config name (OpenThoughts: "metadata")
  weight: float = 1.0
  shuffle_seed: int | None | str = _AUTO
  max_docs: int | None = None
  num_samples: int = 10_000  # openthoughts_subset only
  n: int = 2000  # demo only
  seed: int = 0  # demo only


_INT_FIELDS = ("max_docs", "num_samples", "n", "seed")


def parse_source(text: str) -> SourceSpec:
  """`PATH#key=value,...` -> SourceSpec (keys are SourceSpec fields)."""
  path, _, opts = text.partition("#")
  if not path:
    raise UserError(f"source {text!r} has no path")
  kwargs: dict[str, Any] = {}
  fields = {f.name for f in dataclasses.fields(SourceSpec)} - {"path"}
  for item in filter(None, opts.split(",")):
    key, eq, value = item.partition("=")
    key = key.strip()
    if not eq or key not in fields:
      raise UserError(f"source option {item!r} in {text!r}: expected key=value with key in {sorted(fields)}")
    kwargs[key] = _parse_value(key, value.strip(), text)
  return SourceSpec(path=path, **kwargs)


def _parse_value(key: str, value: str, text: str):
  try:
    if key == "weight":
      return float(value)
    if key in _INT_FIELDS:
      return None if value.lower() == "none" and key == "max_docs" else int(value)
    if key == "shuffle_seed":
      return None if value.lower() == "none" else (_AUTO if value == _AUTO else int(value))
  except ValueError:
    raise UserError(f"source option {key}={value!r} in {text!r} is not a number") from None
  return None if key in ("builder", "config") and value.lower() == "none" else value


def as_spec(source) -> SourceSpec:
  """SourceSpec | str | mapping -> SourceSpec."""
  if isinstance(source, SourceSpec):
    return source
  if isinstance(source, str):
    return parse_source(source)
  if isinstance(source, Mapping):
    try:
      return SourceSpec(**source)
    except TypeError as e:
      raise UserError(f"bad source {dict(source)!r}: {e}") from None
  raise UserError(f"a source is a SourceSpec, a string or a dict, got {type(source).__name__}")


def load_text_source(spec, tokenizer=None, cache_dir: str | None = None):
  """A source -> `datasets.Dataset` with a single column (never empty): `text` (strings), or `tokens` (id
  sequences) for a tokenized source.

  tokenizer: only for the `demo` source (its chat template renders the problems).
  cache_dir: where `datasets` caches converted json/parquet files (default: its own cache).
  """
  spec = as_spec(spec)
  if spec.builder is not None and spec.builder not in BUILDERS:
    raise UserError(f"unknown builder {spec.builder!r}: expected one of {BUILDERS}")
  if spec.weight <= 0:
    raise UserError(f"source {spec.path!r}: weight must be positive, got {spec.weight}")
  if spec.path == "demo":
    import datasets
    ds = datasets.Dataset.from_dict({"text": demo_corpus(spec.n, tokenizer=tokenizer, seed=spec.seed)})
  else:
    ds = _read_raw(spec, cache_dir)
  if len(ds) == 0:
    raise UserError(f"source {spec.path!r} is empty")
  ds = _to_text(ds, spec)
  if spec.max_docs is not None:
    ds = ds.select(range(min(spec.max_docs, len(ds))))
  if len(ds) == 0:
    raise UserError(f"source {spec.path!r} has no documents left (builder/domain filter or max_docs)")
  return ds


def _to_text(ds, spec: SourceSpec):
  """Apply the builder (or pick the column); leave exactly one column, `text` or `tokens`."""
  seed = spec.shuffle_seed
  if spec.builder == "lmsys":
    ds = T.lmsys_corpus(ds, shuffle_seed=42 if seed == _AUTO else seed)
  elif spec.builder == "openthoughts":
    ds = T.openthoughts_corpus(ds, shuffle_seed=42 if seed == _AUTO else seed)
  elif spec.builder == "openthoughts_subset":
    ds = T.openthoughts_subset(ds, num_samples=spec.num_samples)
    if seed not in (_AUTO, None):
      ds = ds.shuffle(seed=seed)
  else:
    column = _column(ds, spec)
    feature = ds.features[column]
    kind = "tokens" if _is_ids(feature) else "text"
    if kind == "text" and getattr(feature, "dtype", None) not in ("string", "large_string"):
      raise UserError(f"source {spec.path!r}: column {column!r} holds {feature}, neither text nor token ids")
    ds = ds.select_columns([column])
    if column != kind:
      ds = ds.rename_column(column, kind)
    if seed not in (_AUTO, None):
      ds = ds.shuffle(seed=seed)
    return ds
  return ds.select_columns(["text"])


def _column(ds, spec: SourceSpec) -> str:
  """`column`, or (left at `text` where there is none) the first of TOKEN_COLUMNS the dataset has."""
  if spec.column in ds.column_names:
    return spec.column
  found = [c for c in TOKEN_COLUMNS if c in ds.column_names] if spec.column == "text" else []
  if found:
    return found[0]
  raise UserError(f"source {spec.path!r} has no column {spec.column!r}; its columns are {ds.column_names}"
                  " (set column=..., or builder=lmsys/openthoughts)")


def _is_ids(feature) -> bool:
  """A column of integer sequences (datasets' Sequence, List or LargeList of an int dtype)."""
  inner = getattr(feature, "feature", None)
  return inner is not None and str(getattr(inner, "dtype", "")).startswith(("int", "uint"))


def _read_raw(spec: SourceSpec, cache_dir: str | None):
  import datasets

  path = spec.path
  if path.startswith("gs://"):
    return _load_files(_expand_gcs(path), cache_dir)
  local = os.path.expanduser(path)
  if os.path.isdir(local):
    if _is_saved_dataset(local):
      ds = datasets.load_from_disk(local)
      if isinstance(ds, datasets.DatasetDict):
        if spec.split not in ds:
          raise UserError(f"{path!r} has splits {list(ds)}, not {spec.split!r} (set split=...)")
        ds = ds[spec.split]
      return ds
    files = sorted(f for ext in FILE_FORMATS for f in globlib.glob(os.path.join(local, "**", "*" + ext),
                                                                   recursive=True))
    if not files:
      raise UserError(f"{path!r} is neither a `save_to_disk` dataset nor a dir of jsonl/json/parquet files")
    return _load_files(files, cache_dir)
  if globlib.has_magic(local) or os.path.isfile(local):
    files = sorted(globlib.glob(local)) if globlib.has_magic(local) else [local]
    if not files:
      raise UserError(f"no file matches {path!r}")
    return _load_files(files, cache_dir)
  if _looks_like_path(path):
    raise UserError(f"no such file or directory: {path!r}")
  return _load_hub(spec, cache_dir)


def _is_saved_dataset(path: str) -> bool:
  names = set(os.listdir(path))
  return "state.json" in names or "dataset_dict.json" in names


def _looks_like_path(path: str) -> bool:
  """Hub ids are `name` or `owner/name`; anything else that does not exist is a missing local path."""
  return (path.startswith((".", "/", "~")) or path.count("/") > 1 or os.path.splitext(path)[1] in FILE_FORMATS)


def _file_format(files: list[str]) -> str:
  exts = {os.path.splitext(f)[1].lower() for f in files}
  bad = exts - set(FILE_FORMATS)
  if bad:
    raise UserError(f"unsupported file type(s) {sorted(bad)}: expected {sorted(FILE_FORMATS)}")
  formats = {FILE_FORMATS[e] for e in exts}
  if len(formats) != 1:
    raise UserError(f"one source must be all json/jsonl or all parquet, got {sorted(exts)}")
  return formats.pop()


def _load_files(files: list[str], cache_dir: str | None):
  import datasets
  import pyarrow as pa

  fmt = _file_format(files)
  local = [f for f in files if not f.startswith("gs://")]
  if local and all(os.path.getsize(f) == 0 for f in local) and len(local) == len(files):
    raise UserError(f"source {files[0]!r}{' and the others' if len(files) > 1 else ''} is empty")
  try:
    with _no_download_counter():
      return datasets.load_dataset(fmt, data_files=files, split="train", cache_dir=cache_dir)
  except (datasets.exceptions.DatasetGenerationError, StopIteration, pa.ArrowInvalid, ValueError) as e:
    cause = e.__cause__ or e
    raise UserError(f"cannot read {files[0]!r}{' and others' if len(files) > 1 else ''} as {fmt}: "
                    f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from None


@contextlib.contextmanager
def _no_download_counter():
  """`datasets` pings the hub (a download counter for the json/parquet builder) even for local files unless
  HF_HUB_OFFLINE is set: files stay off the network, only a hub id goes to the hub."""
  import datasets
  saved = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
  datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
  try:
    yield
  finally:
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = saved


def _expand_gcs(pattern: str) -> list[str]:
  if importlib.util.find_spec("gcsfs") is None:
    raise UserError(f"reading {pattern!r} needs gcsfs: pip install gcsfs")
  import fsspec

  fs = fsspec.filesystem("gs")
  files = sorted(fs.glob(pattern)) if globlib.has_magic(pattern) else [pattern]
  if not files:
    raise UserError(f"no object matches {pattern!r}")
  return [f if f.startswith("gs://") else "gs://" + f for f in files]


def _load_hub(spec: SourceSpec, cache_dir: str | None):
  import datasets

  try:
    return datasets.load_dataset(spec.path, spec.config, split=spec.split, cache_dir=cache_dir)
  except (ConnectionError, OSError) as e:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    hint = ("the hub is off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1): " if offline else "")
    raise UserError(f"{spec.path!r} is no local path, and loading it from the hub failed: {hint}download it "
                    f"where a hub is reachable and pass a `save_to_disk` dir or jsonl/parquet files instead "
                    f"({type(e).__name__})") from None
  except ValueError as e:  # e.g. unknown split or config
    raise UserError(f"hub dataset {spec.path!r}: {str(e).splitlines()[0]}") from None

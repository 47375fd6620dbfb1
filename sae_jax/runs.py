"""Run configs (configs/*.py) -> the pieces of a run, and the stages the launch scripts call.

The only module that reads the config layout. Each section is one dataclass (`SECTIONS`): its fields are the
section's keys and its defaults the only defaults, so `default_config()` lists every key a stage reads and
nothing else; `configs/*.py` override what a run changes, `--config.<section>.<key>=value` any key. A launch
script is flags -> one stage function here (`collect`, `train`, `reason_score`, `dashboard`, `diff_models`)
-> files; `aot.plan` reads the same sections.
"""

import contextlib
import dataclasses
import gc
import json
import os
import time
import types
import typing

import ml_collections
import numpy as np

from sae_jax import io as sio
from sae_jax import paper, pod
from sae_jax import runinfo
from sae_jax.activations.buffer import batches_per_epoch
from sae_jax.activations.collect import ActivationSource, make_site_fn
from sae_jax.activations.shards import ActivationsConfig, CachedRows, ShardReader, ShardWriter, fill_cache
from sae_jax.data.corpus import CorpusConfig
from sae_jax.data.tokenizers import load_tokenizer
from sae_jax.errors import UserError
from sae_jax.features import diffing
from sae_jax.features.autointerp import label_features
from sae_jax.features.dashboard import (DashboardConfig, build_dashboards, check_features, collect_feature_stats,
                                        unembedding, write_dashboards)
from sae_jax.evals.runner import SamplingConfig
from sae_jax.evals.tasks import TasksConfig
from sae_jax.features import steer_eval
from sae_jax.features.masks import MODES as WINDOW_MODES
from sae_jax.features.steer_eval import EngineConfig, SteeringConfig
from sae_jax.features.reasonscore import ReasonScores, reasonscore_corpus
from sae_jax.features.vocab import Vocabulary, load_reason_strings
from sae_jax.models.checkpoint import ModelSpec
from sae_jax.models import sharding as shd
from sae_jax.models.sharding import MeshConfig, batch_sharding
from sae_jax.sae import SAE, SAEConfig, load_sae
from sae_jax.sae.splice_eval import reconstruction_eval, splice_metrics
from sae_jax.sae.trainer import BatchStream, StopSignals, TrainerOptions, check_mesh, finished
from sae_jax.sae.trainer import train as train_sae


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """After training: CE loss / KL with the SAE spliced in vs clean vs zero-ablation, and explained variance / L0,
  on held-out rows (`sources`) or else the corpus's last rows (which training may have read)."""

  batches: int = 10  # of data.store_batch_rows rows; 0 skips the eval
  sources: tuple[str, ...] = ()  # held-out text, packed as data.* packs (`PATH#key=value`); (): the corpus's rows

  def __post_init__(self):
    object.__setattr__(self, "sources", tuple(self.sources))
    if self.batches < 0:
      raise UserError(f"eval.batches must be >= 0 (0 skips the eval), got {self.batches}")


@dataclasses.dataclass(frozen=True)
class HookConfig:
  """Where the feature scripts read the model; None: the SAE's own hook (its cfg.json)."""

  layer: int | None = None
  site: str | None = None


@dataclasses.dataclass(frozen=True)
class ReasonScoreConfig:
  """ReasonScore; defaults are the paper's."""

  vocab: str = ""  # JSON list of reasoning strings; "": the paper's 34 in 10 groups
  window: tuple[int, int] = paper.WINDOW  # tokens added left and right of every matched token
  window_mode: str = "reference"  # the reference's distinct-starts/ends rule; "intended": plain union
  alpha: float = paper.ALPHA  # entropy exponent
  ignore_ids: tuple[int, ...] | None = None  # left out of every statistic; None: the tokenizer's BOS and EOS
  top_k: int = 100  # features listed in top_k.json

  def __post_init__(self):
    if self.window_mode not in WINDOW_MODES:
      raise UserError(f"reasonscore.window_mode must be one of {list(WINDOW_MODES)}, got {self.window_mode!r}")
    if self.top_k < 1:
      raise UserError(f"reasonscore.top_k must be positive, got {self.top_k}")

  def vocabulary(self, tokenizer) -> Vocabulary:
    strings = load_reason_strings(self.vocab) if self.vocab else paper.REASON_STRINGS
    return Vocabulary.from_tokenizer(tokenizer, strings)

  def ignored(self, tokenizer) -> tuple[int, ...]:
    """`ignore_ids`, or the tokenizer's BOS and EOS (the reference's 128000, 128001 for Llama-3)."""
    if self.ignore_ids is None:
      return tuple(sorted({i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None}))
    return tuple(int(i) for i in self.ignore_ids)

  def accumulator_kwargs(self, tokenizer) -> dict:
    return {"window": tuple(self.window), "mode": self.window_mode, "ignore_ids": self.ignored(tokenizer)}


@dataclasses.dataclass(frozen=True)
class DiffConfig:
  """Model diffing: which of B's top ReasonScore features (almost) never fire in A."""

  top_k: int = 100  # B's top features listed in diff.json and highlighted in the plot
  b_only_density: float = 1e-5  # B-only: density in A (fraction of non-ignored tokens where > 0) below this
  ratio_eps: float = 1e-6  # added to numerator and denominator of the B/A ratios

  def __post_init__(self):
    if self.top_k < 1:
      raise UserError(f"diff.top_k must be positive, got {self.top_k}")
    if not 0 <= self.b_only_density <= 1:
      raise UserError(f"diff.b_only_density is a fraction of tokens in [0, 1], got {self.b_only_density}")
    if not self.ratio_eps > 0:
      raise UserError(f"diff.ratio_eps must be positive, got {self.ratio_eps}")


@dataclasses.dataclass(frozen=True)
class AutointerpConfig:
  """Optional dashboard labels from an OpenAI-compatible endpoint (off while `url` is empty)."""

  url: str = ""  # e.g. http://host:8000/v1
  model: str = ""
  key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key (may be unset for local servers)

  def __post_init__(self):
    if self.url and not self.model:
      raise UserError("autointerp.url needs autointerp.model")


SECTIONS = {
    "model": ModelSpec, "mesh": MeshConfig, "data": CorpusConfig, "activations": ActivationsConfig,
    "sae": SAEConfig, "trainer": TrainerOptions, "eval": EvalConfig, "hook": HookConfig,
    "reasonscore": ReasonScoreConfig, "dashboard": DashboardConfig, "autointerp": AutointerpConfig,
    "diff": DiffConfig, "tasks": TasksConfig, "sampling": SamplingConfig, "engine": EngineConfig,
    "steering": SteeringConfig,
}
# The keys that fix a corpus's rows: with an activation cache they come from the cache.
CORPUS_KEYS = ("data.sources", "data.context_size", "data.mode", "data.num_proc", "data.shuffle_seed")


# ---- the config layout ----


def default_config() -> ml_collections.ConfigDict:
  """Every section with its dataclass's defaults; fields without a default, and None defaults, are typed
  placeholders (a run that reads them must set them)."""
  return ml_collections.ConfigDict({name: _section_dict(cls) for name, cls in SECTIONS.items()})


def _section_dict(cls) -> dict:
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    if not f.init:
      continue
    default = f.default if f.default is not dataclasses.MISSING else None
    out[f.name] = ml_collections.FieldReference(None, field_type=_base_type(hints[f.name])) if default is None \
        else default
  return out


def _base_type(hint) -> type:
  """int for `int | None`, tuple for `tuple[int, ...]`."""
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(a for a in typing.get_args(hint) if a is not type(None))
  return typing.get_origin(hint) or hint


def section(c, name: str):
  """The dataclass of section `name` of config `c`; a required key left unset is a UserError."""
  cls = SECTIONS[name]
  values = dict(c[name]) if name in c else {}
  required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.init]
  unset = [k for k in required if values.get(k) is None]
  if unset:
    raise UserError(f"the config does not set {', '.join(f'{name}.{k}' for k in unset)}: give "
                    f"--config.{name}.{unset[0]}=...")
  if cls is SAEConfig:
    return SAEConfig.from_dict(values)
  try:
    return cls(**values)
  except TypeError as e:
    raise UserError(f"bad {name} config: {e}") from None


def resolved(c, names) -> dict:
  """The sections `names` as their dataclasses see them (what `--print_config` shows)."""
  return {name: dataclasses.asdict(section(c, name)) for name in names}


def tokenizer_path(c) -> str:
  return c.data.tokenizer or c.model.path


def token_rows(c) -> np.ndarray:
  """The packed corpus [rows, context_size] of `c.data` (int32), deterministic given the config."""
  return section(c, "data").rows(tokenizer_path(c))


def load_model(c, sae_cfg: SAEConfig, mesh):
  """The config's model on `mesh`, checked against the SAE's width."""
  model = section(c, "model").load(mesh)
  sae_cfg.check_width(model.cfg.hidden_size)
  return model


def model_source(c, sae_cfg: SAEConfig, mesh, rows=None, stop: StopSignals | None = None,
                 prefix: str = "[collect]") -> ActivationSource:
  """`ActivationSource` running the config's model to `sae.hook_layer` over the corpus (`rows` if already packed);
  the model load and the tokenization are `runinfo.Phase`s (`prefix` names the run), during which `stop` says
  nothing is saved yet."""
  if stop:
    stop.immediate("the model load")
  with runinfo.Phase(f"{prefix} model {c.model.path}", start=c.model.dtype) as phase:
    model = load_model(c, sae_cfg, mesh)
    phase.result = f"{model.cfg.num_layers} layers, width {model.cfg.hidden_size}"
  if rows is None:
    rows = _tokenize(c, stop, prefix)
  return ActivationSource(model, rows, layer=sae_cfg.hook_layer, site=sae_cfg.hook_site,
                          exclude_ids=sae_cfg.exclude_special_tokens, batch_rows=c.data.store_batch_rows, mesh=mesh)


def _tokenize(c, stop: StopSignals | None, prefix: str) -> np.ndarray:
  if stop:
    stop.immediate("the tokenization")
  with runinfo.Phase(f"{prefix} corpus", unit="tokens", start=", ".join(c.data.sources)) as phase:
    rows = token_rows(c)
    phase.done = int(rows.size)
    phase.result = f"{len(rows)} rows of {rows.shape[1]} tokens"
  return rows


def training_data(c, sae_cfg: SAEConfig, opts: TrainerOptions,
                  stop: StopSignals | None = None) -> tuple[np.ndarray | None, dict]:
  """(token rows, or None for an activation cache; the token budget), checked before any model is read.

  One pass over the data serves `buffer.batches_per_epoch` batches of its kept activations (BOS/EOS and the
  rows of a last partial model batch are not). The run takes `sae.n_steps` plus the norm estimate's batches. If
  a pass falls short, the run fails here with the numbers, unless `activations.loop` starts the data again.
  """
  acts = section(c, "activations")
  if acts.cache_dir:
    if not sio.is_url(acts.cache_dir) and not os.path.isdir(acts.cache_dir):
      raise UserError(f"activations.cache_dir {acts.cache_dir} does not exist")
    manifest = ShardReader(acts.cache_dir, d=sae_cfg.d_in).manifest
    if not manifest.get("done"):
      raise UserError(f"activation cache {acts.cache_dir} is incomplete (done=false: its collection stopped "
                      "early): rerun the same collect_activations.py command to finish it")
    rows, kept, where = None, sum(s["tokens"] for s in manifest["shards"]), f"the cache {acts.cache_dir}"
  else:
    rows = _tokenize(c, stop, "[train]")
    used = rows[:len(rows) // c.data.store_batch_rows * c.data.store_batch_rows]
    if len(used) == 0:
      raise UserError(f"the token corpus has {len(rows)} rows, fewer than one batch of {c.data.store_batch_rows}")
    excluded = int(np.isin(used, np.asarray(sae_cfg.exclude_special_tokens, np.int64)).sum())
    kept, where = int(used.size - excluded), f"{len(used):,} rows of {used.shape[1]} tokens"
  norm = sae_cfg.n_batches_for_norm_estimate if sae_cfg.normalize_activations != "none" else 0
  need = sae_cfg.n_steps + norm
  per_pass = batches_per_epoch(kept, opts.buffer_half_tokens, sae_cfg.batch_size)
  budget = {"kept_tokens_per_pass": kept, "batches_per_pass": per_pass, "batches_needed": need,
            "passes": round(need / per_pass, 4) if per_pass else float("inf"), "loop": acts.loop}
  numbers = (f"{where} keep {kept:,} activations a pass (without sae.exclude_special_tokens), which serve "
             f"{per_pass:,} batches of {sae_cfg.batch_size:,} (the first buffer half of {opts.buffer_half_tokens:,} "
             f"only primes the buffer; a last partial half is dropped); the run takes {need:,} = sae.n_steps "
             f"{sae_cfg.n_steps:,} + {norm:,} for the norm estimate")
  if per_pass == 0:
    raise UserError(f"{numbers}: add data or lower trainer.buffer_half_tokens")
  if need > per_pass and not acts.loop:
    raise UserError(f"{numbers}: add data, lower sae.n_steps, or set activations.loop=true to start the data "
                    "again when it runs out, as SAELens does")
  return rows, budget


def _path_key(path: str) -> str:
  """A path as a resume compares it: an existing local file or dir by its real path (relative, absolute and
  symlinked spellings are one), anything else (hub id, URL, "") as written."""
  if path and not sio.is_url(path) and os.path.exists(path):
    return os.path.realpath(path)
  return path


def stream_keys(c) -> dict:
  """The keys besides `sae.*` that fix a training run's activation stream, as its checkpoints store them so a
  resume under others is refused (`trainer._check_resume`): `activations.*` always (a cache path normalised);
  on the fly also the model (path normalised, dtype) and every `data.*` key (the tokenizer resolved, source paths
  normalised). With a cache `model.*` and `data.*` are left out (the cache fixed them; the model only serves the
  splice eval), as is `eval.*`. `mesh.*` is stored and may change (trainer.HARMLESS)."""
  acts = section(c, "activations")
  keys = {f"mesh.{k}": v for k, v in dataclasses.asdict(section(c, "mesh")).items()}
  keys.update({"activations.cache_dir": _path_key(acts.cache_dir), "activations.loop": acts.loop})
  if not acts.cache_dir:
    data = dataclasses.asdict(section(c, "data"))
    data["tokenizer"] = _path_key(tokenizer_path(c))
    data["sources"] = ["#".join(filter(None, (_path_key(p), o))) for p, _, o in
                       (src.partition("#") for src in data["sources"])]
    keys.update({f"data.{k}": v for k, v in data.items()})
    keys.update({"model.path": _path_key(c.model.path), "model.dtype": section(c, "model").dtype})
  return keys


@contextlib.contextmanager
def _progress(desc: str, unit: str = "row"):
  """A tqdm bar as a `progress(done, total)` callback."""
  from tqdm import tqdm
  bar = tqdm(desc=desc, unit=unit, mininterval=2.0)

  def update(done, total):
    bar.total = total
    bar.update(done - bar.n)

  try:
    yield update
  finally:
    bar.close()


# ---- the stages ----


def collect(c, out: str, shard_tokens: int, max_batches: int = 0) -> dict:
  """Activations of `sae.hook_layer`/`sae.hook_site` over the corpus into shards at `out` (resumable)."""
  if shard_tokens < 1:
    raise UserError(f"--shard_tokens={shard_tokens}: expected an integer >= 1")
  if max_batches < 0:
    raise UserError(f"--max_batches={max_batches}: expected an integer >= 0 (0: the whole corpus)")
  sio.check_output_dir(out, "activation cache")
  pod.initialize()
  start = time.time()
  sae_cfg = section(c, "sae")
  source = model_source(c, sae_cfg, section(c, "mesh").make())
  meta = {"model": c.model.path, "layer": sae_cfg.hook_layer, "site": sae_cfg.hook_site,
          "sources": list(c.data.sources), "context_size": c.data.context_size, "mode": c.data.mode,
          "exclude_ids": list(sae_cfg.exclude_special_tokens), "tokenizer": tokenizer_path(c)}
  rows = np.asarray(source.rows[:source.batches_per_epoch * source.batch_rows])  # all the source will run
  streams = shd.data_shards(source.mesh)  # one per data shard: its process writes it (ShardWriter)
  shd.check_batch_splits(source.batch_rows, source.mesh, "a collection batch (data.store_batch_rows)")
  writer = ShardWriter(out, shard_tokens, sae_cfg.d_in, meta, rows=rows, streams=streams,
                       batch_rows=source.batch_rows)
  with _progress("collect", "batch") as progress:
    manifest = fill_cache(source, writer, max_batches, progress)
  return {"out": out, "shards": len(manifest["shards"]), "tokens": sum(s["tokens"] for s in manifest["shards"]),
          "seconds": round(time.time() - start, 1)}


def train(c) -> dict:
  """Trains (or resumes) the SAE of `c` into `trainer.out_dir`, then the splice eval; writes result.json.

  SIGTERM / SIGINT are handled from the first line (`StopSignals`): before training state exists the run stops
  at once saying nothing was saved; from the norm estimate on it saves what a rerun resumes from.
  """
  stop = StopSignals()
  try:
    pod.initialize()
    sae_cfg, opts = section(c, "sae"), section(c, "trainer")
    opts.check(sae_cfg)
    sio.check_output_dir(opts.out_dir, "trainer.out_dir")
    result_path = os.path.join(opts.out_dir, "result.json")
    data = stream_keys(c)
    if finished(sae_cfg, opts, data) and os.path.exists(result_path):
      print(f"{opts.out_dir} already holds this run, trained to step {sae_cfg.n_steps}: nothing to do")
      with open(result_path) as f:
        return json.load(f)
    mesh = section(c, "mesh").make()
    check_mesh(sae_cfg, mesh)
    shape = section(c, "model").peek() if c.model.path and not c.activations.cache_dir else None
    if shape is not None:  # the width from config.json, before the corpus is packed
      sae_cfg.check_width(shape.hidden_size)
    rows, budget = training_data(c, sae_cfg, opts, stop)
    runinfo.say(f"[train] data: {budget['kept_tokens_per_pass']:,} activations a pass serve "
                f"{budget['batches_per_pass']:,} batches; the run takes {budget['batches_needed']:,} "
                f"({budget['passes']:g} passes)")
    if rows is None:
      acts = ShardReader(c.activations.cache_dir, d=sae_cfg.d_in, sharding=batch_sharding(mesh))
      chunk = acts.chunk_tokens
    else:
      acts = model_source(c, sae_cfg, mesh, rows, stop=stop, prefix="[train]")
      chunk = c.data.store_batch_rows * c.data.context_size
    stream = BatchStream(acts, d=sae_cfg.d_in, batch_size=sae_cfg.batch_size, half=opts.buffer_half_tokens,
                         slack=chunk, seed=sae_cfg.seed, sharding=batch_sharding(mesh), loop=c.activations.loop)
    result = train_sae(sae_cfg, stream, opts, mesh=mesh, data=data, stop=stop)
    result["data"] = budget
    sae = result.pop("sae")
    ev = section(c, "eval")
    if c.model.path and ev.batches > 0:
      stop.immediate("the splice eval", f"after the export: the SAE is in {result['sae_dir']}")
      with runinfo.Phase("[train] splice eval", start=f"{ev.batches} batches"):
        result["splice_eval"] = _splice_eval(c, sae, ev, mesh, rows)
    if pod.is_writer():
      sio.write_json(result_path, result, default=float)
    return result
  finally:
    stop.close()


def _splice_eval(c, sae: SAE, ev: EvalConfig, mesh, rows=None) -> dict:
  """CE-loss recovered, KL, explained variance and L0 of the trained SAE on `ev.batches` batches: of the held-out
  `ev.sources`, or else the corpus's last rows (`rows` if already packed)."""
  model = load_model(c, sae.cfg, mesh)
  b = c.data.store_batch_rows
  if ev.sources:
    held_out = dataclasses.replace(section(c, "data"), sources=ev.sources, num_rows=ev.batches * b, shuffle_seed=-1)
    rows = held_out.rows(tokenizer_path(c))
    batches, where = [rows[i * b:(i + 1) * b] for i in range(len(rows) // b)], "held-out: eval.sources"
  else:
    rows = token_rows(c) if rows is None else rows
    n = min(ev.batches, len(rows) // b)
    batches = [rows[len(rows) - (i + 1) * b:len(rows) - i * b] for i in range(n)]
    where = "the training corpus's last rows"
  if not batches:
    raise UserError(f"the eval rows ({where}) fill no batch of data.store_batch_rows={b}")
  exclude = sae.cfg.exclude_special_tokens
  recon = reconstruction_eval(model, sae, batches, exclude_ids=exclude)
  return {**splice_metrics(model, sae, batches, exclude_ids=exclude), "rows": where,
          "explained_variance": recon["explained_variance"], "l0": recon["l0"], "mse_loss": recon["mse_loss"]}


@dataclasses.dataclass
class _FeatureInputs:
  """What the feature stages share: the mesh, the SAE, the hook it is read at, and the config's activation cache
  (`activations.cache_dir`) if one is given."""

  mesh: object
  sae: SAE
  layer: int
  site: str
  cache: CachedRows | None


def _feature_inputs(c, sae_dir: str, given=(), what: str = "the model") -> _FeatureInputs:
  """The SAE and mesh; exactly one of `model.path` and `activations.cache_dir` must be set (`given`: the
  config keys set on the command line, as a cache refuses corpus keys)."""
  pod.initialize()
  mesh = section(c, "mesh").make()
  sae = load_sae(sae_dir)
  hook = section(c, "hook")
  layer, site = (sae.cfg.hook_layer if hook.layer is None else hook.layer), (hook.site or sae.cfg.hook_site)
  if bool(c.model.path) == bool(c.activations.cache_dir):
    raise UserError(f"give exactly one of --config.model.path (run {what}) and --config.activations.cache_dir "
                    "(a cache of its activations)")
  cache = _open_cache(c.activations.cache_dir, sae, layer, site, given) if c.activations.cache_dir else None
  return _FeatureInputs(mesh, sae, layer, site, cache)


def _open_cache(path: str, sae: SAE, layer: int, site: str, given=()) -> CachedRows:
  """`CachedRows` of an activation cache, checked against the hook; the corpus keys must not be given."""
  fixed = [f"--config.{k}" for k in CORPUS_KEYS if k in given]
  if fixed:
    raise UserError(f"{', '.join(fixed)} cannot be used with cached activations: the cache fixes its rows")
  cache = CachedRows(path, d=sae.d_in)
  cached = (cache.meta.get("layer"), cache.meta.get("site"))
  if cached != (layer, site):
    raise UserError(f"activation cache {path} holds layer {cached[0]} {cached[1]}, the SAE reads layer {layer} "
                    f"{site}")
  return cache


def _cache_rows(caches, n_rows: int) -> np.ndarray:
  """The rows every cache covers (their common prefix), the first `n_rows` of them (0: all); the caches agree."""
  rows = None
  for name, cache in caches.items():
    n = len(cache.rows) if rows is None else min(len(rows), len(cache.rows))
    if rows is not None and not np.array_equal(rows[:n], cache.rows[:n]):
      raise UserError(f"the activation caches hold different token rows (model {name}'s differs); collect "
                      "both with the same data config")
    rows = cache.rows[:n]
  return rows[:n_rows] if n_rows else rows


def _model_site_fn(c, source: str, x: _FeatureInputs):
  """(model, site_fn) of model `source` at the hook, checked against the SAE's width."""
  model = ModelSpec(path=source, dtype=c.model.dtype).load(x.mesh)
  x.sae.check_width(model.cfg.hidden_size)
  return model, make_site_fn(model, x.layer, x.site, x.mesh)


def reason_score(c, sae_dir: str, out: str, given=()) -> dict:
  """ReasonScore of every feature of the SAE at `sae_dir` over the config's corpus, or over the rows and
  activations of `activations.cache_dir`. Writes the arrays, reasonscore.json (their digests) and top_k.json
  as one dir swapped in at `out` (new, empty or an earlier reasonscore output)."""
  start = time.time()
  sio.check_replaceable(out, "reasonscore")
  rs = section(c, "reasonscore")
  x = _feature_inputs(c, sae_dir, given)
  if x.cache is not None:
    tokenizer = load_tokenizer(c.data.tokenizer or x.cache.tokenizer)
    settings = rs.accumulator_kwargs(tokenizer)
    x.cache.check_ignored(settings["ignore_ids"])
    rows = _cache_rows({"": x.cache}, c.data.num_rows)
    site_fn = x.cache.site_fn(len(rows))
  else:
    tokenizer = load_tokenizer(tokenizer_path(c))
    settings = rs.accumulator_kwargs(tokenizer)
    _, site_fn = _model_site_fn(c, c.model.path, x)
    rows = section(c, "data").rows(tokenizer)
  with _progress("reason_score") as progress:
    scores = reasonscore_corpus(site_fn, rows, x.sae, rs.vocabulary(tokenizer), batch_rows=c.data.store_batch_rows,
                                alpha=rs.alpha, progress=progress, mesh=x.mesh, **settings)
  top = scores.top_k(rs.top_k)

  def fill(tmp):
    scores.save(tmp)
    sio.write_json(os.path.join(tmp, "top_k.json"), top, indent=1, default=float)

  if pod.is_writer():
    sio.write_dir(out, fill, "reasonscore")  # one output, swapped in whole: never half old, half new
  return {"out": out, "rows": int(len(rows)), "tokens": int(rows.size),
          "source": c.activations.cache_dir or c.model.path,
          "features": int(len(scores.scores)), "seconds": round(time.time() - start, 1),
          "top": [{"feature": t["feature"], "score": round(float(t["score"]), 5),
                   "top_words": sorted(t["words"], key=lambda w: -t["words"][w])[:3]} for t in top[:10]]}


def dashboard(c, sae_dir: str, out: str, scores_dir: str | None = None, features=None) -> dict:
  """Static HTML dashboards of `features` (default: the `dashboard.top_k` best of the ReasonScore results at
  `scores_dir`) over the config's corpus: index.html, feature_<id>.html and features.json, replacing `out`."""
  start = time.time()
  sio.check_replaceable(out, "dashboard")
  view, labels, rs = section(c, "dashboard"), section(c, "autointerp"), section(c, "reasonscore")
  scores = ReasonScores.load(scores_dir) if scores_dir else None
  if not features:
    if scores is None:
      raise UserError("give --scores (ReasonScore results) or --features=1,2,3")
    features = [t["feature"] for t in scores.top_k(view.top_k)]
  x = _feature_inputs(c, sae_dir)
  if x.cache is not None:
    raise UserError("dashboards run the model (the logit lens needs its unembedding): unset "
                    "--config.activations.cache_dir")
  features = check_features(features, x.sae.d_sae).tolist()
  if scores is not None and len(scores.scores) != x.sae.d_sae:
    raise UserError(f"--scores has {len(scores.scores)} features but the SAE has {x.sae.d_sae}")
  tokenizer = load_tokenizer(tokenizer_path(c))
  model, site_fn = _model_site_fn(c, c.model.path, x)
  vocab = rs.vocabulary(tokenizer)
  rows = section(c, "data").rows(tokenizer)
  with _progress("dashboard") as progress:
    stats, summary = collect_feature_stats(site_fn, rows, x.sae, features, batch_rows=c.data.store_batch_rows,
                                           mesh=x.mesh, progress=progress, vocab=vocab, config=view,
                                           ignore_ids=view.ignore_ids)
  meta = {"model": c.model.path, "sae": sae_dir, "hook": f"blocks.{x.layer}.hook_{x.site}", "scores": scores_dir,
          "data": list(c.data.sources), "packing": c.data.mode, "context_size": c.data.context_size,
          "n_rows": int(len(rows)), "n_tokens": int(rows.size), "ignore_ids": list(view.ignore_ids)}
  data = build_dashboards(stats, tokenizer, w_dec_rows=np.asarray(x.sae.raw().params["W_dec"])[features],
                          unembed=unembedding(model), scores=scores, group_names=vocab.group_names, config=view,
                          meta=meta, summary=summary)
  if pod.is_writer():
    if labels.url:
      label_features(data, labels.url, labels.model, api_key=os.environ.get(labels.key_env))
    write_dashboards(data, out)
  return {"out": out, "index": os.path.join(out, "index.html"), "rows": int(len(rows)), "tokens": int(rows.size),
          "features": len(features), "seconds": round(time.time() - start, 1),
          "max_activation": {str(f["feature"]): round(f["max_activation"], 4) for f in data["features"][:10]},
          "sae": {k: round(summary[k], 4) for k in ("l0", "explained_variance", "explained_variance_pooled",
                                                    "dead_fraction", "dense_fraction")},
          "dense_shown": [f["feature"] for f in data["features"] if f["dense"]]}


def diff_models(c, sae_dir: str, out: str, model_a: str = "", activations_a: str = "", given=()) -> dict:
  """The same SAE and rows through model A (`model_a`, or its cache `activations_a`) and model B (the config's
  model, or `activations.cache_dir`), one model in memory at a time: per-feature statistics of both and their
  ratios, written into `out`."""
  start = time.time()
  sio.check_output_dir(out, "--out")
  rs, opts = section(c, "reasonscore"), section(c, "diff")
  if bool(model_a) == bool(activations_a):
    raise UserError("give exactly one of --model_a and --activations_a")
  x = _feature_inputs(c, sae_dir, given, what="model B")
  sources = {"A": model_a, "B": c.model.path}
  caches = {"A": _open_cache(activations_a, x.sae, x.layer, x.site, given) if activations_a else None,
            "B": x.cache}
  caches = {name: cache for name, cache in caches.items() if cache is not None}
  cfgs = {name: ModelSpec(path=src).peek() for name, src in sources.items() if src}
  if len(cfgs) == 2 and all(cfgs.values()):  # before any weights or corpus are read
    diffing.check_pair(cfgs["A"], cfgs["B"], x.sae, x.layer)
  for cfg in cfgs.values():
    if cfg is not None:
      x.sae.check_width(cfg.hidden_size)
  tokenizer = load_tokenizer(c.data.tokenizer or c.model.path or caches["B"].tokenizer)
  vocab, settings = rs.vocabulary(tokenizer), rs.accumulator_kwargs(tokenizer)
  if caches:
    rows = _cache_rows(caches, c.data.num_rows)
    for cache in caches.values():
      cache.check_ignored(settings["ignore_ids"])
  else:
    rows = section(c, "data").rows(tokenizer)
  for name, cfg in cfgs.items():
    if cfg is not None:
      diffing.check_rows_fit(rows, cfg, name)
  diffing.check_batches(c.data.store_batch_rows, x.mesh)

  acc = diffing.FeatureStatsAccumulator(x.sae, vocab, mesh=x.mesh, **settings)
  stats, described, loaded = {}, {}, {}
  for name in ("A", "B"):
    if name in caches:
      site_fn = caches[name].site_fn(len(rows))
      described[name] = {"activations": caches[name].path, "source": caches[name].meta.get("model")}
    else:
      model, site_fn = _model_site_fn(c, sources[name], x)
      loaded[name] = model.cfg
      diffing.check_rows_fit(rows, model.cfg, name)  # again, as loaded (hub ids are only known now)
      if len(loaded) == 2:
        diffing.check_pair(loaded["A"], model.cfg, x.sae, x.layer)
      described[name] = {"source": sources[name], "architecture": model.cfg.architecture,
                         "hidden_size": model.cfg.hidden_size, "num_layers": model.cfg.num_layers}
      del model  # one model in memory at a time: site_fn holds the weights until its pass ends
    with _progress(f"model {name}") as progress:
      stats[name] = diffing.model_stats(site_fn, rows, acc, batch_rows=c.data.store_batch_rows, alpha=rs.alpha,
                                        progress=progress)
    del site_fn
    gc.collect()

  diff = diffing.diff_stats(stats["A"], stats["B"], ratio_eps=opts.ratio_eps, b_only_density=opts.b_only_density)
  if pod.is_writer():
    diff.save(out, opts.top_k, extra={
        "models": {name.lower(): d for name, d in described.items()}, "sae": sae_dir, "layer": x.layer,
        "site": x.site, "rows": int(len(rows)), "context_size": int(rows.shape[1]),
        "reasonscore": stats["B"].reason.settings})
  return {"out": out, "rows": int(len(rows)), "tokens": int(rows.size), "seconds": round(time.time() - start, 1),
          "summary": diff.summary(opts.top_k),
          "top": [{k: t[k] for k in ("feature", "score_b", "score_a", "density_a", "density_b", "mean_log2_ratio",
                                     "b_only")} for t in diff.top(min(10, opts.top_k))]}


def evaluate(c, sae_dir: str, out: str, dashboard: str = "") -> dict:
  """The benchmarks of `tasks` sampled as `sampling` says, unsteered and steered by `steering`'s features of
  the SAE at `sae_dir` (none: the baseline alone), on one engine. Resumes from `out`'s samples.jsonl; writes the
  report there and returns pass@1 and mean lengths per (task, setting)."""
  pod.initialize()
  start = time.time()
  sampling, engine, steering = section(c, "sampling"), section(c, "engine"), section(c, "steering")
  sampling.validate()
  sio.check_output_dir(out, "--out")
  tasks = section(c, "tasks").load()
  sae = load_sae(sae_dir) if sae_dir else None
  shape = section(c, "model").peek()  # from config.json alone, so bad steering fails before the weights load
  settings = steer_eval.steering_settings(sae, shape, steering, dashboard) if shape is not None else None
  mesh = section(c, "mesh").make()
  model = section(c, "model").load(mesh)
  if settings is None:
    settings = steer_eval.steering_settings(sae, model.cfg, steering, dashboard)
  summary = steer_eval.evaluate(model, c.model.path, tasks, out, sampling, engine, settings, mesh=mesh)
  if pod.is_writer():
    steer_eval.print_table(summary)
  table = {}
  for t in summary["tasks"]:
    for s in summary["settings"]:
      e = summary["results"].get(s["name"], {}).get(t)
      if e is not None:
        g = e["primary_grader"]
        table.setdefault(t, {})[s["name"]] = {"pass@1": e["graders"][g]["pass@1"]["mean"], "grader": g,
                                              "mean_tokens": e["total_tokens"]["mean"],
                                              "mean_reasoning_tokens": e["reasoning_tokens"]["mean"]}
  return {"out": out, "results": table, "seconds": round(time.time() - start, 1)}

"""`bench.py reasonscore`: our one-pass ReasonScore against the reference's algorithm, same model, SAE and rows.

Both sides score all `--rs_d_sae` features of a random SAE on SmolLM2 (float32) over the same token rows. The
reference (PyTorch, the HF model stopped after the hook layer like TransformerLens' stop_at_layer, the SAE
sliced to a 48-feature minibatch as SAEDashboard's FeatureMaskingContext) runs the LLM over every row once per
48 features. Each round runs our whole scoring once and one reference pass (the next 48 features); the
reference's total is its time per pass times ceil(d_sae / 48) passes, so the ratio is per the same work,
extrapolated on the torch side. `mu_pos_max_rel_diff` checks both computed the same numbers.
"""

import statistics

from absl import flags

from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("rs_d_sae", 4608, "reasonscore: SAE width (8x SmolLM2's 576).")
flags.DEFINE_integer("rs_rows", 32, "reasonscore: rows of --rs_seq tokens scored.")
flags.DEFINE_integer("rs_seq", 128, "reasonscore: tokens per row.")
flags.DEFINE_integer("rs_layer", 19, "reasonscore: hook layer (resid_post).")
flags.DEFINE_integer("rs_reference_passes", 3, "reasonscore: timed rounds, each one full run of ours and one "
                     "reference pass (48 features); the reference's total is its median pass x ceil(d_sae / 48).")

FEATURES_PER_PASS = 48


class _Stop(Exception):
  """Raised by the HF hook once the hooked layer's output is captured (stop_at_layer)."""


def run() -> dict:
  """Our one-pass ReasonScore vs the reference algorithm (one LLM pass per 48 features), same data."""
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers

  from sae_jax.features import Vocabulary, reason_masks, reasonscore_corpus
  from sae_jax.models.inference import make_site_fn
  from sae_jax.models.loading import load_model
  from sae_jax.sae import SAE, SAEConfig

  common.check_counts(rs_reference_passes=(FLAGS.rs_reference_passes, 1), rs_rows=(FLAGS.rs_rows, 1),
                      rs_seq=(FLAGS.rs_seq, 8), rs_d_sae=(FLAGS.rs_d_sae, 1))
  model_dir = common.resolve_model_dir()
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  vocab = Vocabulary.from_tokenizer(tok)
  rng = np.random.RandomState(FLAGS.seed)
  rows = rng.randint(3, tok.vocab_size, (FLAGS.rs_rows, FLAGS.rs_seq)).astype(np.int32)
  words = list(vocab.token_ids)
  for r in range(FLAGS.rs_rows):  # sprinkle reasoning words so every mask is non-empty
    for p in rng.choice(FLAGS.rs_seq - 4, 6, replace=False):
      ids = words[rng.randint(len(words))]
      rows[r, p:p + len(ids)] = ids
  d_in, d_sae, layer = 576, FLAGS.rs_d_sae, FLAGS.rs_layer
  params = {"W_enc": rng.randn(d_in, d_sae).astype(np.float32) * 0.05, "b_enc": np.full(d_sae, -0.2, np.float32),
            "W_dec": rng.randn(d_sae, d_in).astype(np.float32) * 0.05, "b_dec": np.zeros(d_in, np.float32)}
  sae = SAE(params, SAEConfig(d_in=d_in, d_sae=d_sae))
  batch_rows = 8

  model = load_model(model_dir, jnp.float32)
  site_fn = make_site_fn(model, layer, "resid_post")
  compile_s = common.timed(lambda: reasonscore_corpus(site_fn, rows[:batch_rows], sae, vocab,
                                                      batch_rows=batch_rows)).seconds

  torch.set_num_threads(common.torch_threads())
  hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  captured = {}

  def hook(module, inp, out):
    captured["x"] = out[0] if isinstance(out, tuple) else out
    raise _Stop

  handle = hf.model.layers[layer].register_forward_hook(hook)
  norms = np.linalg.norm(params["W_dec"], axis=1)
  w_enc = torch.from_numpy(params["W_enc"] * norms)
  b_enc = torch.from_numpy(params["b_enc"] * norms)
  masks = [reason_masks(rows[i:i + batch_rows], vocab) for i in range(0, len(rows), batch_rows)]
  n_passes = -(-d_sae // FEATURES_PER_PASS)
  sums = np.zeros((d_sae,), np.float64)
  done = []

  def reference_pass(i):
    """The reference's pass i: the LLM over every row, then 48 features' activations."""
    p = i % n_passes
    blk = slice(FEATURES_PER_PASS * p, min(FEATURES_PER_PASS * (p + 1), d_sae))
    with torch.inference_mode():
      for start, m in zip(range(0, len(rows), batch_rows), masks):
        try:
          hf(torch.from_numpy(rows[start:start + batch_rows]).long())
        except _Stop:
          pass
        f = torch.relu(captured["x"] @ w_enc[:, blk] + b_enc[blk])
        sums[blk] = (sums[blk] if start else 0) + (
            f * torch.from_numpy(np.asarray(m.pos, np.float32))[..., None]).sum((0, 1)).numpy()
    done.append(p)

  rounds = common.paired_rounds(
      {"ours": lambda i: reasonscore_corpus(site_fn, rows, sae, vocab, batch_rows=batch_rows),
       "reference_pass": reference_pass}, warmup=0, repeats=FLAGS.rs_reference_passes)
  handle.remove()
  ours = rounds.values["ours"][-1]
  passes = sorted(set(done))
  features = np.concatenate([np.arange(FEATURES_PER_PASS * p, min(FEATURES_PER_PASS * (p + 1), d_sae))
                             for p in passes])
  n_pos = max(float(sum(np.asarray(m.pos).sum() for m in masks)), 1.0)
  mu_pos = ours.mu_pos[features]
  agree = float(np.max(np.abs(sums[features] / n_pos - mu_pos) / (np.abs(mu_pos) + 1e-6)))
  totals = [s * n_passes for s in rounds.seconds["reference_pass"]]
  o = common.spread(rounds.seconds["ours"])
  return {"model": model_dir, "d_sae": d_sae, "layer": layer, "rows": FLAGS.rs_rows, "seq": FLAGS.rs_seq,
          "tokens": int(rows.size), "reference_passes": n_passes, "reference_passes_timed": len(totals),
          "reference_seconds_per_pass": common.spread(rounds.seconds["reference_pass"]),
          "reference_seconds_total_extrapolated": statistics.median(totals), "ours_seconds": o,
          "ours_compile_and_first_batch_s": compile_s, **common.ratio(rounds.seconds["ours"], totals),
          "loadavg_1min": rounds.loadavg_1min, "mu_pos_max_rel_diff": agree,
          "paper_scale_note": "at d_sae 65536 the reference makes 1366 passes; ours stays one pass"}

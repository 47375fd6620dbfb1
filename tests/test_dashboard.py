"""Feature dashboards: streamed stats against dense numpy, the logit lens against torch's weights, the HTML
(escaping, links, what Chromium renders) and the launch script end to end."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, _tiny_hf
from sae_jax.errors import UserError
from sae_jax.io import MARKER
from sae_jax.features import Vocabulary
from sae_jax.features.dashboard import (DashboardAccumulator, DashboardConfig, build_dashboards,
                                        collect_feature_stats, logit_lens, sample_keys, unembedding,
                                        write_dashboards)
from sae_jax.sae import SAE, SAEConfig

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


# ---- dense numpy reference ----


def _dense(tokens, feats, features, cfg: DashboardConfig, ignore=()):
  """Everything from all activations at once: top group, counts, max, and the token lists per interval."""
  valid = ~np.isin(tokens, ignore)
  out = []
  for j, fid in enumerate(features):
    a = np.where(valid & (feats[..., j] > 0), feats[..., j], 0).astype(np.float32)
    r, p = np.nonzero(a)
    v = a[r, p]
    order = np.lexsort((p, r, -v))[:cfg.n_top]
    out.append({"feature": fid, "a": a, "r": r, "p": p, "v": v, "n_tokens": int(valid.sum()),
                "top": [(int(r[i]), int(p[i]), float(v[i])) for i in order],
                "max": float(v.max()) if len(v) else 0.0})
  return out


def _context(tokens, acts, r, p, left, right):
  lo, hi = max(0, p - left), min(tokens.shape[1], p + right + 1)
  return tokens[r, lo:hi].tolist(), acts[r, lo:hi].tolist(), p - lo


def _check_against_dense(got, want, tokens, cfg):
  assert got["feature"] == want["feature"]
  assert got["n_tokens"] == want["n_tokens"] and got["n_active"] == len(want["v"])
  assert got["density"] == pytest.approx(len(want["v"]) / want["n_tokens"])
  assert got["max_activation"] == want["max"]
  assert [(e["row"], e["pos"], e["value"]) for e in got["top"]] == want["top"]
  for e in got["top"] + [e for q in got["quantiles"] for e in q["examples"]]:
    for window, (left, right) in ((e, cfg.context), (e["expanded"], cfg.expanded_context)):
      toks, acts, center = _context(tokens, want["a"], e["row"], e["pos"], left, right)
      assert (window["tokens"], window["center"]) == (toks, center)
      np.testing.assert_array_equal(window["acts"], np.float32(acts))
  if not len(want["v"]):
    assert got["histogram"]["counts"] == [] and got["quantiles"] == []
    return
  m, v = want["max"], want["v"].astype(np.float64)
  exp = int(np.ceil(np.log2(m)))
  for edges, n, grid in ((np.array(got["histogram"]["edges"]), cfg.n_bins, cfg.grid_bins),
                         (np.array([q["lo"] for q in got["quantiles"]] + [got["quantiles"][-1]["hi"]]),
                          cfg.n_quantiles, cfg.sample_cells)):
    w = 2.0**exp / grid  # edges on the grid, each the grid point nearest k * max / n, the last covering max
    assert len(edges) == n + 1 and edges[0] == 0 and edges[-1] >= m > edges[-1] - w
    np.testing.assert_array_equal(edges / w, np.round(edges / w))
    assert np.all(np.abs(edges[1:-1] - np.arange(1, n) * m / n) <= w / 2)
  hist = got["histogram"]
  want_counts = [int(((v > lo) & (v <= hi)).sum()) for lo, hi in zip(hist["edges"][:-1], hist["edges"][1:])]
  assert hist["counts"] == want_counts and sum(want_counts) == len(v)
  keys = sample_keys(cfg.seed, want["feature"], want["r"], want["p"])
  for q in got["quantiles"]:
    inside = np.flatnonzero((v > q["lo"]) & (v <= q["hi"]))
    assert q["count"] == len(inside)
    chosen = inside[np.argsort(keys[inside], kind="stable")[:cfg.quantile_group_size]]
    want_set = {(int(want["r"][i]), int(want["p"][i])) for i in chosen}
    assert {(e["row"], e["pos"]) for e in q["examples"]} == want_set
    assert [e["value"] for e in q["examples"]] == sorted((e["value"] for e in q["examples"]), reverse=True)
    for e in q["examples"]:
      assert e["value"] == want["a"][e["row"], e["pos"]]
      assert e["tokens"] == _context(tokens, want["a"], e["row"], e["pos"], *cfg.context)[0]


def _identity_params(n):
  eye = np.eye(n, dtype=np.float32)
  return SAE({"W_enc": eye, "b_enc": np.zeros(n, np.float32), "W_dec": eye.copy(), "b_dec": np.zeros(n, np.float32)},
             SAEConfig(d_in=n, d_sae=n))


def _synthetic(seed=0, rows=12, length=40):
  """Three features: sparse and growing (the grid doubles across rows), dense with ties, never firing."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 30, size=(rows, length))
  tokens[:, ::7] = 0  # ignored
  scale = 2.0 ** (np.arange(rows) / 3)[:, None]
  sparse = np.where(rng.random((rows, length)) < 0.15, rng.exponential(1.0, (rows, length)) * scale, 0)
  dense = np.where(rng.random((rows, length)) < 0.6, np.round(rng.random((rows, length)) * 8) / 4, 0)
  dense[3, 8] = dense[9, 1] = 2.5  # a tie at the top
  feats = np.stack([sparse, dense, -np.ones((rows, length))], axis=-1).astype(np.float32)
  return tokens, feats


def test_streamed_equals_dense_whatever_the_batching():
  tokens, feats = _synthetic()
  features = [4, 0, 2]
  cfg = DashboardConfig(n_top=7, quantile_group_size=3, context=(3, 2), expanded_context=(9, 4), n_bins=20,
                        grid_bins=128, sample_cells=64, seed=5)
  results = []
  for batches in ([12], [5, 5, 2], [1] * 12, [2] * 6):
    acc = DashboardAccumulator(_identity_params(5), features, config=cfg, ignore_ids=(0,))
    starts = np.cumsum([0] + batches[:-1])
    for start, n in reversed(list(zip(starts, batches))):  # any order gives the same result
      acc.update_features(tokens[start:start + n], feats[start:start + n, :, [0, 1, 2]], row_offset=int(start))
    results.append(acc.finalize())
  assert all(r == results[0] for r in results[1:])
  for got, want in zip(results[0], _dense(tokens, feats, features, cfg, ignore=(0,))):
    _check_against_dense(got, want, tokens, cfg)
  assert results[0][0]["max_activation"] > 8 and len(results[0][1]["top"]) == 7
  assert results[0][1]["top"][0]["row"] == 3 and results[0][1]["top"][1]["row"] == 9  # the tie, earlier first
  assert results[0][2]["n_active"] == 0 and results[0][2]["top"] == []


def test_padding_rows_and_words_marked(assets):
  import transformers
  tok = transformers.AutoTokenizer.from_pretrained(assets.llama3_tokenizer)
  vocab = Vocabulary.from_tokenizer(tok)
  ids = tok.encode("So the answer is 4. Wait, let me check. Hmm", add_special_tokens=False)
  tokens = np.array([ids, ids])
  feats = np.linspace(0.1, 1.0, tokens.size).reshape(tokens.shape + (1,)).astype(np.float32)
  acc = DashboardAccumulator(_identity_params(1), [0], vocab=vocab, config=DashboardConfig(context=(20, 20)))
  acc.update_features(tokens, feats, row_offset=0, n_rows=1)  # the second row is padding
  (st,) = acc.finalize()
  assert st["n_tokens"] == len(ids) and {e["row"] for e in st["top"]} == {0}
  ex = st["top"][0]
  words = {tok.decode([t]).strip(): vocab.group_names[w] for t, w in zip(ex["tokens"], ex["words"]) if w >= 0}
  assert words == {"Wait": "wait", "let": "let me", "me": "let me", "Hmm": "hmm"}


# ---- the real path: tiny model, hand-set SAE ----


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  """(torch model, our model) of the tiny random Llama (vocab 128, d 64), float32."""
  import jax.numpy as jnp
  from sae_jax.models import checkpoint
  hf = _tiny_hf("llama")
  path = str(tmp_path_factory.mktemp("tiny_llama_dash"))
  hf.save_pretrained(path)
  return hf, checkpoint.load_any(path, dtype=jnp.float32)


def test_tiny_model_hand_set_sae(tiny_model):
  """resid_pre of layer 0 is the token embedding, so a feature along embedding row t fires on token t only."""
  from sae_jax.activations.collect import make_site_fn
  hf, model = tiny_model
  emb = hf.model.embed_tokens.weight.detach().numpy().astype(np.float64)
  rng = np.random.default_rng(0)
  d, d_sae, target = emb.shape[1], 6, 17
  unit = emb[target] / np.linalg.norm(emb[target])
  w_enc = rng.normal(size=(d, d_sae))
  b_enc = np.zeros(d_sae)
  w_enc[:, 1], b_enc[1] = 4 * unit, -2 * np.linalg.norm(emb[target])  # fires on token 17 only
  w_dec = rng.normal(size=(d_sae, d)) * np.array([1, 2.5, 1, 1, 0.3, 1])[:, None]  # non-unit rows: folded
  params = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": rng.normal(size=d) * 0.01}
  params = {k: v.astype(np.float32) for k, v in params.items()}
  sae = SAE(params, SAEConfig(d_in=d, d_sae=d_sae))
  tokens = rng.integers(0, 128, size=(7, 24))
  tokens[tokens == target] = 3
  hits = [(0, 5), (2, 0), (2, 23), (4, 11), (6, 11)]
  for r, p in hits:
    tokens[r, p] = target
  features = [4, 1]  # a dense-ish random feature and the token detector

  # numpy: features from the embedding table, folded by the decoder norms
  x = emb[tokens]
  dense = np.maximum(x @ params["W_enc"].astype(np.float64) + params["b_enc"], 0)
  dense *= np.linalg.norm(params["W_dec"].astype(np.float64), axis=1)
  assert {tuple(i) for i in np.argwhere(dense[..., 1] > 0)} == set(hits)

  cfg = DashboardConfig(n_top=6, context=(3, 3), grid_bins=512, sample_cells=128, n_neighbours=4,
                        dense_threshold=0.3)
  site_fn = make_site_fn(model, 0, "resid_pre")
  stats, summary = collect_feature_stats(site_fn, tokens, sae, features, batch_rows=3, config=cfg)  # 3+3+1(+2 pad)
  want = _dense(tokens, dense[..., features].astype(np.float32), features, cfg)
  detector = stats[1]
  assert detector["n_active"] == len(hits) and detector["density"] == pytest.approx(len(hits) / tokens.size)
  assert sorted((e["row"], e["pos"]) for e in detector["top"]) == hits
  assert {e["tokens"][e["center"]] for e in detector["top"]} == {target}
  for got, w in zip(stats, want):
    assert got["max_activation"] == pytest.approx(w["max"], rel=1e-5)
    assert got["n_active"] == len(w["v"])
    assert [(e["row"], e["pos"]) for e in got["top"]] == [(r, p) for r, p, _ in w["top"]]
    np.testing.assert_allclose([e["value"] for e in got["top"]], [v for _, _, v in w["top"]], rtol=1e-5)
  hist = stats[0]["histogram"]
  v = want[0]["v"]
  assert hist["counts"] == [int(((v > lo) & (v <= hi)).sum()) for lo, hi in zip(hist["edges"], hist["edges"][1:])]
  _check_summary(stats, summary, features, x, params, dense, cfg, batch_rows=3)


def _explained_variances(x, params, batch_rows):
  """(SAELens' per-token explained variance against each batch's mean, averaged; pooled 1 - SSE / SST; MSE) of
  a standard SAE on raw activations x [rows, T, d], in float64."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  recon = np.maximum(x @ p["W_enc"] + p["b_enc"], 0) @ p["W_dec"] + p["b_dec"]
  err = np.sum(np.square(recon - x), axis=-1)
  per_token = [1 - err[s:s + batch_rows] / np.sum(np.square(x[s:s + batch_rows] - x[s:s + batch_rows].mean(
      axis=(0, 1))), axis=-1) for s in range(0, len(x), batch_rows)]
  flat = x.reshape(-1, x.shape[-1])
  return (np.mean(np.concatenate([t.ravel() for t in per_token])),
          1 - err.sum() / np.sum(np.square(flat - flat.mean(axis=0))), err.mean())


def _check_summary(stats, summary, features, x, params, folded, cfg, batch_rows):
  """The SAE summary and both neighbour lists against numpy: x [rows, T, d] raw activations, folded [..., d_sae]
  every latent's folded activations, all tokens valid."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  ev, pooled, mse = _explained_variances(x, params, batch_rows)
  x, fires = x.reshape(-1, x.shape[-1]), folded.reshape(-1, folded.shape[-1]) > 0
  n, fired = len(x), fires.sum(axis=0)
  assert summary["n_tokens"] == n and summary["d_sae"] == fires.shape[1]
  assert summary["l0"] == pytest.approx(fired.sum() / n)
  assert summary["dead_fraction"] == pytest.approx(np.mean(fired == 0))
  assert summary["dense_fraction"] == pytest.approx(np.mean(fired / n > cfg.dense_threshold))
  assert summary["explained_variance"] == pytest.approx(ev, rel=1e-4, abs=1e-4)
  assert summary["explained_variance_pooled"] == pytest.approx(pooled, rel=1e-4, abs=1e-4)
  assert summary["mse"] == pytest.approx(mse, rel=1e-4)
  unit = p["W_dec"] / np.linalg.norm(p["W_dec"], axis=1, keepdims=True)
  cos = unit @ unit.T
  shown = cos[np.ix_(features, features)]
  assert summary["decoder_cosine"]["shown_mean"] == pytest.approx(
      (shown.sum() - np.trace(shown)) / (len(features) * (len(features) - 1)), rel=1e-5)
  both = fires[:, features].T.astype(np.int64) @ fires.astype(np.int64)  # [F, d_sae]
  for st, fid, co in zip(stats, features, both):
    assert st["dense"] == (fired[fid] / n > cfg.dense_threshold) and st["density"] == pytest.approx(fired[fid] / n)
    others = [j for j in range(fires.shape[1]) if j != fid]
    want_dec = sorted(others, key=lambda j: (-cos[fid, j], j))[:cfg.n_neighbours]
    got_dec = st["neighbours"]["decoder"]
    assert [g["feature"] for g in got_dec] == want_dec
    np.testing.assert_allclose([g["cosine"] for g in got_dec], cos[fid, want_dec], rtol=1e-5, atol=1e-6)
    jac = {j: co[j] / (fired[fid] + fired[j] - co[j]) for j in others if co[j] > 0}
    want_co = sorted(jac, key=lambda j: (-jac[j], j))[:cfg.n_neighbours]
    got_co = st["neighbours"]["coactivation"]
    assert [g["feature"] for g in got_co] == want_co
    np.testing.assert_allclose([g["jaccard"] for g in got_co], [jac[j] for j in want_co], rtol=1e-6)
    assert [g["count"] for g in got_co] == [int(co[j]) for j in want_co]
    assert [g["density"] for g in got_dec + got_co] == pytest.approx([fired[j] / n for j in want_dec + want_co])


@pytest.mark.parametrize("tie", [False, True])
def test_logit_lens_matches_numpy(tmp_path, tie):
  import jax.numpy as jnp
  from sae_jax.models import checkpoint
  hf = _tiny_hf("llama", tie=tie)
  hf.save_pretrained(tmp_path)
  model = checkpoint.load_any(str(tmp_path), dtype=jnp.float32)
  w_u = hf.lm_head.weight.detach().numpy().T.astype(np.float64)  # [d, vocab]; tied: the embedding
  g = hf.model.norm.weight.detach().numpy().astype(np.float64)
  w_dec = np.random.default_rng(1).normal(size=(3, w_u.shape[0])) * 3
  unit = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)
  got_u, got_g = unembedding(model)
  np.testing.assert_allclose(np.asarray(got_u), w_u, rtol=1e-6)
  for norm, want in ((None, unit @ w_u), (got_g, (unit * g) @ w_u)):
    got = logit_lens(w_dec.astype(np.float32), got_u, norm, k=10)
    for j in range(3):
      np.testing.assert_array_equal(got["top_ids"][j], np.argsort(-want[j])[:10])
      np.testing.assert_array_equal(got["bottom_ids"][j], np.argsort(want[j])[:10])
      np.testing.assert_allclose(got["top_values"][j], np.sort(want[j])[::-1][:10], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(got["bottom_values"][j], np.sort(want[j])[:10], rtol=1e-5, atol=1e-6)
      assert got["hist_counts"][j].sum() == w_u.shape[1]


# ---- HTML ----


class _FakeTokenizer:
  def __init__(self, pieces):
    self.pieces = pieces

  def decode(self, ids, **_):
    return "".join(self.pieces[i] for i in ids)


def _fake_dashboard(tmp_path):
  pieces = {0: "<script>alert(1)</script>", 1: " wait", 2: "\n", 3: ' "quoted" & more', 4: "x"}
  tokens = np.array([[4, 0, 1, 2, 3, 4, 0, 1]])
  feats = np.array([[[0, 2.0], [1.0, 0], [3.0, 0.5], [0, 0], [0.5, 0], [0, 0], [2.0, 0], [0, 1.0]]], np.float32)
  acc = DashboardAccumulator(_identity_params(2), [0, 1], config=DashboardConfig(context=(2, 2)))
  acc.update_features(tokens, feats, row_offset=0)
  data = build_dashboards(acc.finalize(), _FakeTokenizer(pieces), meta={"model": "m<1>", "sae": "s"})
  return data, write_dashboards(data, str(tmp_path / "dash"))


def test_html_escapes_and_links(tmp_path):
  data, out = _fake_dashboard(tmp_path)
  assert sorted(os.listdir(out)) == [MARKER, "feature_0.html", "feature_1.html", "features.json", "index.html"]
  for name in set(os.listdir(out)) - {MARKER}:
    text = open(os.path.join(out, name), encoding="utf-8").read()
    if name.endswith(".html"):
      # token text escaped, no external assets; the one script is the index's column sorter
      assert text.lower().count("<script") == (name == "index.html") and "http" not in text
      hrefs = re.findall(r'href="([^"]+)"', text)
      assert hrefs and all(os.path.isfile(os.path.join(out, h)) for h in hrefs), hrefs
  page = open(os.path.join(out, "feature_0.html"), encoding="utf-8").read()
  assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&quot;quoted&quot; &amp; more" in page
  assert "m&lt;1&gt;" in page
  index = open(os.path.join(out, "index.html"), encoding="utf-8").read()
  assert set(re.findall(r'href="(feature_\d+\.html)"', index)) == {"feature_0.html", "feature_1.html"}
  top = json.load(open(os.path.join(out, "features.json")))["features"][0]["top"][0]
  assert (top["value"], top["text"][top["center"]]) == (3.0, " wait")
  # A dir holding anything else is never replaced.
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("keep")
  with pytest.raises(UserError, match="holds files sae_jax did not write"):
    write_dashboards(data, str(tmp_path / "other"))


def _chromium():
  exe = shutil.which("chromium") or shutil.which("chromium-browser")
  if exe is None:
    pytest.fail("Chromium is not installed: install it with `apt-get update && apt-get install -y chromium` "
                "(Debian package `chromium`)")
  return exe


def _render_dom(page, tmp_path):
  proc = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}",
                         "--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout


def test_chromium_renders_contexts(tmp_path):
  import html
  _, out = _fake_dashboard(tmp_path)
  dom = _render_dom(os.path.join(out, "feature_0.html"), tmp_path)
  assert "Top activations" in dom and "<svg" in dom
  spans = [html.unescape(s) for s in re.findall(r'<span class="t[^"]*"[^>]*>([^<]*)</span>', dom)]
  assert "<script>alert(1)</script>" in spans and " wait" in spans and "↵" in spans
  assert "<script>alert" not in dom  # parsed as text, never as an element


# ---- launch script end to end ----


def _run_launch(*args, devices=2):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "dashboard.py"), *args],
                        capture_output=True, text=True, env=env, timeout=300)


_LAUNCH_DATA = {"sources": ("demo#n=6",), "mode": "clean", "context_size": 64, "num_rows": 5}


def _launch_rows(tokenizer_path):
  """The token rows the launch test's dashboard reads (its default config with the test's data keys)."""
  from configs import paper_dashboard
  from sae_jax import runs
  c = paper_dashboard.get_config()
  c.data.update(tokenizer=tokenizer_path, **_LAUNCH_DATA)
  return runs.section(c, "data").rows(tokenizer_path)


def _resid_post(hf, rows, layer):
  """[n, T, d] float64: the output of HF decoder layer `layer` (resid_post), read with a forward hook."""
  import torch
  got = []
  handle = hf.model.layers[layer].register_forward_hook(
      lambda _m, _i, out: got.append((out[0] if isinstance(out, tuple) else out).detach().double().numpy()))
  with torch.no_grad():
    hf(torch.as_tensor(np.asarray(rows), dtype=torch.long))
  handle.remove()
  return got[0]


@pytest.fixture(scope="module")
def launch_inputs(assets, tmp_path_factory):
  """A tiny random Llama with SmolLM2's vocabulary, a random SAE on its layer 1 and ReasonScore results.

  The three best features by ReasonScore are made dense (fires on ~40% of the rows' tokens), sparse (~3%) and in
  between (~20%), the second's decoder row close to the first's; the other latents' densities spread from 50%
  to 2%. Returns (root, scores, the rows, the SAE params, raw activations [n, T, d])."""
  import torch
  import transformers
  from sae_jax.features.reasonscore import scores_from_sums
  from sae_jax.sae import save_saelens
  root = tmp_path_factory.mktemp("dash_launch")
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                 tie_word_embeddings=True)
  hf = transformers.LlamaForCausalLM(cfg).eval()
  hf.save_pretrained(root / "model")
  rows = _launch_rows(assets.smollm2_hf)
  x = _resid_post(hf, rows, 1)
  rng = np.random.default_rng(0)
  d_sae = 24
  groups = Vocabulary.from_tokenizer(transformers.AutoTokenizer.from_pretrained(assets.smollm2_hf)).group_names
  scores = scores_from_sums(rng.random((2 + len(groups), d_sae)), np.full(2 + len(groups), 100), groups)
  best = [t["feature"] for t in scores.top_k(3)]
  w_enc, w_dec = rng.normal(size=(32, d_sae)), rng.normal(size=(d_sae, 32))
  w_dec[best[1]] = w_dec[best[0]] + 0.3 * rng.normal(size=32)
  density = np.geomspace(0.5, 0.02, d_sae)
  density[best] = (0.4, 0.03, 0.2)
  pre = x.reshape(-1, 32) @ w_enc
  b_enc = -np.array([np.quantile(pre[:, j], 1 - density[j]) for j in range(d_sae)])
  params = {k: v.astype(np.float32) for k, v in
            {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": rng.normal(size=32) * 0.01}.items()}
  save_saelens(str(root / "sae"), SAE(params, SAEConfig(d_in=32, d_sae=d_sae, hook_layer=1, hook_site="resid_post",
                                                        context_size=64)))
  scores.save(str(root / "scores"))
  return root, scores, rows, params, x


def _cells(dom, table_id):
  """Rows of a rendered table (by id) as lists of (data-v or None, text) per cell."""
  import html
  table = re.search(rf'<table id="{table_id}".*?</table>', dom, re.S).group(0)
  out = []
  for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
    cells = re.findall(r'<td([^>]*)>(.*?)</td>', row, re.S)
    if cells:
      out.append([(float(m.group(1)) if (m := re.search(r'data-v="([^"]+)"', a)) else None,
                   html.unescape(re.sub(r"<[^>]+>", "", t))) for a, t in cells])
  return out


def test_launch_end_to_end_in_chromium(launch_inputs, assets, tmp_path):
  """The launch script's pages in Chromium: density badges, neighbours, the SAE summary and the sorted index hold
  the numbers numpy gets from the SAE's weights and HF's activations."""
  import html
  root, scores, rows, params, x = launch_inputs
  out = tmp_path / "dash"
  data_flags = [f"--config.data.{k}={v}" for k, v in _LAUNCH_DATA.items()]
  proc = _run_launch(f"--config.model.path={root / 'model'}", f"--sae={root / 'sae'}", f"--scores={root / 'scores'}",
                     "--config.dashboard.top_k=3", f"--config.data.tokenizer={assets.smollm2_hf}", *data_flags,
                     "--config.data.store_batch_rows=4", "--config.model.dtype=float32", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  want = [t["feature"] for t in scores.top_k(3)]
  assert summary["rows"] == 5 and summary["features"] == 3
  assert sorted(os.listdir(out)) == sorted([MARKER, "index.html", "features.json", "run.json"]
                                           + [f"feature_{f}.html" for f in want])
  data = json.load(open(out / "features.json"))
  assert [f["feature"] for f in data["features"]] == want
  assert data["meta"]["hook"] == "blocks.1.hook_resid_post" and data["meta"]["n_tokens"] == 5 * 64
  f = data["features"][0]
  assert f["reasonscore"]["score"] == pytest.approx(float(scores.scores[want[0]]))
  assert f["max_activation"] == f["top"][0]["value"] > 0 and len(f["top"]) == 20 and len(f["quantiles"]) == 10
  assert {"raw", "final_norm"} <= set(f["logit_lens"]) and len(f["logit_lens"]["raw"]["top"]) == 10
  assert json.load(open(out / "run.json"))["flags"]["config"]["dashboard"]["top_k"] == 3

  # numpy from the SAE's weights and HF's activations
  p = {k: v.astype(np.float64) for k, v in params.items()}
  flat = x.reshape(-1, x.shape[-1])
  fires = flat @ p["W_enc"] + p["b_enc"] > 0
  n, fired = len(flat), fires.sum(axis=0)
  density = fired / n
  unit = p["W_dec"] / np.linalg.norm(p["W_dec"], axis=1, keepdims=True)
  cos = unit @ unit.T
  ev, pooled, _ = _explained_variances(x, params, batch_rows=4)
  assert n == 5 * 64
  assert [g["density"] for g in data["features"]] == pytest.approx(density[want].tolist())
  assert density[want[0]] > 0.1 > density[want[1]]  # one dense, one not

  # The index: summary numbers, badges, sortable columns (opened sorted by density, largest first).
  dom = _render_dom(f"{out / 'index.html'}#sort=density", tmp_path)
  def stat(key):
    return float(re.search(rf'id="sum-{key}" data-v="([^"]+)"', dom).group(1))
  assert stat("n_tokens") == n and stat("l0") == pytest.approx(fired.sum() / n)
  assert stat("dead_fraction") == pytest.approx(np.mean(fired == 0))
  assert stat("dense_fraction") == pytest.approx(np.mean(density > 0.1))
  assert stat("explained_variance") == pytest.approx(ev, abs=1e-4)
  assert stat("explained_variance_pooled") == pytest.approx(pooled, abs=1e-4)
  assert 'id="dense-summary"' in dom and "top ReasonScore words" in dom
  table = _cells(dom, "features")
  by_density = sorted(want, key=lambda j: -density[j])
  assert [int(r[1][0]) for r in table] == by_density  # re-ordered by the script
  assert re.search(r'data-key="density"[^>]*aria-sort="descending"|aria-sort="descending"[^>]*data-key="density"', dom)
  for r in table:
    j = int(r[1][0])
    assert r[4][0] == pytest.approx(density[j]) and ("dense" in r[4][1]) == (density[j] > 0.1)

  # A dense feature's page: the warning, its neighbours (decoder cosine over all latents; Jaccard) and the longer
  # contexts behind each example.
  dom = _render_dom(out / f"feature_{want[0]}.html", tmp_path)
  assert 'id="dense-warning"' in dom and f"Feature {want[0]}" in dom and "Quantile groups" in dom
  dec = _cells(dom, "nb-decoder")
  want_dec = sorted((j for j in range(len(cos)) if j != want[0]), key=lambda j: -cos[want[0], j])[:5]
  assert [int(r[0][1]) for r in dec] == want_dec and want_dec[0] == want[1]
  np.testing.assert_allclose([r[1][0] for r in dec], cos[want[0], want_dec], rtol=1e-5)
  assert f'<a href="feature_{want[1]}.html">{want[1]}</a>' in dom  # a neighbour with a page is linked
  both = fires[:, want[0]].astype(np.int64) @ fires.astype(np.int64)
  jac = np.where(np.arange(len(both)) == want[0], -1, both / (fired[want[0]] + fired - both))
  co = _cells(dom, "nb-coact")
  want_co = [int(j) for j in np.argsort(-jac, kind="stable")[:5]]
  assert [int(r[0][1]) for r in co] == want_co
  np.testing.assert_allclose([r[1][0] for r in co], jac[want_co], rtol=1e-6)
  details = re.findall(r'<details class="ex"><summary class="ctx">(.*?)</summary>(.*?)</details>', dom, re.S)
  assert len(details) >= len(f["top"])
  shown = "".join(html.unescape(s) for s in re.findall(r'<span class="t[^"]*"[^>]*>([^<]*)</span>', dom))
  for ex in f["top"][:5]:
    assert "".join(t.replace("\n", "↵") or "∅" for t in ex["text"]) in shown
    assert "".join(t.replace("\n", "↵") or "∅" for t in ex["expanded"]["text"]) in shown
  dom = _render_dom(out / f"feature_{want[1]}.html", tmp_path)
  assert 'id="dense-warning"' not in dom and "Nearest features" in dom

  proc = _run_launch(f"--config.model.path={root / 'model'}", f"--sae={root / 'sae'}", f"--out={tmp_path / 'x'}",
                     devices=1)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
      "error: give --scores (ReasonScore results) or --features=1,2,3")


def test_autointerp_prompt(tmp_path):
  from sae_jax.features.autointerp import format_example, label_prompt, parse_label
  data, _ = _fake_dashboard(tmp_path)
  f = data["features"][0]
  assert (format_example(f["top"][0], f["max_activation"])
          == '[10] x[[<script>alert(1)</script>]]<< wait>>\\n[[ "quoted" & more]]')
  messages = label_prompt(f)
  assert [m["role"] for m in messages] == ["system", "user"]
  user = messages[1]["content"]
  assert "Top-activating excerpts:" in user and "<< wait>>" in user and "Density: 50%" in user
  assert parse_label("**Label:** hesitation before checking\nFires on 'wait'.") == (
      "hesitation before checking", "Fires on 'wait'.")


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_observed_features_equal_full_encode(arch):
  """The pass keeps the chosen columns of the folded encode of every latent (TopK's selection needs them all)."""
  rng = np.random.default_rng(3)
  d, n = 8, 12
  params = {"W_enc": rng.normal(size=(d, n)), "b_enc": rng.normal(size=n) * 0.1,
            "W_dec": rng.normal(size=(n, d)) * 2, "b_dec": rng.normal(size=d) * 0.1}
  if arch == "jumprelu":
    params["threshold"] = rng.random(n) * 0.5
  params = {k: np.asarray(v, np.float32) for k, v in params.items()}
  cfg = SAEConfig(d_in=d, d_sae=n, architecture=arch, k=3)
  x = rng.normal(size=(2, 5, d)).astype(np.float32)
  features = [7, 0, 11]
  sae = SAE(params, cfg)
  acc = DashboardAccumulator(sae, features)
  want = np.asarray(sae.folded().encode(x))[..., features]
  np.testing.assert_allclose(np.asarray(acc.observe(np.zeros((2, 5), np.int32), x)), want, rtol=1e-5, atol=1e-6)
  assert (want > 0).any()
  for bad, msg in (([12], "feature 12 is out of range"), ([1, 1], "repeat"), ([], "no features")):
    with pytest.raises(UserError, match=msg):
      DashboardAccumulator(sae, bad)

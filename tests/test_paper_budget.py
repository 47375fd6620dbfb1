"""The paper's run at 1/1000 of its budget, through the project's own stream: it reaches n_steps, and a config whose
data cannot cover n_steps fails before step 0 with the numbers (sae_jax/paper.md, "The SAE": the data path)."""

import json

import datasets
import numpy as np
import pytest

from sae_jax.activations.buffer import ShuffleBuffer, batches_per_epoch
from sae_jax.activations.shards import ShardWriter
from sae_jax.errors import UserError

SCALE = 1000
BOS, EOS = 1, 2  # of a 128-id vocabulary
D = 16


@pytest.fixture(scope="module")
def paper_scaled(assets, tmp_path_factory):
  """The paper config at 1/1000 (rows, steps, norm batches; the SAELens batch, buffer and context kept) on the
  paper's number of rows, scaled, with BOS/EOS in them: as a tokenized source, and as an activation cache of
  width 16 (what collect_activations.py writes: kept tokens only, with the rows) so no model has to run."""
  from configs import paper_r1_llama8b_l19
  root = tmp_path_factory.mktemp("paper_scaled")
  c = paper_r1_llama8b_l19.get_config()
  n_rows, ctx = c.data.num_rows // SCALE, c.data.context_size
  rng = np.random.default_rng(0)
  rows = rng.integers(3, 128, (n_rows + 5, ctx)).astype(np.int32)  # 5 rows more than num_rows keeps
  rows[rng.random(rows.shape) < 0.002] = BOS
  rows[rng.random(rows.shape) < 0.002] = EOS
  datasets.disable_progress_bars()
  datasets.Dataset.from_dict({"tokens": list(rows)}).to_parquet(str(root / "tokens.parquet"))
  used = rows[:n_rows // c.data.store_batch_rows * c.data.store_batch_rows]
  keep = ~np.isin(used, (BOS, EOS))
  table = rng.normal(size=(128, D)).astype(np.float32)
  writer = ShardWriter(str(root / "acts"), 65_536, D, {"layer": 2, "site": "resid_post", "exclude_ids": [BOS, EOS]},
                       rows=used)
  for r in range(len(used)):
    writer.add(table[used[r][keep[r]]], batch_end=r + 1)
  writer.finish()
  c.model.update(path="", dtype="float32")
  c.data.update(sources=(str(root / "tokens.parquet"),), num_rows=n_rows, tokenizer=assets.llama3_tokenizer)
  c.activations.cache_dir = str(root / "acts")
  c.sae.update(d_in=D, d_sae=2 * D, hook_layer=2, exclude_special_tokens=(BOS, EOS), n_steps=c.sae.n_steps // SCALE,
               n_batches_for_norm_estimate=c.sae.n_batches_for_norm_estimate // SCALE,
               lr_decay_steps=c.sae.lr_decay_steps // SCALE, l1_warm_up_steps=c.sae.l1_warm_up_steps // SCALE)
  c.trainer.update(out_dir=str(root / "train"), progress=False, log_every=50, checkpoint_every=1000)
  kept = int(keep.sum())
  assert kept == 65_536 * (kept // 65_536) + kept % 65_536
  return c, used, (kept // 65_536) * 65_536  # the cache drops its partial last shard


def test_paper_run_at_a_thousandth_reaches_n_steps(paper_scaled, capsys):
  from sae_jax import runs
  c, _, cached = paper_scaled
  assert c.activations.loop and c.sae.n_steps == 200 and c.trainer.buffer_half_tokens == 131_072
  per_pass = batches_per_epoch(cached, 131_072, 4096)
  assert per_pass == (cached // 131_072 - 1) * 32 < 201  # one pass is short: the data must start again
  result = runs.train(c)
  assert result["steps"] == 200 and np.isfinite(result["loss"])
  assert result["data"] == {"kept_tokens_per_pass": cached, "batches_per_pass": per_pass, "batches_needed": 201,
                            "passes": round(201 / per_pass, 4), "loop": True}
  captured = capsys.readouterr()
  out, err = captured.out, captured.err
  assert f"data: {cached:,} activations a pass serve {per_pass:,} batches; the run takes 201" in err
  assert "the data ran out: starting epoch 2 from its first row" in out
  logged = [json.loads(line)["step"] for line in open(f"{c.trainer.out_dir}/metrics.jsonl")]
  assert logged[-1] == 200


def test_paper_run_that_one_pass_cannot_cover_fails_before_step_0(paper_scaled, tmp_path):
  """On the fly (the rows of a tokenized source; the model's config.json only, no weights: nothing may load)
  and from the cache."""
  import transformers
  from sae_jax import runs
  c, used, cached = paper_scaled
  c = c.copy_and_resolve_references()
  c.activations.update(loop=False, cache_dir="")
  transformers.LlamaConfig(vocab_size=128, hidden_size=D, intermediate_size=32, num_hidden_layers=4,
                           num_attention_heads=2, num_key_value_heads=2,
                           architectures=["LlamaForCausalLM"]).save_pretrained(str(tmp_path / "model"))
  c.model.path = str(tmp_path / "model")
  c.trainer.out_dir = str(tmp_path / "train")
  kept = int(np.sum(~np.isin(used, (BOS, EOS))))
  with pytest.raises(UserError) as e:
    runs.train(c)
  msg = str(e.value)
  assert f"{len(used):,} rows of 1024 tokens keep {kept:,} activations a pass" in msg
  assert f"which serve {batches_per_epoch(kept, 131_072, 4096):,} batches of 4,096" in msg
  assert "the run takes 201 = sae.n_steps 200 + 1 for the norm estimate" in msg
  assert "set activations.loop=true" in msg
  assert not (tmp_path / "train" / "checkpoints").exists()  # nothing ran
  c.activations.cache_dir = paper_scaled[0].activations.cache_dir
  with pytest.raises(UserError, match=f"the cache .* keep {cached:,} activations a pass"):
    runs.train(c)
  # With steps for one pass, the same data trains without looping.
  c.sae.n_steps = batches_per_epoch(cached, 131_072, 4096) - 1
  assert runs.training_data(c, runs.section(c, "sae"), runs.section(c, "trainer"))[1]["passes"] == 1.0


def _counter(n_chunks, size=16, d=2):
  """Chunk i holds rows (i*size + j); seekable like the real producers."""
  class Producer:
    position = 0

    def seek(self, position):
      self.position = position

    def __call__(self):
      if self.position >= n_chunks:
        return None
      start = self.position * size
      self.position += 1
      return np.repeat(np.arange(start, start + size, dtype=np.float32)[:, None], d, 1), np.ones(size, bool)
  return Producer()


def test_buffer_restarts_the_data_as_saelens():
  """At the data's end the partial half and the stored half are dropped and the data starts again; each pass
  serves exactly `batches_per_epoch` batches, every one of them from that pass."""
  producer = _counter(10)  # 160 rows a pass; half 48: 3 full halves, 1 primes, 2 serve 12 batches of 8
  buf = ShuffleBuffer(producer, half=48, slack=16, d=2, batch_size=8, seed=0, rewind=lambda: producer.seek(0))
  assert batches_per_epoch(160, 48, 8) == 12
  served = [np.asarray(buf.next_batches()) for _ in range(6)]  # 3 passes of 2 refills
  assert buf.epoch == 2 and all(b.shape == (6, 8, 2) for b in served)
  for p in range(3):
    values = np.concatenate([served[2 * p], served[2 * p + 1]]).reshape(-1, 2)[:, 0]
    assert len(set(values)) == 96 and values.max() < 144  # distinct rows of the first 3 halves of this pass
  lone = _counter(3)  # 48 rows: primes, then runs out before serving anything
  buf = ShuffleBuffer(lone, half=48, slack=16, d=2, batch_size=8, seed=0, rewind=lambda: lone.seek(0))
  with pytest.raises(UserError, match="fewer than two buffer halves"):
    buf.next_batches()
  assert ShuffleBuffer(_counter(3), half=48, slack=16, d=2, batch_size=8, seed=0).next_batches() is None

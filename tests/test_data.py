"""sae_jax.data: the reference's exact corpus strings, TL-faithful and clean packing, sources, mixing, demo.

Expected strings are written out from the reference's prepare scripts (sae_jax/paper.md, "Text templates" and
"The extraction set"), not from the code under test; the TL packing is rebuilt here from first principles (join,
20 chunks, padded batch tokenization, drop pads).
"""

import functools
import json
import math
import re

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from sae_jax import data as D
from sae_jax.errors import UserError

LLAMA_BOS, LLAMA_EOS, LLAMA_PAD = 128000, 128001, 128256  # <PAD> is the first id after the 128256 vocab

SYSTEM = ("\nYour role as an assistant involves thoroughly exploring questions through a systematic long thinking "
          "process\nbefore providing the final precise and accurate solutions. This requires engaging in a "
          "comprehensive cycle of\nanalysis, summarizing, exploration, reassessment, reflection, backtracing, and "
          "iteration to develop well-considered\nthinking process.\n")


@pytest.fixture(scope="module")
def llama(assets):
  return AutoTokenizer.from_pretrained(assets.llama3_tokenizer)


@pytest.fixture(scope="module")
def smol(assets):
  return AutoTokenizer.from_pretrained(assets.smollm2_hf)


def _docs(n, seed=0):
  """Documents of varied length with non-ASCII text (so character chunks differ from byte chunks)."""
  rng = np.random.default_rng(seed)
  words = ["alpha", "beta", "gamma", "naïve", "café", "数学", "x=3", "Wait,", "therefore", "\n", "  ", "42"]
  return [" ".join(rng.choice(words, size=int(rng.integers(5, 60)))) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------
# Text builders (sae_jax/paper.md, "Text templates")


def test_lmsys_conversation_text_exact():
  conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
          {"role": "assistant", "content": "4"}]
  assert D.lmsys_conversation_text(conv) == (
    "Be brief.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜>4")
  # The assistant is not last: it gets EOS too; no BOS, no <think>.
  assert D.lmsys_conversation_text(conv[1:4]) == (
    "<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>2+2?")
  with pytest.raises(UserError):
    D.lmsys_conversation_text("not a conversation")


def _row(domain, **kw):
  return {"domain": domain, "problem": "PROBLEM", "deepseek_reasoning": "REASON", "deepseek_solution": "SOLUTION",
          "test_cases": None, "starter_code": None, **kw}


def test_openthoughts_text_exact_per_domain():
  tail = "<｜Assistant｜><think>\nREASON\n</think>\nSOLUTION"
  assert D.openthoughts_text(_row("math")) == (
    SYSTEM + "<｜User｜>Return your final response within \\boxed{}. PROBLEM" + tail)
  for dom in ("puzzle", "biology", "chemistry", "physics"):
    assert D.openthoughts_text(_row(dom)) == SYSTEM + "<｜User｜>PROBLEM" + tail
  stdin = ("Generate an executable Python function generated from the given prompt. The function should take "
           "stdin as input and print the output. Simply call the function after the definition.")
  fn = ("Generate an executable Python function generated from the given prompt. Return the function body "
        "without invoking it at the final solution.")
  assert D.openthoughts_text(_row("code", test_cases=json.dumps({"inputs": ["1"], "outputs": ["2"]}))) == (
    SYSTEM + "<｜User｜>" + stdin + "PROBLEM" + tail)
  assert D.openthoughts_text(_row("code", test_cases=json.dumps({"fn_name": "solve"}),
                                  starter_code="def solve(x):")) == (
    SYSTEM + "<｜User｜>" + fn + "PROBLEM\ndef solve(x):" + tail)
  # The reference tests `starter_code is not None`: an empty starter code still adds "\n".
  assert D.openthoughts_text(_row("code", test_cases="{}", starter_code="")) == (
    SYSTEM + "<｜User｜>" + stdin + "PROBLEM\n" + tail)
  assert D.OPENTHOUGHTS_SYSTEM == SYSTEM
  with pytest.raises(UserError, match="domain"):
    D.openthoughts_text(_row("history"))


def test_openthoughts_corpus_filters_and_shuffles_like_reference():
  doms = ["math", "code", "history", "puzzle", "physics", "art", "math", "biology", "chemistry", "math"]
  rows = [_row(d, problem=f"P{i}", test_cases="{}") for i, d in enumerate(doms)]
  ds = datasets.Dataset.from_list(rows)
  got = D.openthoughts_corpus(ds)
  # The reference recipe, literally: filter, map, shuffle(seed=42).
  ref = ds.filter(lambda r: r["domain"] in D.OPENTHOUGHTS_DOMAINS).map(
    lambda r: {"text": D.openthoughts_text(r)}).shuffle(seed=42)
  assert list(got["problem"]) == list(ref["problem"])
  assert sorted(got["problem"]) == sorted(f"P{i}" for i, d in enumerate(doms) if d not in ("history", "art"))
  assert list(got["text"]) == list(ref["text"])


# ---------------------------------------------------------------------------------------------------------
# Extraction subset (sae_jax/paper.md, "The extraction set")


def test_openthoughts_subset_counts_and_topup_order():
  # 8 math, 3 code, 1 puzzle, 0 biology, 2 chemistry, 4 physics, plus rows of a dropped domain.
  doms = (["math"] * 8 + ["code"] * 3 + ["puzzle"] + ["chemistry"] * 2 + ["physics"] * 4 + ["art"] * 3)
  order = np.random.default_rng(7).permutation(len(doms))  # interleave domains in the file
  rows = [_row(doms[j], problem=f"P{k}", test_cases="{}") for k, j in enumerate(order)]
  ds = datasets.Dataset.from_list(rows)
  sub = D.openthoughts_subset(ds, num_samples=16)  # 16 // 6 = 2 per domain
  kept = ds.filter(lambda r: r["domain"] != "art")  # 18 rows
  expected = []
  for dom in D.OPENTHOUGHTS_DOMAINS:
    shuffled = kept.filter(lambda r: r["domain"] == dom).shuffle(seed=42)
    expected += list(shuffled["problem"])[:min(len(shuffled), 2)]
  got_counts = {d: list(sub["domain"][:9]).count(d) for d in D.OPENTHOUGHTS_DOMAINS}
  assert got_counts == {"code": 2, "math": 2, "puzzle": 1, "biology": 0, "chemistry": 2, "physics": 2}
  assert len(expected) == 9
  # Top-up: the first 7 not-chosen rows in original (filtered) order, unshuffled.
  topup = [p for p in kept["problem"] if p not in expected][:7]
  assert list(sub["problem"]) == expected + topup
  assert len(sub) == 16
  assert sub["text"][0] == D.openthoughts_text(kept.filter(lambda r: r["problem"] == expected[0])[0])
  # Fewer rows than asked for: everything, once.
  assert sorted(D.openthoughts_subset(ds, num_samples=100)["problem"]) == sorted(kept["problem"])


# ---------------------------------------------------------------------------------------------------------
# reference packing: TransformerLens tokenize_and_concatenate, rebuilt here


@functools.lru_cache(maxsize=None)
def _tl_tokenizer(tok_dir):
  """A fresh tokenizer with the reference's pad fix applied by hand."""
  tok = AutoTokenizer.from_pretrained(tok_dir)
  assert tok.pad_token_id == tok.eos_token_id  # so the reference adds <PAD>
  tok.add_special_tokens({"pad_token": "<PAD>"})
  return tok


def _tl_batch_stream(tok_dir, texts):
  """TL's tokenize_function body for one map batch, written independently: join, 20 chunks, pad, unpad."""
  tok = _tl_tokenizer(tok_dir)
  full = "<｜end▁of▁sentence｜>".join(texts)
  size = math.ceil(len(full) / 20)
  chunks = [full[i * size:(i + 1) * size] for i in range(20)]
  ids = tok(chunks, return_tensors="np", padding=True)["input_ids"].reshape(-1)
  return ids[ids != LLAMA_PAD]


def _tl_rows(stream, ctx):
  n = len(stream) // ctx
  return stream[:n * ctx].reshape(n, ctx)


def test_reference_packing_one_batch_matches_first_principles(assets, llama):
  docs, ctx = _docs(130), 64
  stream = _tl_batch_stream(assets.llama3_tokenizer, docs)
  assert np.sum(stream == LLAMA_BOS) == 20  # one BOS per character chunk
  # The chunking is not a no-op: it differs from tokenizing the joined text in one go.
  whole = llama("<｜end▁of▁sentence｜>".join(docs), add_special_tokens=False)["input_ids"]
  assert not np.array_equal(stream[stream != LLAMA_BOS], whole)
  rows = D.pack_rows(docs, llama, ctx, mode="reference", num_proc=1)
  assert rows.dtype == np.int32 and rows.shape == (len(stream) // ctx, ctx)
  np.testing.assert_array_equal(rows, _tl_rows(stream, ctx))
  assert 0 < len(stream) - rows.size < ctx  # remainder dropped
  # The stream helper is the same thing, and the caller's tokenizer was not modified.
  np.testing.assert_array_equal(D.reference_batch_stream(docs, D.reference_tokenizer(llama)), stream)
  assert llama.pad_token_id == LLAMA_EOS and len(llama) == 128256


def test_reference_packing_batches_shards_and_bos(assets, llama):
  docs, ctx, bs = _docs(130, seed=1), 48, 40
  # Batch boundaries: datasets.map(num_proc=3) shards contiguously, then batches inside each shard.
  ds = datasets.Dataset.from_dict({"i": list(range(130))})
  expected_bounds = []
  for r in range(3):
    idx = list(ds.shard(num_shards=3, index=r, contiguous=True)["i"])
    expected_bounds += [(idx[b], idx[min(b + bs, len(idx)) - 1] + 1) for b in range(0, len(idx), bs)]
  assert D.map_batch_bounds(130, bs, 3) == expected_bounds
  assert expected_bounds[:3] == [(0, 40), (40, 44), (44, 84)]
  assert D.map_batch_bounds(5, 1000, 10) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # num_proc -> len

  for num_proc in (1, 3):
    streams = [_tl_batch_stream(assets.llama3_tokenizer, docs[a:b]) for a, b in D.map_batch_bounds(130, bs, num_proc)]
    assert all(np.sum(s == LLAMA_BOS) == 20 for s in streams)  # 20 BOS per map batch
    want = [_tl_rows(s, ctx) for s in streams]
    got = D.pack_rows(docs, llama, ctx, mode="reference", batch_size=bs, num_proc=num_proc)
    np.testing.assert_array_equal(got, np.concatenate(want))
    assert len(got) == sum(len(w) for w in want)
  # A Dataset gives the same rows as the list.
  got_ds = D.pack_rows(datasets.Dataset.from_dict({"text": docs}), llama, ctx, mode="reference", batch_size=bs)
  np.testing.assert_array_equal(got_ds, D.pack_rows(docs, llama, ctx, mode="reference", batch_size=bs))

  # add_bos_token: BOS + (ctx - 1) stream tokens per row.
  stream = _tl_batch_stream(assets.llama3_tokenizer, docs)
  rows = D.pack_rows(docs, llama, ctx, mode="reference", add_bos=True, num_proc=1)
  assert np.all(rows[:, 0] == LLAMA_BOS)
  np.testing.assert_array_equal(rows[:, 1:], _tl_rows(stream, ctx - 1))


def test_reference_short_batch_is_padded_like_tl(llama):
  # 10 characters -> 10 one-character chunks and 10 empty ones: 20 BOS + 10 tokens < 64.
  with pytest.warns(UserWarning, match="padded"):
    rows = D.pack_rows(["a tiny doc"], llama, 64, mode="reference")
  assert rows.shape == (1, 64)
  assert np.sum(rows == LLAMA_BOS) == 20 and np.sum(rows == LLAMA_PAD) == 34
  assert np.all(rows[0, 30:] == LLAMA_PAD)
  with pytest.raises(UserError, match="empty or shorter"):
    D.pack_rows(["a tiny doc"], llama, 64, mode="reference", short_batch="drop")


# ---------------------------------------------------------------------------------------------------------
# clean packing


def _clean_stream(tok, docs):
  out = []
  for i, d in enumerate(docs):
    if i:
      out.append(LLAMA_EOS)
    out += tok.encode(d, add_special_tokens=False)
  return np.array(out)


def test_clean_packing_eos_between_docs_bos_at_row_start(llama):
  docs, ctx = _docs(57, seed=2), 32
  stream = _clean_stream(llama, docs)
  rows = D.pack_rows(docs, llama, ctx)
  n = len(stream) // ctx
  assert rows.shape == (n, ctx) and rows.dtype == np.int32
  np.testing.assert_array_equal(rows.reshape(-1), stream[:n * ctx])  # only the tail is lost
  assert len(stream) - rows.size < ctx
  assert not np.any(rows == LLAMA_BOS)
  assert np.sum(stream == LLAMA_EOS) == len(docs) - 1
  # Small doc batches give the same rows: rows run across batch boundaries.
  np.testing.assert_array_equal(D.pack_rows(docs, llama, ctx, batch_size=5), rows)
  np.testing.assert_array_equal(D.pack_rows(iter(docs), llama, ctx, batch_size=5), rows)

  bos_rows = D.pack_rows(docs, llama, ctx, add_bos=True)
  m = len(stream) // (ctx - 1)
  assert bos_rows.shape == (m, ctx)
  assert np.all(bos_rows[:, 0] == LLAMA_BOS) and not np.any(bos_rows[:, 1:] == LLAMA_BOS)
  np.testing.assert_array_equal(bos_rows[:, 1:].reshape(-1), stream[:m * (ctx - 1)])

  batches = list(D.batch_rows(D.iter_rows(docs, llama, ctx), 4))
  assert len(batches) == n // 4 and all(b.shape == (4, ctx) for b in batches)
  np.testing.assert_array_equal(np.concatenate(batches), rows[:4 * (n // 4)])
  tail = list(D.batch_rows(iter(rows), 4, drop_last=False))
  assert sum(len(b) for b in tail) == n


# ---------------------------------------------------------------------------------------------------------
# Sources, mixing, determinism


def _write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return str(path)


def test_sources_files_dirs_and_builders(tmp_path):
  cache = str(tmp_path / "hf")
  texts = [f"document number {i}" for i in range(12)]
  a = _write_jsonl(tmp_path / "a.jsonl", [{"content": t, "n": i} for i, t in enumerate(texts[:6])])
  _write_jsonl(tmp_path / "b.jsonl", [{"content": t, "n": i} for i, t in enumerate(texts[6:])])
  ds = D.load_text_source(f"{a}#column=content", cache_dir=cache)
  assert ds.column_names == ["text"] and list(ds["text"]) == texts[:6]
  glob_ds = D.load_text_source(D.SourceSpec(path=str(tmp_path / "*.jsonl"), column="content"), cache_dir=cache)
  assert list(glob_ds["text"]) == texts  # files in sorted order
  shuffled = D.load_text_source(f"{tmp_path}/*.jsonl#column=content,shuffle_seed=3,max_docs=5", cache_dir=cache)
  assert len(shuffled) == 5 and list(shuffled["text"]) != texts[:5] and set(shuffled["text"]) < set(texts)

  pq = tmp_path / "pq"
  pq.mkdir()
  datasets.Dataset.from_dict({"text": texts}).to_parquet(str(pq / "part-0.parquet"))
  assert list(D.load_text_source(str(pq / "part-0.parquet"), cache_dir=cache)["text"]) == texts
  assert list(D.load_text_source(str(pq), cache_dir=cache)["text"]) == texts  # a dir of data files

  saved = tmp_path / "saved"
  datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts}),
                        "test": datasets.Dataset.from_dict({"text": texts[:2]})}).save_to_disk(str(saved))
  assert list(D.load_text_source(f"{saved}#split=test")["text"]) == texts[:2]

  convs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(9)]
  lm = _write_jsonl(tmp_path / "lmsys.jsonl", [{"conversation": c, "model": "m"} for c in convs])
  got = D.load_text_source(f"{lm}#builder=lmsys", cache_dir=cache)
  want = datasets.Dataset.from_dict({"text": [f"<｜User｜>q{i}<｜Assistant｜>a{i}" for i in range(9)]})
  assert list(got["text"]) == list(want.shuffle(seed=42)["text"])  # the reference's shuffle(seed=42)
  unshuffled = D.load_text_source(f"{lm}#builder=lmsys,shuffle_seed=none", cache_dir=cache)
  assert list(unshuffled["text"]) == list(want["text"])


def test_sources_bad_input(tmp_path, llama):
  cache = str(tmp_path / "hf")
  a = _write_jsonl(tmp_path / "a.jsonl", [{"content": "x"}])
  with pytest.raises(UserError, match="no column 'text'"):
    D.load_text_source(a, cache_dir=cache)
  with pytest.raises(UserError, match="unknown builder"):
    D.load_text_source(f"{a}#builder=redpajama", cache_dir=cache)
  with pytest.raises(UserError, match="expected key=value"):
    D.parse_source(f"{a}#colum=content")
  with pytest.raises(UserError, match="not a number"):
    D.parse_source(f"{a}#weight=heavy")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(UserError):
    D.load_text_source(str(empty), cache_dir=cache)
  with pytest.raises(UserError, match="no such file"):
    D.load_text_source(str(tmp_path / "missing.jsonl"))
  with pytest.raises(UserError, match="hub"):
    D.load_text_source("lmsys/lmsys-chat-1m#builder=lmsys", cache_dir=cache)
  if not __import__("importlib").util.find_spec("gcsfs"):
    with pytest.raises(UserError, match="gcsfs"):
      D.load_text_source("gs://bucket/corpus/*.parquet")
  with pytest.raises(UserError, match="empty"):
    D.pack_rows([], llama, 16)
  with pytest.raises(UserError, match="empty"):
    D.pack_rows(["", "  "], llama, 16, mode="reference")
  with pytest.raises(UserError, match="mode"):
    D.pack_rows(["hello"], llama, 16, mode="fast")
  with pytest.raises(UserError, match="strings"):
    D.pack_rows([1, 2], llama, 16)


def test_mixing_weights_and_determinism(tmp_path, llama):
  cache = str(tmp_path / "hf")
  rng = np.random.default_rng(0)
  alpha = [" ".join(["alpha"] * int(rng.integers(5, 40))) for _ in range(300)]
  beta = [" ".join(["beta"] * int(rng.integers(5, 40))) for _ in range(300)]
  fa = _write_jsonl(tmp_path / "alpha.jsonl", [{"text": t} for t in alpha])
  fb = _write_jsonl(tmp_path / "beta.jsonl", [{"text": t} for t in beta])
  sources = [f"{fa}#weight=3", f"{fb}#weight=1"]
  rows = D.build_rows(sources, llama, 16, seed=0, cache_dir=cache)
  a_id, b_id = llama.encode(" alpha", add_special_tokens=False)[0], llama.encode(" beta", add_special_tokens=False)[0]
  from_a, from_b = np.any(rows == a_id, axis=1), np.any(rows == b_id, axis=1)
  assert not np.any(from_a & from_b)  # each source is packed on its own
  n_a = len(D.pack_rows(alpha, llama, 16))
  assert from_a.sum() == n_a  # first_exhausted: alpha (3/4 of the draws) runs out first
  assert abs(from_a.mean() - 0.75) < 0.04, from_a.mean()
  again = D.build_rows(sources, llama, 16, seed=0, cache_dir=cache)
  np.testing.assert_array_equal(rows, again)
  other = D.build_rows(sources, llama, 16, seed=1, cache_dir=cache)
  assert not np.array_equal(rows, other) and not np.array_equal(from_a, np.any(other == a_id, axis=1))
  # all_exhausted keeps every row of both.
  every = D.build_rows(sources, llama, 16, seed=0, stop="all_exhausted", cache_dir=cache)
  assert len(every) == n_a + len(D.pack_rows(beta, llama, 16))
  assert len(D.build_rows(sources, llama, 16, num_rows=10, cache_dir=cache)) == 10
  # A doc-level shuffle seed changes the rows; the same seed does not.
  s1 = D.build_rows(f"{fa}#shuffle_seed=1", llama, 16, cache_dir=cache)
  s2 = D.build_rows(f"{fa}#shuffle_seed=2", llama, 16, cache_dir=cache)
  assert not np.array_equal(s1, s2)
  np.testing.assert_array_equal(s1, D.build_rows(f"{fa}#shuffle_seed=1", llama, 16, cache_dir=cache))
  labelled = np.arange(len(rows))[:, None] * np.ones((1, 16), np.int32)
  picked = D.sample_rows(labelled, 50, seed=4)[:, 0]
  assert len(set(picked.tolist())) == 50 and list(picked) != sorted(picked)
  np.testing.assert_array_equal(picked, D.sample_rows(labelled, 50, seed=4)[:, 0])
  with pytest.raises(UserError, match="weight"):
    D.build_rows([f"{fa}#weight=0", fb], llama, 16, cache_dir=cache)


# ---------------------------------------------------------------------------------------------------------
# Demo corpus


def _check_answer(question, answer):
  """Recompute each fallback template's answer from the numbers in its question."""
  nums = [int(x) for x in re.findall(r"\d+", question)]
  if "change" in question:
    a, p, bill = nums
    return answer == bill - a * p
  if "train" in question:
    v, t, w, u = nums
    return answer == v * t + w * u
  if "marbles" in question:
    n, k, m = nums
    return answer == n - k * m
  if "garden" in question:
    return answer == nums[0] * nums[1]
  if "older" in question:
    d, y, s = nums
    b = answer
    return (b + d + y) + (b + y) == s
  if "saves" in question:
    per, weeks, spent = nums
    return answer == per * weeks - spent
  raise AssertionError(question)


def test_demo_problems_fallback_is_deterministic_and_correct():
  probs = D.demo_problems(24, seed=0, use_reasoning_gym=False)
  assert probs == D.demo_problems(24, seed=0, use_reasoning_gym=False)
  assert probs != D.demo_problems(24, seed=1, use_reasoning_gym=False)
  for q, a in probs:
    assert a.startswith("<think>\n") and "\n</think>\n" in a
    for word in D.REASONING_WORDS:
      assert word in a, (word, a)
    assert re.search(r"\nBut ", a) and re.search(r"\nAnother ", a)  # as ReasonScore lists them: no space
    final = int(re.search(r"The answer is (-?\d+)\.$", a).group(1))
    assert _check_answer(q, final), (q, final)
  with pytest.raises(UserError):
    D.demo_problems(0)


def test_demo_corpus_chat_template_and_packing(assets, smol):
  docs = D.demo_corpus(12, tokenizer=assets.smollm2_hf, seed=3)
  assert docs == D.demo_corpus(12, tokenizer=smol, seed=3)
  q, a = D.demo_problems(12, seed=3)[0]
  assert docs[0].startswith("<|im_start|>system\n")
  assert f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>" in docs[0]
  rows = D.pack_rows(docs, smol, 128, add_bos=True)
  assert rows.shape[1] == 128 and len(rows) >= 10
  assert np.all(rows[:, 0] == smol.bos_token_id)
  wait = smol.encode(" Wait", add_special_tokens=False)
  assert len(wait) == 1 and np.sum(rows == wait[0]) >= 10
  demo_ds = D.load_text_source("demo#n=5,seed=3", tokenizer=smol)
  assert list(demo_ds["text"]) == docs[:5]


def test_demo_uses_reasoning_gym_when_asked(monkeypatch, smol):
  """A stand-in reasoning_gym module checks that its problems and answers are used when asked, and only then."""
  import importlib.machinery
  import sys
  import types

  fake = types.ModuleType("reasoning_gym")
  fake.__spec__ = importlib.machinery.ModuleSpec("reasoning_gym", None)

  def create_dataset(name, size, seed):
    if name != "chain_sum":
      raise ValueError(f"unknown task {name}")
    return [{"question": f"{i} + {seed} =", "answer": str(i + seed), "metadata": {}} for i in range(size)]

  fake.create_dataset = create_dataset
  monkeypatch.setitem(sys.modules, "reasoning_gym", fake)
  probs = D.demo_problems(4, seed=7, use_reasoning_gym=True)
  assert [q for q, _ in probs] == ["0 + 7 =", "1 + 7 =", "2 + 7 =", "3 + 7 ="]
  for q, a in probs:
    assert a.startswith("<think>\n") and a.endswith(f"</think>\nThe answer is {int(q.split()[0]) + 7}.")
    assert all(word in a for word in D.REASONING_WORDS)
  assert D.demo_problems(4, seed=7, use_reasoning_gym=False)[0][0].endswith("?")  # the fallback on request
  assert D.demo_problems(4, seed=7)[0][0].endswith("?")  # and by default: installed packages change nothing
  doc = D.demo_corpus(1, tokenizer=smol, seed=7, use_reasoning_gym=True)[0]
  assert "<|im_start|>user\n0 + 7 =<|im_end|>" in doc


def test_extraction_rows_shuffle_like_datasets_and_config_path(assets, smol):
  """`datasets.Dataset.shuffle(seed)` is `np.random.default_rng(seed).permutation(n)`; the reference then takes
  the first rows. A collection config with data.shuffle_seed gives the same rows."""
  from configs import demo_smollm2
  from sae_jax.runs import token_rows
  from sae_jax.data.packing import extraction_rows
  plain = D.build_rows(["demo#n=10"], smol, context_size=64, mode="clean")
  assert len(plain) > 12
  got = extraction_rows(["demo#n=10"], smol, 64, "clean", n_rows=12, shuffle_seed=42)
  np.testing.assert_array_equal(got, plain[np.random.default_rng(42).permutation(len(plain))[:12]])
  np.testing.assert_array_equal(extraction_rows(["demo#n=10"], smol, 64, "clean", n_rows=5, shuffle_seed=-1),
                                plain[:5])
  c = demo_smollm2.get_config()
  c.model.path = assets.smollm2_hf
  c.data.update(sources=("demo#n=10",), context_size=64, num_rows=12, shuffle_seed=42)
  np.testing.assert_array_equal(token_rows(c), got)
  c.data.sources = ("demo#n=10", "demo#n=3")
  with pytest.raises(UserError, match="takes one source"):
    token_rows(c)


# ---------------------------------------------------------------------------------------------------------
# The real TransformerLens, and tokenized sources (sae_jax/paper.md, "Packing")

_TL_SCRIPT = r"""
import json, os, sys
import numpy as np, datasets, transformer_lens
from importlib.metadata import version
from transformers import AutoTokenizer
from transformer_lens.utils import tokenize_and_concatenate
datasets.disable_progress_bars()
tok_dir, docs_file, ctx, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
assert version("transformer-lens") == "2.17.0", (
    f"the peer venv has transformer-lens {version('transformer-lens')}, not 2.17.0: run bash launch/bench_env.sh")
docs = json.load(open(docs_file))
tok = AutoTokenizer.from_pretrained(tok_dir)
if tok.pad_token_id == tok.eos_token_id:  # as the reference's scripts do before packing
  tok.add_special_tokens({"pad_token": "<PAD>"})
for n in (1, 4):
  ds = tokenize_and_concatenate(datasets.Dataset.from_dict({"text": docs}), tok, max_length=ctx,
                                add_bos_token=False, num_proc=n)
  np.save(os.path.join(out, f"tl_{n}.npy"), np.asarray(ds["tokens"]))
ds.to_parquet(os.path.join(out, "tokenized.parquet"))  # the num_proc=4 rows, as a released `tokens` dataset
np.save(os.path.join(out, "tl_4_shuffled.npy"), np.asarray(ds.shuffle(seed=42)["tokens"]))  # compute_score.py
"""


@pytest.fixture(scope="module")
def tl_packed(assets, bench_python, tmp_path_factory):
  """TransformerLens 2.17.0's own `tokenize_and_concatenate` (the reference fork's chunking: 2.18 moves the
  20 cuts to whitespace) on 2,503 short documents with num_proc 1 and 4, in one subprocess of the peer venv."""
  import os
  import subprocess
  out = tmp_path_factory.mktemp("tl")
  docs = _docs(2503, seed=3)
  (out / "docs.json").write_text(json.dumps(docs))
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env.update(HF_DATASETS_CACHE=str(out / "cache"), TOKENIZERS_PARALLELISM="false")
  proc = subprocess.run([bench_python, "-c", _TL_SCRIPT, assets.llama3_tokenizer, str(out / "docs.json"), "128",
                         str(out)], capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return docs, out


@pytest.fixture(scope="module")
def llama_pad(llama):
  return D.reference_tokenizer(llama)  # with <PAD> already, packing copies no tokenizer


@pytest.mark.parametrize("num_proc", [1, 4])
def test_reference_packing_equals_transformer_lens(tl_packed, llama_pad, num_proc):
  docs, out = tl_packed
  want = np.load(out / f"tl_{num_proc}.npy")
  got = D.pack_rows(docs, llama_pad, 128, mode="reference", num_proc=num_proc)
  assert got.shape == want.shape
  np.testing.assert_array_equal(got, want)
  # 2,503 docs: one process batches 1000/1000/503, four restart at each 626-doc shard, so the rows differ.
  other = np.load(out / f"tl_{5 - num_proc}.npy")
  assert other.shape != want.shape or not np.array_equal(other, want)


def test_tokenized_source_rows_as_released(tl_packed, llama, tmp_path):
  """A `tokens` column (TL's output saved as parquet, as the released training set is) is read row for row:
  cut to context_size, mixed with text sources, shuffled for extraction as compute_score.py does."""
  from sae_jax.data.corpus import CorpusConfig
  _, out = tl_packed
  want = np.load(out / "tl_4.npy")
  path = str(out / "tokenized.parquet")
  np.testing.assert_array_equal(CorpusConfig(sources=(path,), context_size=128, num_rows=0).rows(llama), want)
  np.testing.assert_array_equal(CorpusConfig(sources=(path,), context_size=100, num_rows=7).rows(llama),
                                want[:7, :100])
  shuffled = CorpusConfig(sources=(path,), context_size=128, num_rows=50, shuffle_seed=42).rows(llama)
  np.testing.assert_array_equal(shuffled, np.load(out / "tl_4_shuffled.npy")[:50])
  # A save_to_disk dir with `input_ids` (SAELens' other name) and a text source, mixed.
  datasets.Dataset.from_dict({"input_ids": want[:40].tolist()}).save_to_disk(str(tmp_path / "ids"))
  mixed = CorpusConfig(sources=(str(tmp_path / "ids"), f"{tmp_path / 'ids'}#column=input_ids,weight=1"),
                       context_size=128, num_rows=20).rows(llama)
  assert mixed.shape == (20, 128) and all(any(np.array_equal(r, w) for w in want[:40]) for r in mixed)
  with pytest.raises(UserError, match="fewer than data.context_size=129"):
    CorpusConfig(sources=(path,), context_size=129, num_rows=3).rows(llama)
  with pytest.raises(UserError, match="tokenized source"):
    CorpusConfig(sources=(path,), context_size=128, add_bos=True).rows(llama)

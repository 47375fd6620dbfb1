"""Chat rendering against DeepSeek-R1-Distill-Llama-8B's own template text, and prompt token ids."""

import copy

import pytest
import transformers

from sae_jax.errors import UserError
from sae_jax.evals import chat

# tokenizer_config.json "chat_template" of deepseek-ai/DeepSeek-R1-Distill-Llama-8B (current revision).
R1_DISTILL_TEMPLATE = (
  "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
  "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
  "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}"
  "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
  "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
  "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
  "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜>"
  "<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + "
  "tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}"
  "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + "
  "'```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
  "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
  "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
  "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
  "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
  "{% set content = content.split('</think>')[-1] %}{% endif %}"
  "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
  "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
  "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
  "{%- set ns.is_output_first = false %}{%- else %}{{'\\n<｜tool▁output▁begin｜>' + message['content'] + "
  "'<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}"
  "{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
# The first release ended the generation prompt at the assistant tag.
R1_DISTILL_TEMPLATE_JAN = R1_DISTILL_TEMPLATE.replace("{{'<｜Assistant｜><think>\\n'}}", "{{'<｜Assistant｜>'}}")

PROMPT = "Please reason step by step, and put your final answer within \\boxed{}.\nProblem: 1+1?\nAnswer:"


@pytest.fixture(scope="module")
def r1_tok(assets):
  return transformers.AutoTokenizer.from_pretrained(assets.llama3_tokenizer)


def _with_template(tok, template):
  tok = copy.deepcopy(tok)
  tok.chat_template = template
  return tok


def test_r1_templates_equal_deepseeks_template_text(r1_tok):
  real = _with_template(r1_tok, R1_DISTILL_TEMPLATE)
  jan = _with_template(r1_tok, R1_DISTILL_TEMPLATE_JAN)
  assert chat.render(PROMPT, "r1_think") == chat.render(PROMPT, "tokenizer", real)
  assert chat.render(PROMPT, "r1") == chat.render(PROMPT, "tokenizer", jan)
  assert chat.render(PROMPT, "r1_think") == "<｜begin▁of▁sentence｜><｜User｜>" + PROMPT + "<｜Assistant｜><think>\n"
  assert chat.render(PROMPT, "tokenizer", r1_tok) == chat.render(PROMPT, "r1_think")  # the asset's own template


def test_prompt_ids_have_one_bos_and_the_r1_tags(r1_tok):
  ids = chat.encode("1+1?", "r1_think", r1_tok)
  # BOS, <｜User｜>, "1", "+", "1", "?", <｜Assistant｜>, <think>, "\n" (Llama-3 ids; 16 = "1", 10 = "+", 30 = "?")
  assert ids == [128000, 128011, 16, 10, 16, 30, 128012, 128013, 198]
  assert chat.encode("1+1?", "r1", r1_tok) == ids[:-2]
  assert chat.think_end_id(r1_tok) == 128014
  assert chat.default_stop(r1_tok) == ("Problem:", "<｜end▁of▁sentence｜>")


def test_smollm2_own_template_and_stops(assets):
  tok = transformers.AutoTokenizer.from_pretrained(assets.smollm2_hf)
  text = chat.render("hi", "tokenizer", tok)
  assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
  assert chat.think_end_id(tok) is None  # no </think> token: reasoning length = all tokens
  assert chat.default_stop(tok) == ("Problem:", "<｜end▁of▁sentence｜>", "<|im_end|>")


def test_bad_template_and_stop():
  with pytest.raises(UserError, match="unknown chat template"):
    chat.render("x", "chatml")
  with pytest.raises(UserError, match="non-empty"):
    chat.check_stop(["Problem:", ""])

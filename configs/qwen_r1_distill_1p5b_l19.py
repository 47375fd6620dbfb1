"""The paper's recipe on DeepSeek-R1-Distill-Qwen-1.5B (28 layers, d_model 1536); layer 19 of 28 as in the 8B."""

from configs import paper_r1_llama8b_l19 as paper


def get_config():
  c = paper.get_config()
  c.model.path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
  c.sae.d_in, c.sae.d_sae = 1536, 1536 * 16
  c.sae.model_name = c.model.path
  # Qwen2.5 tokenizer with the distill's special tokens: BOS 151646, EOS 151643.
  c.sae.exclude_special_tokens = (151646, 151643)
  c.trainer.out_dir = "runs/qwen_r1_1p5b_l19"
  return c

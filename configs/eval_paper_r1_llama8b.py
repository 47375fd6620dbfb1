"""The paper's steering evaluation: R1-Distill-Llama-8B steered by feature 46379 of its layer-19 SAE (strength
2.0 x max activation 5.840, the reference's intervention) against the unsteered model, on AIME 2024, MATH-500
and GPQA Diamond with the paper's sampling (T 0.6, top-p 0.95, 32,768 new tokens, one sample per problem).

  python launch/evaluate.py --config.model.path=runs/r1_llama8b --sae=SAE_DIR --out=runs/eval_paper

The reference's hook sat on vLLM's decoder layer, whose first output is the MLP output, so it encoded the
layer's MLP output and added the edit to the stream: `--config.steering.site=mlp_out` reproduces that; the
default encodes resid_post, the site the SAE was trained on.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model.path = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
  c.sampling.template = "r1_think"  # the distill's current template, which ends the prompt with "<think>\n"
  c.steering.update(features=(46379,), strengths=(2.0,), max_activations=(5.840,), method="intervention",
                    site="resid_post", units="raw")
  return c

"""The paper's steering evaluation: R1-Distill-Llama-8B, feature 46379 of the layer-19 SAE, strength 2.0, max
activation 5.840, against the unsteered baseline on AIME 2024, MATH-500 and GPQA Diamond (T 0.6, top-p 0.95,
32,768 new tokens, one sample per problem).

  python launch/evaluate.py --config=configs/eval_paper_r1_llama8b.py --config.model.path=runs/r1_llama8b \
      --config.steering.sae=SAE_DIR --out=runs/eval_paper

Defaults live in the dataclasses (`sae_jax.evals.runner.EvalConfig`, `sae_jax.features.steer_eval`); this file
sets what the paper's run changes. The reference steered by encoding the layer's MLP output (its hook sat on
vLLM's decoder layer, whose first output is the MLP output): `--config.steering.site=mlp_out` reproduces that.
"""

import dataclasses

import ml_collections

from sae_jax.evals.runner import EvalConfig
from sae_jax.features.steer_eval import EngineOptions, SteeringOptions


def base_config():
  """Every key of the evaluation with its library default (so --config.a.b=v can override any of them)."""
  c = ml_collections.ConfigDict()
  c.model = dict(path="deepseek-ai/DeepSeek-R1-Distill-Llama-8B", dtype="bfloat16", tokenizer="")
  c.mesh = dict(data=-1, fsdp=1, model=1)
  c.tasks = dict(names=("aime24", "math500", "gpqa_diamond"), sources=(), limit=0, gpqa_shuffle_seed=0)
  ev = dataclasses.asdict(EvalConfig())
  ev["stop"] = ()  # empty: "Problem:" and the tokenizer's EOS text
  c.eval = ev
  c.engine = dataclasses.asdict(EngineOptions())
  c.steering = dataclasses.asdict(SteeringOptions())
  return c


def get_config():
  c = base_config()
  c.eval.template = "r1_think"
  c.steering.update(sae="andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts/blocks.19.hook_resid_post",
                    features=(46379,), strengths=(2.0,), max_activations=(5.840,), method="intervention",
                    site="resid_post", units="raw")
  return c

"""The torch side of `bench.py sae`: real SAELens 5.5.2 train steps, run in the bench virtualenv.

SAELens 5.5.2 pins transformers < 5 and transformer-lens 2, which our venv cannot hold, so `bench/sae.py`
starts this file under `.venv-bench/bin/python` (`launch/bench_env.sh`) and drives it one step at a time over
a pipe: stdin gets one JSON request per line, the original stdout gets one JSON reply per line (everything the
libraries print goes to stderr). A step is `SAETrainer._train_step`, SAELens' own: `TrainingSAE`'s training
forward (with its noise draw), backward, clip_grad_norm_(1.0), Adam, its decoder-norm handling and the
firing-statistics bookkeeping, timed here so the pipe's latency is not counted.

Requests: {"cmd": "setup", ...} (see `setup`), {"cmd": "step", "i": i}, {"cmd": "quit"}.
Only the standard library, numpy, torch and sae_lens are imported: nothing from sae_jax.
"""

import json
import os
import sys
import time

import numpy as np


def setup(req: dict) -> dict:
  """Builds a TrainingSAE and SAETrainer as SAELens' runner does, from `req["config"]`, with our params."""
  import torch

  import sae_lens
  from sae_lens.config import LanguageModelSAERunnerConfig
  from sae_lens.training.sae_trainer import SAETrainer
  from sae_lens.training.training_sae import TrainingSAE, TrainingSAEConfig

  torch.set_num_threads(req["threads"])
  torch.manual_seed(req["seed"])
  c = req["config"]
  kwargs = dict(
      architecture=c["architecture"], d_in=c["d_in"], d_sae=c["d_sae"], device="cpu", dtype="float32",
      train_batch_size_tokens=c["batch_size"], training_tokens=c["n_steps"] * c["batch_size"],
      lr=c["lr"], lr_warm_up_steps=c["lr_warm_up_steps"], lr_decay_steps=c["lr_decay_steps"],
      adam_beta1=c["adam_beta1"], adam_beta2=c["adam_beta2"], l1_coefficient=c["l1_coefficient"],
      l1_warm_up_steps=c["l1_warm_up_steps"], apply_b_dec_to_input=c["apply_b_dec_to_input"],
      normalize_sae_decoder=c["normalize_decoder"], dead_feature_window=c["dead_steps_threshold"],
      b_dec_init_method="zeros", log_to_wandb=False, verbose=False,
      wandb_id="bench")  # else __post_init__ calls wandb.util.generate_id, gone from the pinned wandb 0.31
  if c["architecture"] == "topk":
    kwargs["activation_fn_kwargs"] = {"k": c["k"]}
  else:  # the paper's standard SAE (Anthropic's April update): free decoder norms, norm-weighted L1
    kwargs.update(scale_sparsity_penalty_by_decoder_norm=True, decoder_heuristic_init=True,
                  init_encoder_as_decoder_transpose=True)
  cfg = LanguageModelSAERunnerConfig(**kwargs)
  sae = TrainingSAE(TrainingSAEConfig.from_sae_runner_config(cfg))
  params = np.load(req["params"])
  with torch.no_grad():
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
      getattr(sae, name).copy_(torch.from_numpy(params[name]))
  trainer = SAETrainer(model=None, sae=sae, activation_store=None, save_checkpoint_fn=None, cfg=cfg)
  batches = np.load(req["batches"])
  state["batches"] = [torch.from_numpy(batches[k]) for k in sorted(batches.files)]
  state["trainer"] = trainer
  return {"sae_lens": sae_lens.__version__, "torch": torch.__version__, "torch_num_threads": torch.get_num_threads(),
          "noise_scale": cfg.noise_scale, "normalize_sae_decoder": cfg.normalize_sae_decoder}


def step(req: dict) -> dict:
  """One real SAELens train step on batch i (cycled), as `SAETrainer.fit`'s loop body runs it."""
  trainer, batches = state["trainer"], state["batches"]
  x = batches[req["i"] % len(batches)]
  start = time.perf_counter()
  out = trainer._train_step(sae=trainer.sae, sae_in=x)
  loss = float(out.loss.detach())  # a CPU tensor: the step is done by now
  seconds = time.perf_counter() - start
  trainer.n_training_steps += 1
  trainer.n_training_tokens += trainer.cfg.train_batch_size_tokens
  return {"seconds": seconds, "loss": loss}


state: dict = {}


def main() -> None:
  replies = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # library prints go to stderr; stdout is the protocol's
  for line in sys.stdin:
    req = json.loads(line)
    try:
      if req["cmd"] == "quit":
        break
      reply = {"setup": setup, "step": step}[req["cmd"]](req)
      reply["ok"] = True
    except Exception as e:  # the parent shows it and stops
      reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
  main()

"""The peers' side of tests/test_sae_peers.py, run once per peer virtualenv: SAELens 5.5.2 (.venv-bench), or
SAELens 6 and sparsify (.venv-compat). Only the standard library, numpy, torch and the peers: nothing from sae_jax.

  python sae_peer_worker.py REQUEST.json

The request names the tokens x (.npy), our SAE dirs (arch -> dir, written by save_saelens / save_sparsify) and an
output dir. Both directions in one process (each peer import costs seconds):
  * ours: each of our dirs loaded by the peer (SAELens: as `SAE` and as `TrainingSAE`; sparsify: `SparseCoder`),
    its features of x and its decode of them;
  * theirs: SAEs the peer builds with random weights (decoder rows of random norms, biases and thresholds so that
    some latents fire and some do not), saved with the peer's own save functions, and their features / decode.
Every case is one .npz in the output dir (feats, recon); `manifest.json` lists them with their dirs and facts.
"""

import json
import os
import sys

import numpy as np
import torch

D_SCALE = 0.37  # the norm scaling factor of the mid-training checkpoints written below


def _perturb(sae, seed: int, thresholds: bool = False):
  """Random weights with structure: decoder rows of norms in [0.5, 2], small biases, thresholds in [0, 0.6)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in sae.named_parameters():
      p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * (0.2 if p.ndim == 1 else 1.0))
    w_dec = sae.W_dec if hasattr(sae, "W_dec") else None
    if w_dec is not None:
      norms = 0.5 + 1.5 * torch.rand(w_dec.shape[0], generator=g)
      w_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True) * norms[:, None])
    if thresholds:
      sae.threshold.copy_(0.6 * torch.rand(sae.threshold.shape, generator=g))


def _record(out_dir, name, feats, recon, manifest, **facts):
  np.savez(os.path.join(out_dir, f"{name}.npz"), feats=np.asarray(feats, np.float32),
           recon=np.asarray(recon, np.float32))
  manifest[name] = facts


@torch.no_grad()
def _encode_decode(sae, x, scale: float = 1.0):
  """Features of the raw tokens x and their decode in raw units (a scaled SAE sees scale * x, as in training)."""
  f = sae.encode(torch.from_numpy(x) * scale)
  return f.numpy(), (sae.decode(f) / scale).numpy()


def saelens5(req, x, out_dir, manifest):
  import sae_lens
  from sae_lens import SAE
  from safetensors.torch import save_file
  from sae_lens.training.training_sae import TrainingSAE, TrainingSAEConfig
  assert sae_lens.__version__ == "5.5.2", sae_lens.__version__

  for arch, path in req["ours"].items():
    if arch == "sparsify":
      continue
    f, r = _encode_decode(SAE.load_from_pretrained(path, device="cpu"), x)
    _record(out_dir, f"ours_{arch}_saelens5", f, r, manifest, ours=arch)
    f, r = _encode_decode(TrainingSAE.load_from_pretrained(path, device="cpu"), x)  # to fine-tune it there
    _record(out_dir, f"ours_{arch}_saelens5_training", f, r, manifest, ours=arch)

  d_in, d_sae, k = req["d_in"], req["d_sae"], req["k"]
  base = dict(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu", model_name="tiny", hook_layer=3,
              hook_name="blocks.3.hook_resid_post", hook_head_index=None, activation_fn_kwargs={},
              apply_b_dec_to_input=True, finetuning_scaling_factor=False, sae_lens_training_version="5.5.2",
              context_size=64, dataset_path="", dataset_trust_remote_code=True, normalize_activations="none",
              prepend_bos=True, seqpos_slice=(None,), model_from_pretrained_kwargs={}, l1_coefficient=5.0,
              lp_norm=1.0, use_ghost_grads=False, normalize_sae_decoder=False, noise_scale=0.0,
              decoder_orthogonal_init=False, mse_loss_normalization=None, decoder_heuristic_init=False,
              init_encoder_as_decoder_transpose=True, scale_sparsity_penalty_by_decoder_norm=True,
              jumprelu_init_threshold=0.001, jumprelu_bandwidth=0.001, architecture="standard",
              activation_fn_str="relu")
  cases = {"standard": {}, "topk": dict(architecture="topk", activation_fn_str="topk", activation_fn_kwargs={"k": k}),
           "jumprelu": dict(architecture="jumprelu", apply_b_dec_to_input=False)}
  for i, (arch, change) in enumerate(cases.items()):
    sae = TrainingSAE(TrainingSAEConfig.from_dict({**base, **change}))
    _perturb(sae, 100 + i)
    if arch == "jumprelu":
      with torch.no_grad():
        sae.log_threshold.copy_(torch.log(0.05 + 0.5 * torch.rand(d_sae, generator=torch.Generator().manual_seed(7))))
    path = os.path.join(out_dir, f"saelens5_{arch}")
    sae.save_model(path)
    f, r = _encode_decode(sae, x)
    _record(out_dir, f"theirs_saelens5_{arch}", f, r, manifest, dir=path, arch=arch, units="raw")

  # As SAETrainingRunner leaves them for the paper's config (normalize_activations expected_average_only_in):
  # a mid-training checkpoint holds unfolded weights and the factor in the activations store's state; the final
  # one holds folded weights, and the runner's cfg.json still says expected_average_only_in (the release format).
  sae = TrainingSAE(TrainingSAEConfig.from_dict({**base, "normalize_activations": "expected_average_only_in"}))
  _perturb(sae, 110)
  path = os.path.join(out_dir, "saelens5_checkpoint")
  sae.save_model(path)
  save_file({"n_dataset_processed": torch.tensor(3), "estimated_norm_scaling_factor": torch.tensor(D_SCALE)},
            os.path.join(path, "activations_store_state.safetensors"))
  f, r = _encode_decode(sae, x, D_SCALE)
  _record(out_dir, "theirs_saelens5_checkpoint", f, r, manifest, dir=path, arch="standard", units="scaled",
          scale=D_SCALE)
  sae.fold_activation_norm_scaling_factor(D_SCALE)
  path = os.path.join(out_dir, "saelens5_release")
  sae.save_model(path)
  with open(os.path.join(path, "cfg.json")) as fh:
    cfg = json.load(fh)
  with open(os.path.join(path, "cfg.json"), "w") as fh:
    json.dump({**cfg, "normalize_activations": "expected_average_only_in"}, fh)
  f, r = _encode_decode(sae, x)
  _record(out_dir, "theirs_saelens5_release", f, r, manifest, dir=path, arch="standard", units="raw")


def saelens6(req, x, out_dir, manifest):
  import sae_lens
  from sae_lens import SAE, TrainingSAE
  from sae_lens.saes import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUTrainingSAE,
                             JumpReLUTrainingSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig,
                             TopKTrainingSAE, TopKTrainingSAEConfig)
  from sae_lens.saes.sae import SAEMetadata
  from sae_lens.training.activation_scaler import ActivationScaler
  assert sae_lens.__version__ == "6.54.12", sae_lens.__version__

  for arch, path in req["ours"].items():
    if arch == "sparsify":
      continue
    f, r = _encode_decode(SAE.load_from_disk(path), x)
    _record(out_dir, f"ours_{arch}_saelens6", f, r, manifest, ours=arch)
    if arch != "batchtopk":  # saved as the JumpReLU SAE it is at inference
      f, r = _encode_decode(TrainingSAE.load_from_disk(path), x)
      _record(out_dir, f"ours_{arch}_saelens6_training", f, r, manifest, ours=arch)

  d_in, d_sae, k = req["d_in"], req["d_sae"], req["k"]

  def meta():
    return SAEMetadata(model_name="tiny", hook_name="blocks.3.hook_resid_post", context_size=64, prepend_bos=True)

  cases = {
      "standard": (StandardTrainingSAE, StandardTrainingSAEConfig, {}),
      "topk": (TopKTrainingSAE, TopKTrainingSAEConfig, {"k": k, "rescale_acts_by_decoder_norm": False}),
      "topk_rescaled": (TopKTrainingSAE, TopKTrainingSAEConfig, {"k": k}),  # SAELens 6's default: rescale
      "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, {"apply_b_dec_to_input": False}),
      "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, {"k": k}),
  }
  for i, (name, (cls, cfg_cls, kw)) in enumerate(cases.items()):
    sae = cls(cfg_cls(d_in=d_in, d_sae=d_sae, metadata=meta(), **kw))
    _perturb(sae, 200 + i, thresholds=name == "jumprelu")
    if name == "batchtopk":
      sae.topk_threshold = torch.tensor(0.9, dtype=torch.double)
    arch = name.split("_")[0]
    train_dir, infer_dir = os.path.join(out_dir, f"saelens6_{name}_training"), os.path.join(out_dir, f"saelens6_{name}")
    sae.save_model(train_dir)
    sae.save_inference_model(infer_dir)
    inference = SAE.load_from_disk(infer_dir)  # what SAELens itself computes at inference
    f, r = _encode_decode(inference, x)
    units = "folded" if name in ("topk_rescaled", "batchtopk") else "raw"
    if arch == "batchtopk":  # exported as the JumpReLU SAE it is at inference, its weights folded
      _record(out_dir, f"theirs_saelens6_{name}", f, r, manifest, dir=infer_dir, arch="jumprelu", units="raw")
    else:
      _record(out_dir, f"theirs_saelens6_{name}", f, r, manifest, dir=infer_dir, arch=arch, units=units)
    _record(out_dir, f"theirs_saelens6_{name}_training", f, r, manifest, dir=train_dir, arch=arch, units=units)

  # A mid-training checkpoint (SAETrainer.save_checkpoint): unfolded weights, the factor in activation_scaler.json.
  sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta(),
                                                      normalize_activations="expected_average_only_in"))
  _perturb(sae, 210)
  path = os.path.join(out_dir, "saelens6_checkpoint")
  sae.save_model(path)
  ActivationScaler(scaling_factor=D_SCALE).save(os.path.join(path, "activation_scaler.json"))
  f, r = _encode_decode(sae, x, D_SCALE)
  _record(out_dir, "theirs_saelens6_checkpoint", f, r, manifest, dir=path, arch="standard", units="scaled",
          scale=D_SCALE)


def sparsify(req, x, out_dir, manifest):
  from importlib.metadata import version

  from sparsify import SparseCoder, SparseCoderConfig
  assert version("eai-sparsify") == "1.3.3", version("eai-sparsify")

  def run(sae):
    with torch.no_grad():
      out = sae.encode(torch.from_numpy(x))
      f = torch.zeros(x.shape[0], sae.num_latents).scatter_(1, out.top_indices, out.top_acts)
      return f.numpy(), sae.decode(out.top_acts, out.top_indices).numpy()

  if "sparsify" in req["ours"]:
    _record(out_dir, "ours_sparsify", *run(SparseCoder.load_from_disk(req["ours"]["sparsify"])), manifest,
            ours="sparsify")
  sae = SparseCoder(req["d_in"], SparseCoderConfig(num_latents=req["d_sae"], k=req["k"]))
  _perturb(sae, 300)
  sae.set_decoder_norm_to_unit_norm()  # as sparsify keeps it while training
  path = os.path.join(out_dir, "layers.3")
  sae.save_to_disk(path)
  _record(out_dir, "theirs_sparsify", *run(sae), manifest, dir=path, arch="topk", units="raw")


def main(request_path: str):
  with open(request_path) as f:
    req = json.load(f)
  torch.set_num_threads(1)
  x = np.load(req["x"]).astype(np.float32)
  out_dir = req["out"]
  os.makedirs(out_dir, exist_ok=True)
  manifest = {}
  for peer in req["peers"]:
    {"saelens5": saelens5, "saelens6": saelens6, "sparsify": sparsify}[peer](req, x, out_dir, manifest)
  with open(os.path.join(out_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])

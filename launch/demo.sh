#!/usr/bin/env bash
# The pipeline on the embedded default (SmolLM2-135M-Instruct from a PyPI wheel), end to end on a CPU.
# Stages: convert (GGUF -> Orbax), chat (greedy answer), parity vs HF transformers (torch), collect
# activations (cached shards), train a standard SAE (SAELens semantics) and export it in SAELens format,
# ReasonScore of every feature in one pass, static HTML dashboards of the top features, and a TPU plan: the
# paper's run AOT-compiled for a Cloud TPU topology (libtpu; no TPU needed) to check it fits, and the steering
# evaluation: baseline vs the top ReasonScore feature steered, on offline arithmetic problems; last, ReasonScore
# again as a 2-process pod on this machine (the multi-host path), compared with the one-process scores.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
OUT="${DEMO_OUT:-runs/demo}"
mkdir -p "$OUT"
ASSETS_JSON="$(.venv/bin/python -m sae_jax.assets --cache_dir "$SAE_JAX_ASSETS")"
asset() { .venv/bin/python -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$ASSETS_JSON"; }
GGUF="$(asset smollm2_gguf)"
HF_DIR="$(asset smollm2_hf)"
PY=.venv/bin/python
start=$(date +%s)
# Written to a file (not a terminal), the log keeps the stage lines and the report only: each stage's warnings and
# progress bars go to $OUT/<stage>.err, printed only if the stage fails.
if [ -t 1 ]; then TERMINAL=1; else TERMINAL=0; fi
quiet() {
  local name="$1"; shift
  if [ "$TERMINAL" = 1 ]; then "$@"; return; fi
  "$@" 2> "$OUT/$name.err" || { local rc=$?; echo "error: stage $name failed (exit $rc); the end of $OUT/$name.err:" >&2
                                 tail -n 20 "$OUT/$name.err" >&2; exit "$rc"; }
}
# Problems the SAE never trains on (seed 7; it trains on seed 0's): the held-out explained variance, ReasonScore
# and the dashboards read them.
HELD_OUT_SOURCES="('demo#n=150,seed=7',)"
# 320 of their rows keep stages 6, 7 and 10 short.
HELD_OUT_ROWS=320

echo "== [1/10] convert: $GGUF -> $OUT/model"
quiet convert $PY launch/convert.py --model="$GGUF" --out="$OUT/model" --dtype=float32 --verbosity=-1 \
  | tee "$OUT/convert.log"

echo "== [2/10] chat: greedy answer from the converted checkpoint (bf16)"
quiet chat $PY launch/chat.py --model="$OUT/model" --dtype=bfloat16 --max_new_tokens=48 --verbosity=-1 \
  --prompt="What is the capital of France? Answer in one sentence." | tee "$OUT/chat.log"

echo "== [3/10] parity: our model vs HF transformers (torch), float32"
quiet parity $PY launch/compare_reference.py --model="$OUT/model" --reference="$HF_DIR" --dtype=float32 --layer=19 --verbosity=-1 \
  --out="$OUT/parity.json" > /dev/null

echo "== [4/10] collect: resid_post of layer 19 on the offline demo corpus -> $OUT/acts"
rm -rf "$OUT/acts"
quiet collect $PY launch/collect_activations.py --config=configs/demo_smollm2.py --config.model.path="$OUT/model" \
  --out="$OUT/acts" --shard_tokens=16384 --verbosity=-1 | tee "$OUT/collect.log"

echo "== [5/10] train: standard SAE (576 -> 4608) from the cached shards, evaluated on held-out problems"
rm -rf "$OUT/sae_train"
quiet train $PY launch/train_sae.py --config=configs/demo_smollm2.py --config.activations.cache_dir="$OUT/acts" \
  --config.model.path="$OUT/model" --config.trainer.out_dir="$OUT/sae_train" --config.trainer.progress=false \
  --config.eval.sources="$HELD_OUT_SOURCES" --verbosity=-1 > "$OUT/train.log"

echo "== [6/10] reason_score: every feature of the demo SAE on held-out demo problems"
# The demo config's model and corpus keys, on the held-out problems; BOS/EOS ignored as the paper does.
HELD_OUT=(--config=configs/demo_smollm2.py --config.model.path="$OUT/model" --config.data.sources="$HELD_OUT_SOURCES"
          --config.data.num_rows=$HELD_OUT_ROWS)
quiet reason_score $PY launch/reason_score.py "${HELD_OUT[@]}" --sae="$OUT/sae_train/sae" --out="$OUT/reasonscore" \
  --config.reasonscore.top_k=10 --verbosity=-1 > "$OUT/reasonscore.log"

echo "== [7/10] dashboard: HTML pages of the top 10 features -> $OUT/dashboards/index.html"
quiet dashboard $PY launch/dashboard.py "${HELD_OUT[@]}" --sae="$OUT/sae_train/sae" --scores="$OUT/reasonscore" \
  --config.dashboard.top_k=10 --out="$OUT/dashboards" --verbosity=-1 > "$OUT/dashboard.log"

echo "== [8/10] plan: the paper's run (R1-Distill-Llama-8B, SAE 4096 -> 65536) AOT-compiled for TPU v5e:2x2, mesh model=4"
quiet plan $PY launch/aot_compile.py --topology=v5e:2x2 --config=configs/paper_r1_llama8b_l19.py --config.mesh.data=1 \
  --config.mesh.model=4 --out="$OUT/plan_v5e_2x2.json" --verbosity=-1 > /dev/null

echo "== [9/10] evaluate: baseline vs steering the top ReasonScore feature on offline arithmetic problems"
TOP="$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['feature'])" "$OUT/reasonscore/top_k.json")"
rm -rf "$OUT/eval"
quiet evaluate $PY launch/evaluate.py --config=configs/eval_demo_smollm2.py --config.model.path="$OUT/model" \
  --sae="$OUT/sae_train/sae" --config.steering.features="($TOP,)" --dashboard="$OUT/dashboards" \
  --out="$OUT/eval" --verbosity=-1 > "$OUT/evaluate.log"

echo "== [10/10] pod: stage 6 again as 2 processes x 4 CPU devices (one 8-device mesh over gloo), compared"
rm -rf "$OUT/reasonscore_pod"
quiet pod env PYTHON="$PY" LOCAL_POD_LOG_DIR="$OUT/pod_logs" bash launch/local_pod.sh 2 launch/reason_score.py "${HELD_OUT[@]}" \
  --sae="$OUT/sae_train/sae" --out="$OUT/reasonscore_pod" --config.mesh.data=-1 --config.reasonscore.top_k=10 \
  --verbosity=-1 > "$OUT/reasonscore_pod.log"

$PY - "$OUT" "$start" <<'PY'
import json, os, sys, time
out, start = sys.argv[1], int(sys.argv[2])
conv = json.loads(open(os.path.join(out, "convert.log")).read().strip().splitlines()[-1])
chat = open(os.path.join(out, "chat.log")).read().strip().splitlines()
par = json.load(open(os.path.join(out, "parity.json")))
lg, site = par["logits"], par["layer19_resid_post"]
print("\n== demo report")
print(f"convert : Orbax checkpoint at {conv['checkpoint']} ({conv['seconds']} s)")
print(f"chat    : {chat[1] if len(chat) > 1 else chat}")
print(f"parity  : {lg['tokens']} tokens, max|dlogit| {lg['max_abs_logit_diff']:.2e}, mean KL {lg['mean_kl']:.2e}, "
      f"max KL {lg['max_kl']:.2e}, top-1 agreement {lg['top1_agreement']:.3f}; "
      f"layer-19 resid_post rel. error {site['relative_l2_error']:.2e}")
col = json.loads(open(os.path.join(out, "collect.log")).read().strip().splitlines()[-1])
print(f"collect : {col['tokens']} activations in {col['shards']} shards ({col['seconds']} s)")
res = json.load(open(os.path.join(out, "sae_train", "result.json")))
ev = res["splice_eval"]
print(f"train   : {res['steps']} steps ({res['data']['passes']:.2f} passes over the data), dead "
      f"{res['dead_fraction']:.3f}, {res['tokens_per_second']} tokens/s; SAELens export at {res['sae_dir']}")
print(f"held out: {ev['tokens']} tokens of problems the SAE never trained on ({ev['rows']}; CE, KL below too): "
      f"explained variance {ev['explained_variance']:.3f} (last training batches {res['explained_variance']:.3f}), "
      f"L0 {ev['l0']:.1f}")
print(f"splice  : CE clean {ev['ce_loss_clean']:.3f}, with SAE {ev['ce_loss_with_sae']:.3f}, zero-ablation "
      f"{ev['ce_loss_zero_ablation']:.3f} -> CE-loss recovered {ev['ce_loss_recovered']:.3f}; KL {ev['kl_with_sae']:.3f}"
      f" (zero-ablation {ev['kl_zero_ablation']:.3f})")
print("  ranges: explained variance = share of the activations' variance the reconstruction keeps: good LLM SAEs")
print("          reach 0.7-0.9 (the paper's ~0.69); L0 = features active per token: tens to ~100 is usable (the paper's ~86),")
print("          a few reconstructs poorly, hundreds is hardly sparse; CE-loss recovered: 1 = splicing the SAE in loses")
print("          nothing downstream, 0 = as bad as deleting the site, good SAEs > 0.9; KL(clean || with SAE) per token")
print("          in nats: below ~0.1 is good, zero-ablation's KL gives the scale.")
rs = json.loads(open(os.path.join(out, "reasonscore.log")).read().strip().splitlines()[-1])
print(f"score   : ReasonScore of {rs['features']} features over {rs['tokens']} tokens ({rs['seconds']} s); top 10:")
for t in rs["top"]:
  print(f"          feature {t['feature']:5d}  score {t['score']:.5f}  top words {', '.join(t['top_words'])}")
db = json.loads(open(os.path.join(out, "dashboard.log")).read().strip().splitlines()[-1])
print(f"pages   : {db['index']} (open in a browser; no server needed); dense (> 10% of tokens): "
      f"{len(db['dense_shown'])} of {db['features']} shown; SAE on these held-out rows: explained variance "
      f"{db['sae']['explained_variance']:.3f}, L0 {db['sae']['l0']:.1f}, dead {db['sae']['dead_fraction']:.3f}")
plan = json.load(open(os.path.join(out, "plan_v5e_2x2.json")))
gib = lambda b: f"{b / 2**30:.1f} GiB" if b is not None else "refused by XLA"  # noqa: E731
stages = ", ".join(f"{name} {gib((st['bytes_per_device'] or {}).get('total'))}"
                   for name, st in plan["stages"].items())
runs = ", ".join(f"{name} {gib(r['bytes_per_device'])} ({'fits' if r['fits'] else 'does not fit'})"
                 for name, r in plan["runs"].items())
print(f"plan    : {plan['topology']} ({plan['device_kind']}, {gib(plan['hbm_per_device'])} per chip), per device: "
      f"{stages}; whole scripts: {runs}")
ev = json.load(open(os.path.join(out, "eval", "summary.json")))
steer = json.load(open(os.path.join(out, "eval", "steering.json")))
for d in steer:
  f = d["per_feature"][0]
  print(f"steer   : {d['setting']}: feature {f['feature']} ({d['method']}, {d['site']}, {d['units']} units), "
        f"c = {f['target']:.3f} = strength {f['strength']:g} x dashboard max {f['max_activation']:.3f}, "
        f"|W_dec row| {f['row_norm']:.3f}, steering vector norm {f['vector_norm']:.3f}")
for task in ev["tasks"]:
  for s in ev["settings"]:
    e = ev["results"].get(s["name"], {}).get(task)
    if e is None:
      continue
    g = e["primary_grader"]
    p = e["graders"][g]["pass@1"]
    print(f"eval    : {task} {s['name']:>10}: pass@1 {100 * p['mean']:5.1f}% [{100 * p['ci_low']:.1f}, "
          f"{100 * p['ci_high']:.1f}] ({g}, {e['n_problems']} problems), mean length "
          f"{e['total_tokens']['mean']:.1f} tokens, {e['n_truncated']} hit the limit")
print(f"report  : {os.path.join(out, 'eval', 'report.md')}")
import numpy as np  # noqa: E402
one, pod = (np.load(os.path.join(out, d, "scores.npy")) for d in ("reasonscore", "reasonscore_pod"))
same = [t["feature"] for t in json.load(open(os.path.join(out, "reasonscore", "top_k.json")))] == \
    [t["feature"] for t in json.load(open(os.path.join(out, "reasonscore_pod", "top_k.json")))]
print(f"pod     : ReasonScore as 2 processes x 4 devices vs 1 process: max |score difference| "
      f"{np.max(np.abs(one - pod)):.2e} over {one.size} features, top 10 {'identical' if same else 'DIFFERENT'}")
print(f"total   : {time.time() - start:.0f} s")
PY

#!/usr/bin/env bash
# Runs one stage (a launch/*.py script) on every host of the slice with the same flags, logs per host, and
# restarts it when the slice was preempted: the slice is deleted, created and installed again, and the same
# command resumes from the stage's checkpoint (collect_activations.py, train_sae.py and evaluate.py resume;
# keep their outputs under a gs:// --root, a preempted VM's disk is gone). Each process learns its place in the
# pod from jax.distributed.initialize() (auto-detected on Cloud TPU); nothing else differs between hosts.
#   bash launch/tpu/run.sh --name=sae --type=v5e-16 --zone=us-west4-a --root=gs://bucket/paper \
#       [--max_restarts=3] [--queued] [--spot] [--dry_run] \
#       -- launch/train_sae.py --config=configs/paper_r1_llama8b_l19.py
# Flags: lib.sh's, and --root (passed on as the script's --root: its inputs and outputs under one artifacts
# root), --max_restarts (after preemption; default 3), --queued and --spot (how to re-create the slice, as
# create.sh). Scripts that read a run config get the slice's mesh preset (configs/meshes.py) as --config.mesh.*
# flags right after --config, before their own overrides, so a --config.mesh.* in the command wins. Logs:
# ~/sae_jax/logs/<stage>-<time>.w<worker>.log on each host, copied to runs/tpu_logs/<name>/ here after each attempt.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"
ROOT="" MAX_RESTARTS=3 SLICE_FLAGS=() CMD=()
for ((i = 0; i < ${#REST[@]}; i++)); do
  arg="${REST[$i]}"
  case "$arg" in
    --root=*) ROOT="${arg#*=}" ;;
    --max_restarts=*) MAX_RESTARTS="${arg#*=}" ;;
    --queued|--spot) SLICE_FLAGS+=("$arg") ;;
    launch/*.py) CMD=("${REST[@]:$i}"); break ;;
    *) die "run.sh: unknown flag $arg (the stage goes last: -- launch/SCRIPT.py FLAGS...)" ;;
  esac
done
[ ${#CMD[@]} -gt 0 ] || die "run.sh: no stage given (-- launch/SCRIPT.py FLAGS...)"
SCRIPT="${CMD[0]}"
[ -f "$REPO/$SCRIPT" ] || die "run.sh: no such script $SCRIPT"
case "$MAX_RESTARTS" in ''|*[!0-9]*) die "--max_restarts must be a count, got $MAX_RESTARTS" ;; esac
if grep -q "common.define_config" "$REPO/$SCRIPT"; then
  # The preset goes before the stage's own --config.* flags (they win) and after --config (which must precede
  # any override).
  read -r -a mesh <<< "$MESH"
  at=1
  for ((i = 1; i < ${#CMD[@]}; i++)); do [[ "${CMD[$i]}" != --config=* ]] || at=$((i + 1)); done
  CMD=("${CMD[@]:0:$at}" "${mesh[@]}" "${CMD[@]:$at}")
fi
[ -z "$ROOT" ] || CMD+=("--root=$ROOT")
if [[ " ${SLICE_FLAGS[*]-} " == *" --spot "* && "$ROOT" != gs://* ]]; then
  echo "# warning: a Spot slice restarts on new disks: give a gs:// --root so the stage can resume" >&2
fi
STAGE="$(basename "$SCRIPT" .py)"
LOG="$STAGE-$(date -u +%Y%m%dT%H%M%SZ)"
REMOTE="cd $REMOTE_DIR && bash launch/tpu/host_run.sh $LOG $(quote "${CMD[@]}")"
LOCAL_LOGS="$REPO/runs/tpu_logs/$NAME"

fetch_logs() {
  [ "$DRY_RUN" = 1 ] || mkdir -p "$LOCAL_LOGS"
  for ((w = 0; w < HOSTS; w++)); do
    run gcloud compute tpus tpu-vm scp "$NAME:$REMOTE_DIR/logs/$LOG.w$w.log" "$LOCAL_LOGS/" "${WHERE[@]}" \
      --worker="$w" || echo "# could not fetch the log of host $w" >&2
  done
}

QUEUED=()
[[ " ${SLICE_FLAGS[*]-} " != *" --queued "* ]] || QUEUED=(--queued)

# PREEMPTED, TERMINATED or gone: the slice must be re-created (a queued resource: SUSPENDED or FAILED).
preempted() {
  local state
  if [ ${#QUEUED[@]} -gt 0 ]; then
    state="$(gcloud compute tpus queued-resources describe "$NAME" "${WHERE[@]}" --format='value(state.state)' \
      2>/dev/null || echo GONE)"
    [[ "$state" =~ ^(SUSPENDED|SUSPENDING|FAILED|GONE)$ ]]
  else
    state="$(gcloud compute tpus tpu-vm describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null \
      || echo GONE)"
    [[ "$state" =~ ^(PREEMPTED|TERMINATED|GONE)$ ]]
  fi
}

SLICE=(--name="$NAME" --type="$TYPE" --zone="$ZONE")
[ -z "$PROJECT" ] || SLICE+=(--project="$PROJECT")
echo "# $STAGE on $NAME ($TYPE: $HOSTS host(s), $CHIPS chips), logs $LOG.w<worker>.log"
if [ "$DRY_RUN" = 1 ]; then
  on_all_hosts "$REMOTE"
  fetch_logs
  echo "# if it fails and the slice was preempted (up to $MAX_RESTARTS times), the same command again after:"
  echo "#   bash launch/tpu/delete.sh ${SLICE[*]} ${QUEUED[*]-}"
  echo "#   bash launch/tpu/create.sh ${SLICE[*]} ${SLICE_FLAGS[*]-}"
  echo "#   bash launch/tpu/install.sh ${SLICE[*]}"
  exit 0
fi
for ((attempt = 0; ; attempt++)); do
  rc=0
  on_all_hosts "$REMOTE" || rc=$?
  fetch_logs
  [ "$rc" != 0 ] || { echo "# $STAGE done on all hosts"; exit 0; }
  if [ "$attempt" -ge "$MAX_RESTARTS" ] || ! preempted; then
    echo "error: $STAGE failed on $NAME (exit $rc; logs in $LOCAL_LOGS)" >&2
    exit "$rc"
  fi
  echo "# $NAME was preempted: re-creating it (restart $((attempt + 1)) of $MAX_RESTARTS)"
  bash "$TPU_DIR/delete.sh" "${SLICE[@]}" ${QUEUED[@]+"${QUEUED[@]}"} || true
  bash "$TPU_DIR/create.sh" "${SLICE[@]}" ${SLICE_FLAGS[@]+"${SLICE_FLAGS[@]}"}
  bash "$TPU_DIR/install.sh" "${SLICE[@]}"
done

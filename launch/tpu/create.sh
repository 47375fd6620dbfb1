#!/usr/bin/env bash
# Creates the TPU slice: a TPU VM (`tpu-vm create`), or with --queued a queued resource that waits for
# capacity (`queued-resources create`, then polls until ACTIVE). --spot asks for Spot capacity (cheaper,
# preemptible: run.sh restarts a preempted stage). Flags: lib.sh's, plus --spot, --queued.
#   bash launch/tpu/create.sh --name=sae --type=v5e-16 --zone=us-west4-a --queued --spot [--dry_run]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"
SPOT=() QUEUED=0
for arg in "${REST[@]+"${REST[@]}"}"; do
  case "$arg" in
    --spot) SPOT=(--spot) ;;
    --queued) QUEUED=1 ;;
    *) die "create.sh: unknown flag $arg" ;;
  esac
done
echo "# $TYPE: $ACCELERATOR, runtime $RUNTIME, $HOSTS host(s), $CHIPS chips (mesh $MESH)"
if [ "$QUEUED" = 1 ]; then
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${WHERE[@]}" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${SPOT[@]+"${SPOT[@]}"}"
  describe=(gcloud compute tpus queued-resources describe "$NAME" "${WHERE[@]}" --format='value(state.state)')
  if [ "$DRY_RUN" = 1 ]; then
    run "${describe[@]}"
  else
    while state="$("${describe[@]}" || echo UNKNOWN)"; [ "$state" != ACTIVE ]; do
      case "$state" in FAILED|SUSPENDED) die "queued resource $NAME is $state" ;; esac
      echo "# waiting for $NAME: $state"; sleep 60
    done
  fi
else
  run gcloud compute tpus tpu-vm create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" "${SPOT[@]+"${SPOT[@]}"}"
fi

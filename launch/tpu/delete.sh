#!/usr/bin/env bash
# Deletes the TPU slice (and with --queued its queued resource, which --force deletes with its TPU VM).
#   bash launch/tpu/delete.sh --name=sae --type=v5e-16 --zone=us-west4-a [--queued] [--dry_run]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"
QUEUED=0
for arg in "${REST[@]+"${REST[@]}"}"; do
  case "$arg" in
    --queued) QUEUED=1 ;;
    *) die "delete.sh: unknown flag $arg" ;;
  esac
done
if [ "$QUEUED" = 1 ]; then
  run gcloud compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${WHERE[@]}" --quiet
fi

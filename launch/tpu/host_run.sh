#!/usr/bin/env bash
# Runs on each host of a slice (run.sh starts it on all of them at once): one launch script with the
# project's .venv, its output in logs/<LOG>.w<worker>.log; worker 0 also prints it. The exit code is the
# script's. The worker number is the TPU VM's (metadata server), so logs of one run never collide.
#   bash launch/tpu/host_run.sh LOG launch/train_sae.py --config=...
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
LOG="$1"; shift
WORKER="$(curl -sf -H Metadata-Flavor:Google \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)"
mkdir -p logs
out="logs/$LOG.w$WORKER.log"
echo "[host $WORKER] $(date -u +%FT%TZ) commit $(cat COMMIT 2>/dev/null): $*" >> "$out"
if [ "$WORKER" = 0 ]; then
  .venv/bin/python "$@" 2>&1 | tee -a "$out"; rc=${PIPESTATUS[0]}
else
  .venv/bin/python "$@" >> "$out" 2>&1; rc=$?
fi
echo "[host $WORKER] $(date -u +%FT%TZ) exit $rc" >> "$out"
exit "$rc"

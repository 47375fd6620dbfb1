#!/usr/bin/env bash
# Runs a launch script as N processes of a pod on this machine (4 fake CPU devices each), logs per process:
#   launch/local_pod.sh 2 launch/train_sae.py --config=configs/demo_smollm2.py ...
# LOCAL_POD_DEVICES and LOCAL_POD_LOG_DIR override the devices per process and the log dir (see local_pod.py).
set -euo pipefail
n="$1"; shift
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
exec "$python" "$here/local_pod.py" --processes="$n" --devices="${LOCAL_POD_DEVICES:-4}" \
  ${LOCAL_POD_LOG_DIR:+--logs="$LOCAL_POD_LOG_DIR"} -- "$@"

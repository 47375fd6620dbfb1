#!/usr/bin/env bash
# Builds .venv-NAME from launch/NAME_requirements.txt: real peer packages that cannot share .venv (used by
# bench_env.sh and compat_env.sh). CPU torch only. After installing, the python on stdin must import and check the
# pins. Safe to re-run: skipped while the pins are unchanged.
#   peer_env.sh NAME "what it holds" < check.py
set -euo pipefail
name="$1"; holds="$2"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
upper="$(echo "$name" | tr a-z A-Z)_VENV"
VENV="${!upper:-$REPO/.venv-$name}"
PY="${PYTHON:-python3.11}"
REQ="launch/${name}_requirements.txt"
check="$(cat)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[${name}_env] creating $VENV"
  "$PY" -m venv "$VENV"
  echo "*" > "$VENV/.gitignore"
fi
stamp="$VENV/.${name}_installed"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[${name}_env] installing $REQ (a few minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" 2>&1 | grep -v "^WARNING: Location" || true
  WANDB_MODE=disabled "$VENV/bin/python" -c "$check"
  echo "$want" > "$stamp"
fi
echo "[${name}_env] ready: $VENV/bin/python ($holds)"

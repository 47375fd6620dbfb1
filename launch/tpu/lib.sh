# Sourced by the launch/tpu scripts: their shared flags, the slice's facts (configs/meshes.py) and `run`, which
# prints each gcloud command and, without --dry_run, runs it. Flags (--flag=value; the environment variable in
# brackets is the default):
#   --name=NAME       the TPU VM, and the queued resource when --queued                  [TPU_NAME]
#   --type=SLICE      v4-8 | v5e-8 | v5e-16 | v5p-8 | v6e-8 (configs/meshes.py)          [TPU_TYPE]
#   --zone=ZONE       e.g. us-west4-a for v5e (where the slice type is offered)           [TPU_ZONE]
#   --project=ID      default: gcloud's configured project                                [TPU_PROJECT]
#   --dry_run         print the commands, run nothing (needs no gcloud)
# Script-specific flags are left in the array REST.
set -euo pipefail
TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$TPU_DIR/../.." && pwd)"
NAME="${TPU_NAME:-}" TYPE="${TPU_TYPE:-}" ZONE="${TPU_ZONE:-}" PROJECT="${TPU_PROJECT:-}" DRY_RUN=0
REMOTE_DIR='~/sae_jax'  # where the code and its .venv live on every host (expanded there)
REST=()

die() { echo "error: $*" >&2; exit 2; }

parse_flags() {
  local arg
  while [ $# -gt 0 ]; do
    arg="$1"; shift
    case "$arg" in
      --name=*) NAME="${arg#*=}" ;;
      --type=*) TYPE="${arg#*=}" ;;
      --zone=*) ZONE="${arg#*=}" ;;
      --project=*) PROJECT="${arg#*=}" ;;
      --dry_run) DRY_RUN=1 ;;
      --) REST+=("$@"); break ;;
      *) REST+=("$arg") ;;
    esac
  done
  [ -n "$NAME" ] || die "--name (or TPU_NAME) is required"
  [ -n "$ZONE" ] || die "--zone (or TPU_ZONE) is required"
  [ -n "$TYPE" ] || die "--type (or TPU_TYPE) is required: v4-8, v5e-8, v5e-16, v5p-8 or v6e-8"
  local facts
  facts="$(python3 "$REPO/configs/meshes.py" "$TYPE" --shell)" || exit 2
  eval "$facts"  # ACCELERATOR RUNTIME HOSTS CHIPS TOPOLOGY MESH
  WHERE=(--zone="$ZONE")
  [ -z "$PROJECT" ] || WHERE+=(--project="$PROJECT")
}

# Its arguments as one line a shell reads back to them: plain words bare, others in single quotes.
quote() {
  local out=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$arg"); else out+=("'${arg//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

# Prints a command as one shell-quoted line ("+ ..."), then runs it unless --dry_run.
run() {
  echo "+ $(quote "$@")"
  [ "$DRY_RUN" = 1 ] || "$@"
}

# Runs a shell command line on every host of the slice at once (gcloud's --worker=all).
on_all_hosts() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"
}

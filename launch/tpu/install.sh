#!/usr/bin/env bash
# Installs the project on every host of the slice: this checkout's committed tree (git archive HEAD) copied to
# ~/sae_jax, Python 3.11 from the runtime image's Ubuntu, and a .venv with the pinned requirements.txt plus
# jax's TPU extra at the same jax version (libtpu, pinned in requirements.txt too) and the CPU build of torch
# (torch only serves the reference comparisons). Ends by printing each host's view of the slice.
#   bash launch/tpu/install.sh --name=sae --type=v5e-16 --zone=us-west4-a [--dry_run]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"
[ ${#REST[@]} = 0 ] || die "install.sh: unknown flag ${REST[0]}"
JAX_VERSION="$(sed -n 's/^jax==\([^ ;]*\).*/\1/p' "$REPO/requirements.txt")"
[ -n "$JAX_VERSION" ] || die "no jax== pin in requirements.txt"
COMMIT="$(git -C "$REPO" rev-parse --short HEAD)"
[ -z "$(git -C "$REPO" status --porcelain --untracked-files=no)" ] \
  || echo "# warning: uncommitted changes are not installed (the hosts get commit $COMMIT)" >&2
TARBALL="/tmp/sae_jax-$COMMIT.tar.gz"
run git -C "$REPO" archive --format=tar.gz -o "$TARBALL" HEAD
run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:/tmp/sae_jax.tar.gz" "${WHERE[@]}" --worker=all
[ "$DRY_RUN" = 1 ] || rm -f "$TARBALL"
on_all_hosts "set -e; sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv; \
mkdir -p $REMOTE_DIR && tar -xzf /tmp/sae_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && echo $COMMIT > COMMIT; \
[ -x .venv/bin/python ] || python3.11 -m venv .venv; \
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 'jax[tpu]==$JAX_VERSION' \
--extra-index-url https://download.pytorch.org/whl/cpu && \
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . && \
.venv/bin/python -c 'import jax; jax.distributed.initialize(); \
print(jax.process_index(), jax.local_device_count(), jax.device_count(), jax.devices()[0].device_kind)'"

#!/usr/bin/env bash
# Kill soak: train a run once uninterrupted, then again while killing it with
# kill -9 KILLS times (default 5) at seeded random moments aimed at a step, a
# validation and a checkpoint save, resuming after each kill; the two runs'
# test_metrics.json and metrics.csv (but its seconds) must be identical.
#   launch/kill_soak.sh                       # the demo at 32x32, a tiny U-Net, 5 kills (2 min on 2 cores)
#   launch/kill_soak.sh 10 --config.num_epochs=10                # overrides of that tiny demo
#   launch/kill_soak.sh 3 --config=configs/demo.py --config.num_epochs=4   # a config of your own
#   KILL_SOAK_SEED=7 KILL_SOAK_DIR=/tmp/soak launch/kill_soak.sh
# Flags are unet_jax.main's, without --workdir; they run in the repository, so
# relative paths in them are relative to it. Runs and logs stay in
# KILL_SOAK_DIR (default: a new folder under /tmp). Exit status 0 when the
# metrics agree. Details: python -m unet_jax.kill_soak --help
set -euo pipefail
usage() {
  echo "usage: $0 [KILLS] [--config=FILE] [--config.KEY=VALUE ...]   (env: KILL_SOAK_SEED, KILL_SOAK_DIR)" >&2
  exit 2
}
kills=5
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
  [[ "$1" =~ ^[1-9][0-9]*$ ]] || usage
  kills=$1
  shift
fi
for arg in "$@"; do
  if [[ "$arg" != --* ]] || [ "$arg" = "--help" ] || [ "$arg" = "--" ]; then usage; fi
done
seed=${KILL_SOAK_SEED:-0}
[[ "$seed" =~ ^[0-9]+$ ]] || usage
args=(--kills "$kills" --seed "$seed")
if [ -n "${KILL_SOAK_DIR:-}" ]; then
  args+=(--root "$(realpath -m -- "$KILL_SOAK_DIR")")
fi
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m unet_jax.kill_soak "${args[@]}" -- "$@"

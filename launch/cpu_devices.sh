#!/usr/bin/env bash
# Run any command with N simulated JAX CPU devices, to exercise data
# parallelism without accelerators.
#   launch/cpu_devices.sh 4 python -m pytest -q tests
set -euo pipefail
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_DEVICES COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1
shift
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${n}"
export JAX_PLATFORMS=cpu
exec "$@"

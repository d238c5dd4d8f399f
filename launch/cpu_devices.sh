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
# A device count already in XLA_FLAGS goes: given twice, processes of several
# devices hang in their collectives (seen with jax 0.10.2).
export XLA_FLAGS="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}") --xla_force_host_platform_device_count=${n}"
export JAX_PLATFORMS=cpu
exec "$@"

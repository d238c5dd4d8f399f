#!/usr/bin/env bash
# Run COMMAND as N JAX processes on this machine, each with its own simulated
# CPU devices (DEVICES_PER_PROCESS, default 2), joined by JAX's distributed
# runtime over gloo: a multi-host run in miniature, to try scale-out code
# without a cluster.
#   launch/local_processes.sh 2 python -m unet_jax.main --config=configs/demo.py --workdir=runs/demo_2proc
# Each process's output lines start with [i]. Ctrl-C or SIGTERM to this script
# reaches every process (they agree on a step, save it and exit 0). If one
# process fails, the others are stopped; the exit code is the first failure's.
set -uo pipefail
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES COMMAND [ARGS...]   (env: DEVICES_PER_PROCESS=2, PORT=free port)" >&2
  exit 2
fi
n=$1
shift
devices=${DEVICES_PER_PROCESS:-2}
port=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

export JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}" JAX_NUM_PROCESSES="$n"
export JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
# A device count already in XLA_FLAGS goes: given twice, processes of several
# devices hang in their collectives (seen with jax 0.10.2).
export XLA_FLAGS="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}") --xla_force_host_platform_device_count=${devices}"
export PYTHONUNBUFFERED=1

pids=()
for ((i = 0; i < n; i++)); do
  # Each process in its own process group: a signal sent to one stays with it.
  JAX_PROCESS_ID=$i setsid "$@" > >(sed -u "s/^/[$i] /") 2> >(sed -u "s/^/[$i] /" >&2) &
  pids+=($!)
done

forward() { kill -s "$1" "${pids[@]}" 2>/dev/null; }
trap 'forward TERM' TERM
trap 'forward INT' INT

status=0
running=("${pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then still+=("$pid"); continue; fi
    wait "$pid"
    code=$?
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$code
      echo "local_processes: a process exited with $code; stopping the others" >&2
      forward TERM
    fi
  done
  running=("${still[@]}")
  [ ${#running[@]} -gt 0 ] && sleep 0.2
done
wait  # the output prefixers
exit "$status"

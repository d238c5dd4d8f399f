#!/usr/bin/env bash
# Run COMMAND as N JAX processes on this machine, each with its own simulated
# CPU devices (DEVICES_PER_PROCESS, default 2), joined by JAX's distributed
# runtime over gloo: a multi-host run in miniature, to try scale-out code
# without a cluster.
#   launch/local_processes.sh 2 python -m unet_jax.main --config=configs/demo.py --workdir=runs/demo_2proc
# Each process's output lines start with [i]. Ctrl-C, SIGTERM or a hang-up
# (the terminal or ssh session closed) to this script reaches every process
# (SIGHUP as SIGTERM; they agree on a step, save it and exit 0; a second
# Ctrl-C makes them exit at once without saving). If one process fails, the
# others are stopped; the exit code is the first failure's. Processes still
# running GRACE_SECONDS (default 60) after being stopped are killed (SIGKILL
# to each one's process group).
set -uo pipefail
usage="usage: $0 NUM_PROCESSES COMMAND [ARGS...]   (env: DEVICES_PER_PROCESS=2, PORT=free port, GRACE_SECONDS=60)"
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "$usage" >&2
  exit 2
fi
n=$1
shift
devices=${DEVICES_PER_PROCESS:-2}
grace=${GRACE_SECONDS:-60}
if ! [[ "$grace" =~ ^[0-9]+$ ]]; then
  echo "GRACE_SECONDS=$grace: not a whole number of seconds; $usage" >&2
  exit 2
fi
port=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

# The coordinator binds to loopback: JAX's default listens on every interface.
export JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}" JAX_COORDINATOR_BIND_ADDRESS="127.0.0.1:${port}"
export JAX_NUM_PROCESSES="$n"
export JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
# A device count already in XLA_FLAGS goes: given twice, processes of several
# devices hang in their collectives (seen with jax 0.10.2).
export XLA_FLAGS="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}") --xla_force_host_platform_device_count=${devices}"
export PYTHONUNBUFFERED=1

pids=()
for ((i = 0; i < n; i++)); do
  # Each process in its own session and process group: a signal sent to one stays with it. The output
  # prefixers ignore the terminal's Ctrl-C and hang-up, so they pass on the processes' last lines as they save.
  JAX_PROCESS_ID=$i setsid "$@" > >(trap '' INT HUP; exec sed -u "s/^/[$i] /") \
    2> >(trap '' INT HUP; exec sed -u "s/^/[$i] /" >&2) &
  pids+=($!)
done

deadline="" killed=""  # deadline: when processes asked to stop get killed; set by the first request
forward() {
  kill -s "$1" "${pids[@]}" 2>/dev/null
  [ -n "$deadline" ] || deadline=$((SECONDS + grace))
}
trap 'forward TERM' TERM HUP
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
      if [ -z "$deadline" ]; then
        echo "local_processes: a process exited with $code; stopping the others" >&2
        forward TERM
      fi
    fi
  done
  running=("${still[@]}")
  if [ ${#running[@]} -gt 0 ] && [ -n "$deadline" ] && [ "$SECONDS" -ge "$deadline" ]; then
    if [ -z "$killed" ]; then
      echo "local_processes: ${#running[@]} process(es) still running ${grace} s after being asked to stop;" \
        "killing them (GRACE_SECONDS=${grace})" >&2
      for pid in "${running[@]}"; do kill -s KILL -- "-$pid" 2>/dev/null; done
      killed=1
    fi
  fi
  [ ${#running[@]} -gt 0 ] && sleep 0.2
done
wait  # the output prefixers
exit "$status"

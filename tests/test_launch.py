"""launch/local_processes.sh with real processes: a hang-up (closed terminal)
stops every worker rather than orphaning it, a worker that ignores SIGTERM is
killed after GRACE_SECONDS, and JAX's coordinator listens on loopback only.
The workers here are small Python scripts (no JAX) unless a test needs JAX."""

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local_processes.sh")

# A worker: writes its pid into DIR/pid.<process id> once its signal handling is
# set, then waits. On SIGTERM or SIGINT it says so and exits 0, like a run that saved; with
# IGNORE_TERM=1 it ignores SIGTERM (a hung worker); with EXIT_CODE=n, process 1
# exits with n instead of waiting (a failed worker).
WORKER = """
import os, signal, sys, time
folder, index = sys.argv[1], os.environ["JAX_PROCESS_ID"]


def stop(signum, frame):
    print("saved and stopping", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("IGNORE_TERM") else stop)
signal.signal(signal.SIGINT, stop)
with open(os.path.join(folder, "pid." + index + ".tmp"), "w") as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(folder, "pid." + index + ".tmp"), os.path.join(folder, "pid." + index))
if index == "1" and os.environ.get("EXIT_CODE"):
    sys.exit(int(os.environ["EXIT_CODE"]))
while True:
    time.sleep(0.05)
"""


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def _start(tmp_path, count: int, **env):
    """The launcher running `count` workers, in a session of its own (like a
    terminal's job), and the workers' pids once they are ready."""
    launcher = subprocess.Popen([LAUNCHER, str(count), sys.executable, "-c", WORKER, str(tmp_path)],
                                env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    paths = [tmp_path / f"pid.{i}" for i in range(count)]
    for _ in range(600):
        if all(p.exists() for p in paths) or launcher.poll() is not None:
            break
        time.sleep(0.05)
    return launcher, [int(p.read_text()) for p in paths if p.exists()]


def _finish(launcher, pids):
    """The launcher's exit code and output once it ended, and the workers still
    running then; kills whatever is left (a hung launcher, orphaned workers)."""
    try:
        out, err = launcher.communicate(timeout=30)
        return launcher.returncode, out, err, [pid for pid in pids if _alive(pid)]
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT], ids=["hang_up", "ctrl_c"])
def test_a_hang_up_or_ctrl_c_stops_every_worker(tmp_path, signum):
    launcher, pids = _start(tmp_path, 2)
    assert len(pids) == 2
    os.killpg(launcher.pid, signum)  # what closing the terminal or Ctrl-C sends to its foreground job
    code, out, err, running = _finish(launcher, pids)
    assert running == []
    assert code == 0, err
    # The output prefixers outlived the signal: the workers' last words arrived.
    assert sorted(line for line in out.splitlines() if "saved" in line) == [
        "[0] saved and stopping", "[1] saved and stopping"]


@pytest.mark.parametrize("cause", ["signal", "failure"])
def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, cause):
    env = {"GRACE_SECONDS": "2", "IGNORE_TERM": "1"} | ({"EXIT_CODE": "3"} if cause == "failure" else {})
    launcher, pids = _start(tmp_path, 2, **env)
    assert len(pids) == 2
    if cause == "signal":
        launcher.send_signal(signal.SIGTERM)
    code, _, err, running = _finish(launcher, pids)
    assert running == []
    lines = [line for line in err.splitlines() if "GRACE_SECONDS" in line]
    assert lines == [f"local_processes: {2 if cause == 'signal' else 1} process(es) still running 2 s after being "
                     "asked to stop; killing them (GRACE_SECONDS=2)"]
    assert code == (3 if cause == "failure" else 128 + signal.SIGKILL)


def test_the_coordinator_listens_on_loopback_only():
    # Process 0 starts the coordinator, then lists the listening TCP sockets on its port.
    worker = """
import os
from unet_jax import parallel
parallel.initialize_distributed()
port = int(os.environ["JAX_COORDINATOR_ADDRESS"].rsplit(":", 1)[1])
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    with open(table) as f:
        for row in f.readlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                print("listening", table, local.split(":")[0])
"""
    done = subprocess.run([LAUNCHER, "1", sys.executable, "-c", worker], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    addresses = {line.split()[-1] for line in done.stdout.splitlines() if "listening" in line}
    # 127.0.0.1 as /proc/net/tcp and tcp6 (IPv4-mapped) write it, or ::1; not 0.0.0.0 or ::, every interface.
    assert addresses and addresses <= {"0100007F", "0000000000000000FFFF00000100007F",
                                       "00000000000000000000000001000000"}, done.stdout

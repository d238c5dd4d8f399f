"""Kill soak: a run killed with `kill -9` again and again, and resumed each
time, must end with exactly the metrics of the same run left alone.

  python -m unet_jax.kill_soak                     # the demo, tiny; 5 kills
  python -m unet_jax.kill_soak --kills 8 --seed 3 -- --config=configs/demo.py --config.num_epochs=8
  launch/kill_soak.sh                               # the same, from bash

It trains the command (unet_jax.main's flags, its --workdir left out) in
ROOT/A without interruption, timing its steps (from the log's step lines),
validations and checkpoint saves (from the checkpoints folder). Then it
trains it in ROOT/B and kills the whole process group with SIGKILL K times,
each at a seeded random moment aimed at a step, a validation or a checkpoint
save (the save is caught by orbax's temporary folder,
`<step>.orbax-checkpoint-tmp-*`, appearing in checkpoints/), restarting the
same command after each kill and finally letting it finish. Last it compares A's and B's test_metrics.json
(every value, paths under the workdirs aside) and metrics.csv (every column
but `seconds`): exactly, or within --atol. Exit status 0 when they agree.
What it concludes comes from files and exit statuses: each run's exit status,
its checkpoints folder (where a restart resumes: the newest finished
checkpoint), metrics.csv (the epochs done) and test_metrics.json; the log
only tells it when each step ends, to aim a kill, and what to quote.

Without a --config= flag the training flags are overrides of DEMO_FLAGS (the
demo at 32x32 with a 4-feature U-Net of depth 2, six epochs, a log line per
step so that every kill can say where it landed). Steps are read from the
log, so a run with a larger log_every_steps is killed less precisely. The
runs share a persistent XLA compilation cache under ROOT (not a restart in B
compiles again), and run on the CPU, where training is deterministic, unless
JAX_PLATFORMS says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_MARK = "orbax-checkpoint-tmp"  # in the name of a checkpoint orbax is still writing
DEMO_FLAGS = ["--config=configs/demo.py", "--config.model.features=4", "--config.model.depth=2",
              "--config.data.synthetic.size=32", "--config.num_epochs=6", "--config.log_every_steps=1"]
PHASES = ("step", "validation", "save")  # what a kill aims at, in the order they happen in an epoch

_ABSL = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [^\]]+\] (.*)$")
_PROGRESS = re.compile(r"^(\[\d+\] (uptime|steps_per_sec)=|Setting work unit notes:)")  # no news of a phase
# clu's lines that say a step is done: its metric writer's and its progress report's.
_STEP_PATTERNS = (re.compile(r"^\[(\d+)\] train_"), re.compile(r"^Setting work unit notes: .*\((\d+)/\d+\)"))


# --- running the command -------------------------------------------------------

def main_command(flags: list[str], workdir: str) -> list[str]:
    """`python -m unet_jax.main FLAGS --workdir=WORKDIR`."""
    return [sys.executable, "-m", "unet_jax.main", *flags, f"--workdir={os.path.abspath(workdir)}"]


def subprocess_env(cache_dir: str | None = None) -> dict[str, str]:
    """This environment on the CPU (unless JAX_PLATFORMS is set), with a
    persistent compilation cache in `cache_dir` (unless one is set already)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    env.setdefault("JAX_PLATFORMS", "cpu")
    if cache_dir and "JAX_COMPILATION_CACHE_DIR" not in env:
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def start(argv: list[str], log_path: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`argv` in the repository, its stdout and stderr into `log_path`, in a
    process group of its own (so a kill takes its workers too)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env if env is not None else subprocess_env(), start_new_session=True)


def kill(proc: subprocess.Popen) -> int:
    """SIGKILL to the process group of `proc` (a process `start` began); its exit status."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait()


def run(argv: list[str], log_path: str, env: dict[str, str] | None = None, timeout: float | None = None) -> int:
    """`argv` to the end (killed past `timeout` seconds); its exit status."""
    proc = start(argv, log_path, env)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise


def tail(path: str, lines: int = 15) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


# --- comparing two runs --------------------------------------------------------

@dataclass
class Comparison:
    differences: list[str] = field(default_factory=list)  # one line per value that differs
    compared: dict[str, int] = field(default_factory=dict)  # values compared per file
    max_abs_diff: float = 0.0  # of the numbers compared (within atol when there are no differences)

    @property
    def identical(self) -> bool:
        return not self.differences and self.max_abs_diff == 0.0


def _same_number(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _compare_values(name: str, a: Any, b: Any, out: Comparison, atol: float, file: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.differences.append(f"{file} {name}{key}: only in {'A' if key in a else 'B'}")
            else:
                _compare_values(f"{name}{key}.", a[key], b[key], out, atol, file)
        return
    name = name.rstrip(".")
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.differences.append(f"{file} {name}: {len(a)} entries in A, {len(b)} in B")
        for i, (x, y) in enumerate(zip(a, b)):
            _compare_values(f"{name}[{i}].", x, y, out, atol, file)
        return
    out.compared[file] = out.compared.get(file, 0) + 1
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if numbers:
        if _same_number(float(a), float(b)):
            return
        diff = abs(float(a) - float(b))
        out.max_abs_diff = max(out.max_abs_diff, diff if math.isfinite(diff) else math.inf)
        if diff <= atol:
            return
    elif a == b:
        return
    out.differences.append(f"{file} {name}: A={a!r} B={b!r}")


def _csv_rows(workdir: str) -> list[dict[str, Any]]:
    def number(text: str) -> Any:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(os.path.join(workdir, "metrics.csv")) as f:
        return [{k: number(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _test_metrics(workdir: str) -> Any:
    """test_metrics.json with the workdir's own path (data under it) as <workdir>."""
    with open(os.path.join(workdir, "test_metrics.json")) as f:
        text = f.read()
    return json.loads(text.replace(json.dumps(os.path.abspath(workdir))[1:-1], "<workdir>"))


def compare_runs(a: str, b: str, atol: float = 0.0) -> Comparison:
    """Every value of the workdirs' test_metrics.json and metrics.csv (but its
    `seconds`): equal numbers (NaN equal to NaN, nulls to nulls), or within
    `atol` of each other."""
    out = Comparison()
    _compare_values("", _test_metrics(a), _test_metrics(b), out, atol, "test_metrics.json")
    rows_a, rows_b = _csv_rows(a), _csv_rows(b)
    if len(rows_a) != len(rows_b):
        out.differences.append(f"metrics.csv: {len(rows_a)} rows in A, {len(rows_b)} in B")
    for row_a, row_b in zip(rows_a, rows_b):
        _compare_values(f"epoch {row_a.get('epoch', '?')} ", row_a, row_b, out, atol, "metrics.csv")
    return out


# --- watching a run ------------------------------------------------------------

def checkpoint_folder(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def finished_checkpoints(workdir: str) -> set[int]:
    """The steps of the checkpoints orbax has finished."""
    try:
        return {int(name) for name in os.listdir(checkpoint_folder(workdir)) if name.isdigit()}
    except FileNotFoundError:
        return set()


def resume_step(workdir: str) -> int | None:
    """The step a run started now resumes at: its newest finished checkpoint (None: from the start)."""
    return max(finished_checkpoints(workdir), default=None)


def epochs_written(workdir: str) -> set[int]:
    """The epochs metrics.csv holds a row of (written at each epoch's end)."""
    try:
        return {int(row["epoch"]) for row in _csv_rows(workdir)}
    except FileNotFoundError:
        return set()


def tmp_checkpoints(workdir: str) -> set[str]:
    """The names of the checkpoints orbax has begun and not finished."""
    try:
        return {name for name in os.listdir(checkpoint_folder(workdir)) if TMP_MARK in name}
    except FileNotFoundError:
        return set()


def tmp_identities(workdir: str) -> dict[str, tuple[int, int]]:
    """The temporary checkpoints, each with its inode and ctime: orbax gives a
    step's temporary folder the same name every time, and removes a leftover
    one before it saves that step again, so only these tell a new one from it."""
    out = {}
    for name in tmp_checkpoints(workdir):
        try:
            st = os.stat(os.path.join(checkpoint_folder(workdir), name))
        except FileNotFoundError:
            continue
        out[name] = (st.st_ino, st.st_ctime_ns)
    return out


def new_tmp(workdir: str, stale: dict[str, tuple[int, int]]) -> set[str]:
    """The temporary checkpoints that are not the `stale` ones (tmp_identities of earlier)."""
    return {name for name, ident in tmp_identities(workdir).items() if stale.get(name) != ident}


def _step_of(name: str) -> int | None:
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else None


class Watcher:
    """Follows a run's log file and checkpoints folder: the newest step done,
    the newest log line, the temporary and the finished checkpoints, and when
    each was first seen; the step the run resumed at is its newest finished
    checkpoint when it started."""

    def __init__(self, log_path: str, workdir: str, stale_tmp: dict[str, tuple[int, int]] | None = None):
        self.log_path, self.workdir = log_path, workdir
        self.stale_tmp = dict(stale_tmp or {})  # left by earlier runs: tmp_identities
        self.t0 = time.monotonic()
        self._offset, self._partial = 0, ""
        self.step: int | None = None  # the newest step the log says is done
        self.last_line = ""
        self.tmp: set[str] = set()
        self.final: set[int] = set()
        self.step_seen: dict[int, float] = {}  # first sightings, seconds since start
        self.tmp_seen: dict[int, float] = {}
        self.final_seen: dict[int, float] = {}
        self.earlier = finished_checkpoints(workdir)  # of earlier runs
        self.resumed = resume_step(workdir)  # the step the run resumes at (None: from the start)

    def poll(self) -> None:
        now = time.monotonic() - self.t0
        try:
            with open(self.log_path, errors="replace") as f:
                f.seek(self._offset)
                text = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            text = ""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            match = _ABSL.match(line)
            if not match:
                continue
            message = match.group(1).strip()
            if message and not _PROGRESS.match(message):
                self.last_line = message
            for pattern in _STEP_PATTERNS:
                m = pattern.match(message)
                if m:
                    step = int(m.group(1))
                    self.step = step if self.step is None else max(self.step, step)
                    self.step_seen.setdefault(step, now)
        try:
            names = os.listdir(checkpoint_folder(self.workdir))
        except FileNotFoundError:
            names = []
        for name in [n for n in self.stale_tmp if n not in names]:  # removed: a new one of that name is new
            del self.stale_tmp[name]
        self.tmp = new_tmp(self.workdir, self.stale_tmp) if any(TMP_MARK in n for n in names) else set()
        self.final = {int(n) for n in names if n.isdigit()}
        for name in self.tmp:
            if _step_of(name) is not None:
                self.tmp_seen.setdefault(_step_of(name), now)
        for step in self.final:
            self.final_seen.setdefault(step, now)

    def phase(self, steps_per_epoch: int, total_steps: int) -> str:
        """Where the run is, as far as its log and checkpoints tell."""
        if self.tmp:
            return "checkpoint save of step " + ", ".join(str(_step_of(n)) for n in sorted(self.tmp))
        if self.step is None:
            return "start-up (no step logged yet)"
        step, epoch = self.step, self.step // steps_per_epoch
        if step % steps_per_epoch == 0 and step != self.resumed and epoch not in epochs_written(self.workdir):
            if step not in self.final:
                return f"validation of epoch {epoch} (after step {step})"
            return f"the end of epoch {epoch} (its checkpoint saved, its log and metrics.csv not yet written)"
        if step >= total_steps:
            return "the test of the best epoch"
        return f"step {step + 1}"


# --- the soak ------------------------------------------------------------------

@dataclass
class Timings:
    """What the uninterrupted run measured."""
    seconds: float
    steps_per_epoch: int
    epochs: int
    step: float | None  # median seconds per step
    validation: float | None  # median seconds from an epoch's last step to its save
    save: float | None  # median seconds a checkpoint stayed temporary (None: too fast to see)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def measure(watcher: Watcher, workdir: str, seconds: float) -> Timings:
    rows = _csv_rows(workdir)
    spe = int(rows[0]["step"]) // int(rows[0]["epoch"])
    seen = watcher.step_seen
    step_gaps = [seen[s] - seen[s - 1] for s in seen if s - 1 in seen and (s - 1) % spe]
    ends = [e * spe for e in range(1, len(rows) + 1)]
    val = [watcher.tmp_seen[s] - seen[s] for s in ends if s in seen and s in watcher.tmp_seen]
    save = [watcher.final_seen[s] - watcher.tmp_seen[s] for s in ends if s in watcher.final_seen and s in
            watcher.tmp_seen]

    def median(values):
        return statistics.median(values) if values else None

    return Timings(seconds, spe, len(rows), median(step_gaps), median(val), median(save))


@dataclass
class Kill:
    phase: str  # one of PHASES
    epoch: int
    step: int  # the step whose log line triggers it (the epoch's last for validation and save)
    delay: float  # seconds after the trigger

    def describe(self) -> str:
        return {"step": f"step {self.step + 1}", "validation": f"validation of epoch {self.epoch}",
                "save": f"checkpoint save of step {self.step}"}[self.phase]


def plan_kills(count: int, timings: Timings, rng: random.Random) -> list[Kill]:
    """`count` kills, one in each of `count` equal stretches of the run's
    epochs, cycling through the phases in a random order; sorted in the order
    the resumed runs reach them (each run resumes from the last checkpoint
    before its kill, so none is out of reach)."""
    spe, epochs = timings.steps_per_epoch, timings.epochs
    phases = [PHASES[i % len(PHASES)] for i in range(count)]
    rng.shuffle(phases)
    if spe < 2:  # no step inside an epoch to aim at
        phases = [p if p != "step" else "validation" for p in phases]
    kills = []
    for i, phase in enumerate(phases):
        epoch = min(epochs, 1 + int((i + rng.random()) * epochs / count))  # the i-th of `count` equal stretches
        if phase == "step":  # the trigger is step s's log line, the kill lands in step s + 1
            kills.append(Kill(phase, epoch, (epoch - 1) * spe + rng.randint(1, spe - 1),
                              rng.uniform(0, timings.step or 0.0)))
        elif phase == "validation":
            kills.append(Kill(phase, epoch, epoch * spe, rng.uniform(0, 0.8 * (timings.validation or 0.0))))
        else:
            kills.append(Kill(phase, epoch, epoch * spe, rng.uniform(0, 0.5 * (timings.save or 0.0))))
    return sorted(kills, key=lambda k: (k.epoch, PHASES.index(k.phase), k.step))


class Soak:
    def __init__(self, flags: list[str], root: str, kills: int, seed: int, atol: float, poll: float,
                 cache: bool):
        self.flags, self.root, self.kills, self.seed, self.atol, self.poll = flags, root, kills, seed, atol, poll
        self.env = subprocess_env(os.path.join(root, "xla_cache") if cache else None)
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    def watch(self, proc: subprocess.Popen, watcher: Watcher, deadline: float, trigger=None) -> int | None:
        """Polls until `proc` exits (its status) or `trigger(watcher)` holds (None)."""
        while True:
            rc = proc.poll()
            watcher.poll()
            if rc is not None:
                return rc
            if trigger is not None and trigger(watcher):
                return None
            if time.monotonic() > deadline:
                kill(proc)
                raise TimeoutError(f"{watcher.log_path}: no end after the time limit; its tail:\n"
                                   f"{tail(watcher.log_path)}")
            time.sleep(self.poll)

    def reference(self) -> tuple[str, Timings]:
        workdir, log = os.path.join(self.root, "A"), os.path.join(self.root, "A.log")
        self.say(f"A: the uninterrupted run in {workdir} (log {log})")
        started = time.monotonic()
        watcher = Watcher(log, workdir)
        proc = start(main_command(self.flags, workdir), log, self.env)
        rc = self.watch(proc, watcher, started + 3600)
        if rc != 0:
            raise RuntimeError(f"the uninterrupted run failed (exit status {rc}); its log ends:\n{tail(log)}")
        timings = measure(watcher, workdir, time.monotonic() - started)

        def ms(value):
            return "not seen" if value is None else f"{1000 * value:.0f} ms"

        self.say(f"A: done in {timings.seconds:.1f} s: {timings.epochs} epochs of {timings.steps_per_epoch} steps; "
                 f"per step {ms(timings.step)}, validation {ms(timings.validation)}, checkpoint save "
                 f"{ms(timings.save)} (medians)")
        return workdir, timings

    def killed(self, timings: Timings) -> tuple[str, list[str], bool]:
        """The run in B, killed as planned and resumed; (workdir, one line per kill, whether all landed)."""
        workdir = os.path.join(self.root, "B")
        plan = plan_kills(self.kills, timings, random.Random(self.seed))
        self.say("plan: " + "; ".join(f"kill {i + 1} in {k.describe()}" for i, k in enumerate(plan)))
        limit = max(300.0, 5 * timings.seconds)
        spe, total = timings.steps_per_epoch, timings.total_steps
        reports, attempt = [], 0
        for i, target in enumerate(plan):
            attempt += 1
            log = os.path.join(self.root, f"B.{attempt}.log")
            stale = tmp_identities(workdir)
            watcher = Watcher(log, workdir, stale)
            self.say(f"B attempt {attempt}: started (log {log}); aiming kill {i + 1} at {target.describe()}")
            proc = start(main_command(self.flags, workdir), log, self.env)

            def reached(w: Watcher, target=target) -> bool:
                if target.phase == "save":  # orbax's temporary folder of that step, or (missed) the finished one
                    return target.step in w.tmp_seen or (target.step in w.final_seen and target.step not in w.earlier)
                return w.step is not None and w.step >= target.step and w.step != w.resumed  # trained here

            rc = self.watch(proc, watcher, time.monotonic() + limit, reached)
            if rc is None and target.delay:
                time.sleep(target.delay)
                rc = proc.poll()
            if rc is not None:
                self.check_exit(rc, log, attempt)
                self.say(f"B attempt {attempt}: finished before kill {i + 1} could land; "
                         f"{len(reports)} of {self.kills} kills landed")
                return workdir, reports, False
            watcher.poll()
            phase, line, tmp_before = watcher.phase(spe, total), watcher.last_line, sorted(watcher.tmp)
            at = time.monotonic() - watcher.t0
            rc = kill(proc)
            left = sorted(new_tmp(workdir, stale))
            if rc != -signal.SIGKILL:
                raise RuntimeError(f"attempt {attempt}: exit status {rc} where -9 (the kill) was expected; its log "
                                   f"ends:\n{tail(log)}")
            if target.phase == "save" and target.step not in watcher.tmp_seen:
                phase += f" (missed the save of step {target.step}: it finished within one poll)"
            resumed = f" (resumed at step {watcher.resumed})" if watcher.resumed is not None else " (from the start)"
            report = (f"kill {i + 1}/{self.kills}: {at:.2f} s into attempt {attempt}{resumed}, aimed at "
                      f"{target.describe()}, "
                      f"landed in {phase}; tmp checkpoint "
                      + (f"left behind: {', '.join(left)}" if left else
                         f"existing: {', '.join(tmp_before)}" if tmp_before else "none")
                      + f"; newest log line: {line[:110]!r}")
            reports.append(report)
            self.say(report)
        return workdir, reports, True

    def check_exit(self, rc: int, log: str, attempt: int) -> None:
        if rc != 0:
            raise RuntimeError(f"attempt {attempt} exited with status {rc}; its log ends:\n{tail(log)}")

    def finish(self, workdir: str, attempt: int, timings: Timings) -> None:
        log = os.path.join(self.root, f"B.{attempt}.log")
        self.say(f"B attempt {attempt}: runs to the end (log {log})")
        watcher = Watcher(log, workdir, tmp_identities(workdir))
        proc = start(main_command(self.flags, workdir), log, self.env)
        self.check_exit(self.watch(proc, watcher, time.monotonic() + 3600), log, attempt)
        step = watcher.resumed
        self.say(f"B attempt {attempt}: done; " + (
            "it did not resume (no checkpoint was left)" if step is None else
            f"Resumed at step {step} of {timings.total_steps} "
            f"(epoch {min(step // timings.steps_per_epoch + 1, timings.epochs)} of {timings.epochs})"))


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [--kills K] [--seed S] [--root DIR] [--atol X] "
                                           "[-- UNET_JAX_MAIN_FLAGS...]")
    parser.add_argument("--kills", type=int, default=5, help="kill -9 this many times (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="of the kill moments (default 0)")
    parser.add_argument("--root", help="an empty or new folder for the runs and logs (default: a new temporary one)")
    parser.add_argument("--atol", type=float, default=0.0,
                        help="largest difference accepted between metrics (default 0: identical)")
    parser.add_argument("--poll", type=float, default=0.005, help="seconds between looks at the log and checkpoints")
    parser.add_argument("--no_cache", action="store_true", help="compile anew in every run (slower restarts)")
    args = parser.parse_args(own)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    if any(f == "--workdir" or f.startswith("--workdir=") for f in flags):
        parser.error("leave --workdir out of the training flags: the soak runs in ROOT/A and ROOT/B")
    if not any(f.startswith("--config=") or f == "--config" for f in flags):
        flags = DEMO_FLAGS + flags
    return args, flags


def _kills(n: int) -> str:
    return f"{n} kill{'' if n == 1 else 's'}"


def main(argv: list[str] | None = None) -> int:
    args, flags = parse(sys.argv[1:] if argv is None else argv)
    root = os.path.abspath(args.root) if args.root else tempfile.mkdtemp(prefix="kill_soak_")
    os.makedirs(root, exist_ok=True)
    if any(os.path.exists(os.path.join(root, name)) for name in ("A", "B")):
        print(f"error: {root} holds an earlier soak (A/ or B/); give a new --root", file=sys.stderr)
        return 2
    soak = Soak(flags, root, args.kills, args.seed, args.atol, args.poll, not args.no_cache)
    print(f"kill soak: {_kills(args.kills)} (seed {args.seed}) of python -m unet_jax.main {' '.join(flags)}; "
          f"runs under {root}", flush=True)
    try:
        a, timings = soak.reference()
        b, reports, all_landed = soak.killed(timings)
        if all_landed:
            soak.finish(b, len(reports) + 1, timings)
    except (RuntimeError, TimeoutError) as e:
        print(f"kill soak: FAILED: {e}", flush=True)
        return 1
    result = compare_runs(a, b, args.atol)
    counts = ", ".join(f"{n} values of {file}" for file, n in result.compared.items())
    soak.say(f"compared {counts} (metrics.csv without seconds)")
    for line in reports:
        print("  " + line)
    if result.differences:
        for line in result.differences[:20]:
            print(f"  differs: {line}")
        print(f"kill soak: FAILED: {len(result.differences)} values differ after {_kills(len(reports))}, first "
              f"{result.differences[0]}", flush=True)
        return 1
    exact = ("final metrics identical" if result.identical else
             f"final metrics equal within {args.atol:g} (largest difference {result.max_abs_diff:.3g})")
    if not all_landed:
        print(f"kill soak: FAILED: only {len(reports)} of {args.kills} kills landed before the run ended "
              f"({exact}); try another --seed or a longer run", flush=True)
        return 1
    print(f"kill soak: {_kills(len(reports))} survived, {exact}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

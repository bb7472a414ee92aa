"""Running the caloforge command in a subprocess, signalling it and checking how it ended.

The fault and reliability tests send real signals to real processes.  Each run starts in a
session of its own, so that a test can signal its whole process group as a terminal's Ctrl-C
does, and clean up whatever the run left.  The process tree is read from Linux's /proc, which
also finds descendants that started sessions of their own (torchrun's ranks, tune's training
subprocesses).  Imported by name (``import processes``), like ``toy_family``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CLI = [sys.executable, "-m", "caloforge"]
"""The command line of ``caloforge``, run by the interpreter of the tests."""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200",
       "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(TESTS)) if p)}
"""The environment of a run: one thread per process (the tests share the cores), wide help text,
and tests/ on the path so that a run can import the test-only model family (``toy_family``)."""

def start(args: Sequence[object], cwd: Path, env: dict[str, str] | None = None,
          preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """Start ``caloforge ARGS`` in ``cwd`` in a session of its own, with text pipes for its output.

    ``preexec_fn`` runs in the child before the command (a resource limit, say).
    """

    def child_setup() -> None:
        # A shell without job control starts background jobs with SIGINT ignored, and Python then
        # keeps it ignored: give the child the default disposition, as a terminal would, so these
        # tests do not depend on how pytest itself was started.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen([*CLI, *map(str, args)], cwd=cwd, env=env or ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=child_setup)


def wait_for(p: subprocess.Popen, condition: Callable[[], object], timeout: float = 60, interval: float = 0.02,
             each: Callable[[], object] | None = None) -> None:
    """Poll until ``condition()`` holds; fail if the process ends first or ``timeout`` seconds pass.

    ``each`` runs before every check of the process (to keep track of its process tree, say).
    """
    t0 = time.monotonic()
    while not condition():
        if each is not None:
            each()
        if p.poll() is not None:
            raise AssertionError(f"the run ended (rc {p.returncode}) before the moment to signal it: "
                                 + p.stderr.read()[-2000:])
        assert time.monotonic() - t0 < timeout, "timed out waiting for the moment to signal the run"
        time.sleep(interval)


def finish(p: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """Wait for the run to end, then kill what is left of its process group; returns (exit code, output)."""
    try:
        p.wait(timeout=timeout)
    finally:
        try:  # orphaned worker processes of a killed run hold the pipes: end them (this test started them)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = p.communicate(timeout=10)
    return p.returncode, out + err


def children() -> dict[int, list[int]]:
    """Every process's children, by parent pid, from /proc."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int) -> set[int]:
    """``pid`` and all its descendants (whatever session they run in)."""
    kids, out, todo = children(), set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(kids.get(p, []))
    return out


def cmdline(pid: int) -> str:
    """The start of the process's command line, for messages; ``?`` once it has gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def alive(pid: int) -> bool:
    """True while the process runs (a zombie has ended: init reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def has_open(pid: int, path: Path) -> bool:
    """True once the process holds ``path`` open: its work on that file has begun."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def temps(d: Path) -> list[str]:
    """The temporary files (``*.tmp``) under ``d``, relative to it: a run under way, or one that left litter."""
    return sorted(str(f.relative_to(d)) for f in d.rglob("*.tmp"))


def clean_exit(rc: int, text: str, expected: int) -> None:
    """The run ended with the ``expected`` exit code, without a traceback, and one ``error:`` line said why."""
    assert rc == expected, text[-3000:]
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, text[-3000:]


class Run:
    """A CLI run whose process tree is watched, so that nothing of it may outlive it unnoticed."""

    def __init__(self, args: Sequence[object], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.p = start(args, cwd, env)
        self.seen: set[int] = {self.p.pid}
        self.err = ""  # stderr read so far (the progress lines say where the run is)

    def stderr(self) -> str:
        """Everything the run has written to stderr so far, read without blocking."""
        fd = self.p.stderr.fileno()
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 65536):  # the pipe itself: the text wrapper has buffered nothing
                self.err += chunk.decode(errors="replace")
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(fd, True)
        return self.err

    def watch(self) -> set[int]:
        """Add the run's current process tree to the processes seen; returns them all."""
        self.seen |= tree(self.p.pid)
        return self.seen

    def wait_for(self, condition: Callable[[], object], timeout: float = 120) -> None:
        """Poll until ``condition()`` holds, watching the process tree meanwhile."""
        wait_for(self.p, condition, timeout=timeout, interval=0.05, each=self.watch)
        self.watch()

    def workers(self) -> list[int]:
        """The run's live descendants, main process excluded."""
        return sorted(p for p in self.watch() - {self.p.pid} if alive(p))

    def fault(self, fault: str, worker: int | None = None) -> None:
        """Deliver ``fault``: ``group-int`` is SIGINT to the process group (a terminal's Ctrl-C),
        ``main-int`` SIGINT to the main process only (``kill -INT PID``), ``main-term`` SIGTERM to the
        main process (Slurm, HTCondor, Kubernetes, ``kill``), anything else SIGKILL of ``worker``
        (the out-of-memory killer)."""
        self.watch()
        if fault == "group-int":
            os.killpg(self.p.pid, signal.SIGINT)
        elif fault == "main-int":
            os.kill(self.p.pid, signal.SIGINT)
        elif fault == "main-term":
            os.kill(self.p.pid, signal.SIGTERM)
        else:
            assert worker is not None, "no worker to kill"
            os.kill(worker, signal.SIGKILL)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        """Wait for the run to end; fail if any process of it is still alive. Returns (exit code, output)."""
        try:
            out, err = self.p.communicate(timeout=timeout)
            err = self.err + err
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise
        left = self.leftovers()
        self.kill_all()
        assert not left, f"processes of the run left behind: {left}\n{err[-2000:]}"
        return self.p.returncode, out + err

    def leftovers(self, grace: float = 5.0) -> list[str]:
        """The processes seen that are still alive after ``grace`` seconds, with their command lines."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not any(alive(p) for p in self.seen):
                return []
            time.sleep(0.1)
        return [f"{p}: {cmdline(p)}" for p in self.seen if alive(p)]

    def kill_all(self) -> None:
        """SIGKILL every process seen (the test started them all)."""
        for p in self.seen:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass

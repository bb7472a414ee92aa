"""Child processes that die with their parent, however the parent stops.

A worker pool, torchrun's ranks or a training subprocess must not outlive the process
that started them: after a signal to the parent alone, its crash or its ``kill -9``
they would be reparented to init and run (or block on a pipe) for good.  Two guards:

* Linux's ``prctl(PR_SET_PDEATHSIG)``: the kernel signals the child when the thread
  that forked it exits (immediate, but Linux-only and tied to that thread);
* a watchdog thread that notices the parent vanish (``os.getppid()`` changes, or the
  parent's pid is gone): portable, within :data:`POLL_S`.

A process started by caloforge with :func:`child_env` arms both at start-up through
:func:`arm_from_env` (the CLI calls it), so the guard follows ``python -m caloforge``
subprocesses without new arguments.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["ENV", "set_parent_death_signal", "die_with_parent", "child_env", "arm_from_env"]

ENV = "CALOFORGE_PARENT_PID"
POLL_S = 0.5
PR_SET_PDEATHSIG = 1
GRACE_S = 60.0  # after a graceful signal, the most a child may take to stop before it is ended


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` when the parent exits (Linux); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: no find_library subprocess
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> None:
    """Arm both guards in this (child) process: ``sig`` when the parent goes.

    ``parent_pid``: the process whose end counts (default: the current parent; give the
    real one when a fork server stands between).  With a catchable ``sig`` (SIGTERM) the
    child stops as on that signal, and is ended :data:`GRACE_S` later if it has not.
    """
    ppid = os.getppid()
    parent = parent_pid or ppid
    set_parent_death_signal(sig)
    if os.getppid() != ppid or not _alive(parent):  # the parent went before the guard was armed
        _lost(sig)

    def watch() -> None:
        while os.getppid() == ppid and _alive(parent):
            time.sleep(POLL_S)
        _lost(sig)

    threading.Thread(target=watch, name="caloforge-lifeline", daemon=True).start()


def _lost(sig: int) -> None:
    os.kill(os.getpid(), sig)
    if sig != signal.SIGKILL:  # a graceful stop that does not finish is cut short
        time.sleep(GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)


def child_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) telling a ``python -m caloforge`` child to die with this process."""
    return {**(os.environ if env is None else env), ENV: str(os.getpid())}


def arm_from_env(sig: int = signal.SIGTERM) -> bool:
    """Arm :func:`die_with_parent` when this process was started with :func:`child_env` by its parent."""
    value = os.environ.get(ENV, "")
    if not value.isdigit() or int(value) != os.getppid():
        return False  # not started that way, or the parent is already gone (then ppid differs: stop)
    die_with_parent(sig, int(value))
    return True

"""Stop signals that are never lost and never land in the middle of a write.

Python's default SIGINT handler raises :class:`KeyboardInterrupt` at whatever bytecode
runs next.  When that is a ``__del__`` or a weakref callback (h5py frees objects all
the time) the exception is printed as "Exception ignored …" and swallowed, and a run
that was asked to stop finishes with exit 0.  Inside :func:`handle_signals` the
handler also records the interrupt, so :func:`check` (called between blocks of work)
and the end of the block re-raise it if it was swallowed; inside :func:`deferred`
(appending rows, renaming a finished file) it only records it, so a file never holds
half a write.

Batch systems stop a job with SIGTERM (Slurm, HTCondor, Kubernetes, ``kill``) and a
closed terminal sends SIGHUP: the CLI treats both exactly like Ctrl-C (one mechanism,
one ``KeyboardInterrupt``), and remembers which signal it was so that the exit code is
128 + its number (130 for SIGINT, 143 for SIGTERM).  SIGUSR1 is the batch system's
early warning (``#SBATCH --signal=B:USR1@300``): it stops nothing, it is only recorded
(:func:`take_warning`), and training answers it with a checkpoint.

>>> with handle_sigint():
...     with deferred():
...         pass  # an append here completes even if Ctrl-C arrives
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

__all__ = ["handle_sigint", "handle_signals", "deferred", "check", "interrupted", "last_signal", "exit_code",
           "take_warning", "held", "record", "ignore_stop_signals", "STOP_SIGNALS", "WARNING_SIGNAL"]

# the signals that stop a run cleanly; SIGHUP where the platform has it
STOP_SIGNALS: tuple[int, ...] = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP"))
                                      if s is not None)
WARNING_SIGNAL = getattr(signal, "SIGUSR1", None)

_pending: int | None = None  # the stop signal that arrived and has not been acted on
_last: int | None = None  # the stop signal last acted on (survives the block: the CLI's exit code)
_warning = False  # SIGUSR1 arrived and nobody took it yet
_defer_depth = 0


def _handler(signum, frame) -> None:
    global _pending, _last
    if _pending is None:
        _pending = signum
    _last = _pending
    if _defer_depth == 0:
        raise KeyboardInterrupt


def _warn_handler(signum, frame) -> None:
    global _warning
    _warning = True


def interrupted() -> bool:
    """True when a stop signal arrived inside :func:`handle_signals` and is still pending."""
    return _pending is not None


def last_signal() -> int | None:
    """The stop signal that interrupted the run (SIGINT for a ``KeyboardInterrupt`` of unknown cause)."""
    return _last


def exit_code(default: int = 130) -> int:
    """128 + the number of the signal that stopped the run (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + _last if _last is not None else default


def take_warning() -> bool:
    """True once per SIGUSR1 (the batch system's "time is nearly up"): the caller checkpoints."""
    global _warning
    warned, _warning = _warning, False
    return warned


def check() -> None:
    """Raise :class:`KeyboardInterrupt` if a stop signal is pending (a safe point)."""
    if _pending is not None and _defer_depth == 0:
        raise KeyboardInterrupt


@contextmanager
def handle_signals(signals: Sequence[int] = STOP_SIGNALS, warning: bool = True) -> Iterator[None]:
    """Install the recording handler for ``signals`` for the block (main thread only; nests).

    A signal that was swallowed inside the block is raised when the block ends.  Where
    a signal is ignored (``nohup``, a background job) it stays ignored.  With
    ``warning``, SIGUSR1 (whose default would kill the process) is recorded for
    :func:`take_warning` instead.
    """
    global _pending, _last, _warning
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for s in signals:
        current = signal.getsignal(s)
        if current is not _handler and current != signal.SIG_IGN:
            old[s] = current
    if WARNING_SIGNAL is not None and warning and signal.getsignal(WARNING_SIGNAL) == signal.SIG_DFL:
        old[WARNING_SIGNAL] = signal.SIG_DFL
    if not old:  # nested inside another block (or everything ignored): that block is in charge
        yield
        return
    outermost = not any(signal.getsignal(s) is _handler for s in STOP_SIGNALS)
    if outermost:
        _pending, _last, _warning = None, None, False
    old_hook = sys.unraisablehook
    for s in old:
        signal.signal(s, _warn_handler if s == WARNING_SIGNAL else _handler)
    sys.unraisablehook = _quiet_hook(old_hook)
    try:
        yield
        check()  # swallowed somewhere (a __del__, a callback): act on it now
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        sys.unraisablehook = old_hook
        if outermost:
            _pending = None


def handle_sigint() -> "contextmanager":
    """:func:`handle_signals` for SIGINT only (library code: the CLI adds SIGTERM and SIGHUP)."""
    return handle_signals((signal.SIGINT,), warning=False)


def _quiet_hook(old_hook):
    """No "Exception ignored … KeyboardInterrupt" noise: the interrupt is recorded and acted on."""
    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            old_hook(unraisable)
    return hook


@contextmanager
def deferred() -> Iterator[None]:
    """A critical section: a stop signal inside it is raised when it ends, not in the middle."""
    with held():
        yield
    check()


@contextmanager
def held() -> Iterator[None]:
    """Record stop signals without raising, for the whole block: the code polls :func:`interrupted`
    at its own safe points (training: between iterations, so that it can write a checkpoint)."""
    global _defer_depth
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1


def record(signum: int) -> None:
    """Note that ``signum`` stopped the run (caught by other code, e.g. torch's elastic agent)."""
    global _last
    _last = int(signum)


def ignore_stop_signals() -> None:
    """Once a stop is being acted on, a second signal (or one still queued) must not turn the clean
    exit into a death by signal half-way through."""
    for s in STOP_SIGNALS:
        try:
            signal.signal(s, signal.SIG_IGN)
        except (ValueError, OSError):
            pass

"""Ctrl-C that is never lost and never lands in the middle of a write.

Python's default SIGINT handler raises :class:`KeyboardInterrupt` at whatever bytecode
runs next.  When that is a ``__del__`` or a weakref callback (h5py frees objects all
the time) the exception is printed as "Exception ignored …" and swallowed, and a run
that was asked to stop finishes with exit 0.  Inside :func:`handle_sigint` the
handler also records the interrupt, so :func:`check` (called between blocks of work)
and the end of the block re-raise it if it was swallowed; inside :func:`deferred`
(appending rows, renaming a finished file) it only records it, so a file never holds
half a write.

>>> with handle_sigint():
...     with deferred():
...         pass  # an append here completes even if Ctrl-C arrives
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["handle_sigint", "deferred", "check", "interrupted"]

_pending = False  # a SIGINT arrived and has not been acted on
_defer_depth = 0


def _handler(signum, frame) -> None:
    global _pending
    _pending = True
    if _defer_depth == 0:
        raise KeyboardInterrupt


def interrupted() -> bool:
    """True when a SIGINT arrived inside :func:`handle_sigint` and is still pending."""
    return _pending


def check() -> None:
    """Raise :class:`KeyboardInterrupt` if an interrupt is pending (a safe point)."""
    if _pending and _defer_depth == 0:
        raise KeyboardInterrupt


@contextmanager
def handle_sigint() -> Iterator[None]:
    """Install the recording SIGINT handler for the block (main thread only; nests).

    A SIGINT that was swallowed inside the block is raised when the block ends.
    Where SIGINT is ignored (``nohup``, a background job) it stays ignored.
    """
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGINT)
    if old is _handler or old == signal.SIG_IGN:
        yield
        return
    _pending = False
    old_hook = sys.unraisablehook
    signal.signal(signal.SIGINT, _handler)
    sys.unraisablehook = _quiet_hook(old_hook)
    try:
        yield
        check()  # swallowed somewhere (a __del__, a callback): act on it now
    finally:
        signal.signal(signal.SIGINT, old)
        sys.unraisablehook = old_hook
        _pending = False


def _quiet_hook(old_hook):
    """No "Exception ignored … KeyboardInterrupt" noise: the interrupt is recorded and acted on."""
    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            old_hook(unraisable)
    return hook


@contextmanager
def deferred() -> Iterator[None]:
    """A critical section: a SIGINT inside it is raised when it ends, not in the middle."""
    global _defer_depth
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
    check()

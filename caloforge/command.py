"""How a ``caloforge`` command runs in its process: a :class:`~caloforge.errors.CaloforgeError`
becomes one red line on stderr and its exit code, a stop signal (Ctrl-C, SIGTERM, SIGHUP)
becomes "interrupted" and 128 + the signal, and the process ends with the parent that
started it (tune, the torchrun launcher).  The CLI and the other entry points (a tuning
trial's process) share it.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import typer
from rich.console import Console

from caloforge.errors import CaloforgeError

__all__ = ["err_console", "fail", "user_errors", "mark_entry_point", "run_as_command"]

err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> None:
    """Print one red line to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True)
    raise typer.Exit(code)


def user_errors(fn: Callable) -> Callable:
    """Decorator: CaloforgeError → one-line message + its exit code (2, or 4 for a dead worker);
    Ctrl-C, SIGTERM, SIGHUP → "interrupted" + exit 128 + the signal (130, 143, 129)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from caloforge import interrupt, lifeline

        lifeline.arm_from_env()  # started by a caloforge parent (tune, the torchrun launcher): end with it
        try:
            # a stop signal swallowed by a __del__ is re-raised, not lost; SIGTERM/SIGHUP act as Ctrl-C
            with interrupt.handle_signals():
                result = fn(*args, **kwargs)
            if _ENTRY_POINT:  # the process only exits now: a stop signal arriving during the
                interrupt.ignore_stop_signals()  # interpreter's teardown must not kill a finished run
            return result
        except CaloforgeError as exc:
            fail(str(exc).replace("\n", " "), code=exc.exit_code)
        except KeyboardInterrupt:
            # the stop is being acted on: a second signal (or one still queued) must not turn this
            # clean exit into a death by signal half-way through
            interrupt.ignore_stop_signals()
            if "TORCHELASTIC_RUN_ID" not in os.environ:  # a training rank: its launcher says it, once
                err_console.print("[bold red]error:[/] interrupted", soft_wrap=True, markup=True)
            sys.stdout.flush()
            sys.stderr.flush()
            # every with-block of the command has unwound (files renamed or removed, worker processes
            # ended); threads still computing (a feature pass, FPD) are abandoned rather than joined
            os._exit(interrupt.exit_code())

    return wrapper


_ENTRY_POINT = False  # True when this process is a command (not a library caller)


def mark_entry_point() -> None:
    """Say that this process is a command: its work done, it only exits (see :func:`user_errors`)."""
    global _ENTRY_POINT
    _ENTRY_POINT = True


def run_as_command(fn: Callable[[], None]) -> None:
    """Run ``fn`` as this process's whole work, the way a ``caloforge`` command runs (errors as one
    line and their exit code, stop signals as 128 + the signal), and exit with its status."""
    mark_entry_point()
    try:
        user_errors(fn)()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)

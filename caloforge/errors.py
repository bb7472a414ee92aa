"""Exceptions that carry a one-line, user-facing message.

The CLI prints any :class:`CaloforgeError` as a single coloured line and exits with
its ``exit_code`` (2: bad input; 4: :class:`WorkerDied`); everything else is a bug and
keeps its traceback.
"""


class CaloforgeError(Exception):
    """Base class: bad input a user can fix.  ``str(exc)`` is the whole message."""

    exit_code = 2


class GeometryError(CaloforgeError, ValueError):
    """A geometry specification is missing, malformed or inconsistent."""


class DataError(CaloforgeError, ValueError):
    """A shower file is missing, unreadable, or violates the format."""


class ConfigError(CaloforgeError, ValueError):
    """A configuration file or option has an unknown key or a bad value."""


class OutputError(CaloforgeError, OSError):
    """An output path cannot be written: a directory, no permission, a full disk."""


class EngineError(ConfigError):
    """An external simulation engine (Geant4) cannot be built, started, or stopped unexpectedly."""


class WorkerDied(CaloforgeError):
    """A worker process (simulation worker, training process) died under the run, usually killed
    from outside (the out-of-memory killer, ``kill -9``).  The CLI exits with :attr:`exit_code`;
    a simulation keeps the showers finished so far in ``FILE.partial.h5``."""

    exit_code = 4
    keeps_partial = True  # what was written is whole (it was appended before the worker died)


def describe_exit(code: int | None) -> str:
    """Why a process ended, from its exit status (negative: the signal that killed it).

    >>> describe_exit(-9)
    'killed by SIGKILL (e.g. the out-of-memory killer)'
    >>> describe_exit(1)
    'exit code 1'
    """
    import signal

    if code is None:
        return "ended for an unknown reason"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (e.g. the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class Geant4Died(EngineError):
    """A Geant4 process stopped answering in the middle of a run (killed, crashed).  One line, exit 2;
    a simulation keeps the showers finished so far in ``FILE.partial.h5``."""

    keeps_partial = True

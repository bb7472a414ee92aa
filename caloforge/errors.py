"""Exceptions that carry a one-line, user-facing message.

The CLI prints any :class:`CaloforgeError` as a single coloured line and exits with
code 2; everything else is a bug and keeps its traceback.
"""


class CaloforgeError(Exception):
    """Base class: bad input a user can fix.  ``str(exc)`` is the whole message."""


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

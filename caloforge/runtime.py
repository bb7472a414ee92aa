"""Where and how fast things run: devices, thread counts, progress display.

One vocabulary for devices everywhere (``cpu | cuda | cuda:N | auto``), thread
defaults taken from the CPUs this process may actually use (its affinity mask and
its cgroup CPU quota, not the host's core count, which on a shared machine makes
every intra-op pool thrash), and one progress helper: a rich bar on a terminal,
plain log lines at a steady interval in pipes, files and CI.

>>> resolve_device("cpu")
device(type='cpu')
>>> usable_cpus() >= 1
True
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TextIO

from caloforge.errors import ConfigError

__all__ = ["DEVICES_HELP", "resolve_device", "usable_cpus", "default_threads", "set_threads", "threads",
           "Progress"]

DEVICES_HELP = "cpu, cuda, cuda:N or auto (cuda when available, else cpu)"


def resolve_device(device: "str | object | None" = "cpu"):
    """``cpu | cuda | cuda:N | auto`` (or a ``torch.device``) → ``torch.device``.

    Raises :class:`ConfigError` with one line for an unknown name, or CUDA asked for on
    a machine without it.

    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    caloforge.errors.ConfigError: device 'tpu' is not one of cpu, cuda, cuda:N or auto (cuda when available, else cpu)
    """
    import torch

    if device is None:
        device = "cpu"
    if isinstance(device, torch.device):
        dev = device
    else:
        text = str(device).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if text != "cpu" and not (text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
            raise ConfigError(f"device {device!r} is not one of {DEVICES_HELP}")
        dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device}: no CUDA GPU is available on this machine (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r} is not one of {DEVICES_HELP}")
    return dev


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota) limit, or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota (≥ 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def default_threads(threads: int | None = None) -> int:
    """The intra-op thread count to use: ``threads`` if given (≥ 1), else :func:`usable_cpus`."""
    if threads is None or threads == 0:
        return usable_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"--threads must be a positive integer (0 = all usable CPUs), got {threads!r}")
    return threads


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (see :func:`default_threads`) and return the number set."""
    import torch

    n = default_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Temporarily run torch with ``n`` intra-op threads (None/0: all usable CPUs)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield set_threads(n)
    finally:
        torch.set_num_threads(before)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-:--:--"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of one task: a rich bar on a terminal, plain lines every ``interval`` s elsewhere.

    ``update(done, info)`` reports ``done`` of ``total`` units (iterations, showers…)
    with a free-text ``info`` (losses, χ²); ``advance(n)`` adds ``n`` units to those done.  ``enabled=False`` prints nothing; a
    ``budget_s`` caps the ETA when a time budget ends the task before ``total``.

    >>> import io
    >>> out = io.StringIO()
    >>> with Progress("train", total=10, stream=out, interval=0.0) as p:
    ...     p.update(5, "loss 0.1")
    >>> out.getvalue().startswith("train: 5/10 (50%)")
    True
    """

    def __init__(self, name: str, total: int, *, start: int = 0, enabled: bool = True, unit: str = "it",
                 budget_s: float | None = None, stream: TextIO | None = None, interval: float = 30.0,
                 tty: bool | None = None) -> None:
        self.name, self.total, self.start, self.unit = name, int(total), int(start), unit
        self.enabled, self.budget, self.interval = enabled, budget_s, interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.t0 = time.monotonic()
        self.last = -math.inf
        self.done = self.start
        self._bar = None

    def __enter__(self) -> "Progress":
        if self.enabled and self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn

            self._bar = RichProgress(TextColumn(f"[bold]{self.name}[/]"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                     TextColumn("{task.fields[info]}"), console=Console(file=self.stream))
            self._task = self._bar.add_task(self.name, total=self.total, completed=self.start, rate="", info="")
            self._bar.start()
        return self

    def _rate_eta(self) -> tuple[float, float, float]:
        elapsed = time.monotonic() - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        if self.budget is not None:
            eta = min(eta, max(self.budget - elapsed, 0.0))
        return elapsed, rate, eta

    def update(self, done: int, info: str = "", force: bool = False) -> None:
        """Report progress; drawn at most every 0.2 s (bar) or ``interval`` s (plain lines)."""
        self.done = int(done)
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < (0.2 if self._bar is not None else self.interval):
            return
        self.last = now
        elapsed, rate, eta = self._rate_eta()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{rate:.3g} {self.unit}/s  ETA {_hms(eta)}",
                             info=info)
        else:
            pct = 100.0 * self.done / self.total if self.total else 100.0
            line = (f"{self.name}: {self.done}/{self.total} ({pct:.0f}%)  {rate:.3g} {self.unit}/s  "
                    f"elapsed {_hms(elapsed)}  ETA {_hms(eta)}")
            print(line + (f"  {info}" if info else ""), file=self.stream, flush=True)

    def advance(self, n: int = 1, info: str = "", force: bool = False) -> None:
        """Report ``n`` more units done (for work that arrives in pieces: blocks of showers, steps)."""
        self.update(self.done + int(n), info, force=force)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def plain_log(stream: TextIO | None = None) -> Callable[[str], None]:
    """A ``log(message)`` callable that writes whole lines to ``stream`` (stderr by default)."""
    out = stream if stream is not None else sys.stderr
    return lambda message: print(message, file=out, flush=True)

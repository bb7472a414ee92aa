"""The process a trial trains in: ``python -m caloforge.tuning.trial_process REQUEST``.

``REQUEST`` is a :class:`caloforge.launch.TrainingRequest` as JSON, carried out through the
Python API (:func:`caloforge.launch.run_training`, i.e. :func:`caloforge.train.train`).  A
crash or a kill of the training ends the trial, not the worker.  For a data-parallel trial
the process is the launcher of its ranks, and each rank runs this same entry point with the
request for one process.  It behaves as a ``caloforge`` command (one error line and its exit code,
128 + the signal when stopped, ends with the worker that started it), so the worker reads
its fate from the exit status and the run directory, as for any training process.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

from caloforge.launch import TrainingRequest, run_training

__all__ = ["command", "main"]

MODULE = "caloforge.tuning.trial_process"  # not __name__: that is "__main__" in the process itself


def command(request: TrainingRequest) -> list[str]:
    """The command line that trains ``request`` in a process of its own."""
    return [sys.executable, "-m", MODULE, request.to_json()]


def _train(request: TrainingRequest) -> None:
    rank_request = dataclasses.replace(request, nproc=1)
    result = run_training(request, rank_args=["-m", MODULE, rank_request.to_json()])
    if result is None:
        return
    # a diverged run ends like a finished one: the trial is scored by its last good checkpoint
    print(f"{result.message}; run directory {result.run_dir}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    from caloforge.command import run_as_command

    args = list(sys.argv[1:] if argv is None else argv)
    request = TrainingRequest.from_json(args[0])
    run_as_command(lambda: _train(request))


if __name__ == "__main__":
    main()

"""Training as one process or as N data-parallel ones under torch's elastic launcher.

:class:`TrainingRequest` is one ``caloforge train`` call as typed data; :func:`run_training`
carries it out.  With ``nproc > 1`` this process becomes the launcher: it starts the
ranks (each runs ``rank_args``, the same request without ``nproc``), waits for them
and turns their failure into one cause.  When one rank dies the others fail in the same
monitoring interval (stopped by the agent, or losing their peers), so the cause is the
rank that failed by itself, not the first timestamp:

* a rank stopped by a stop signal checkpointed: the run was interrupted (``KeyboardInterrupt``);
* a rank killed from outside (the out-of-memory killer): :class:`WorkerDied` (exit 4);
* a rank that failed by itself: :class:`RankFailed` (exit 1).

A rank whose collective failed because a peer vanished exits with :data:`PEER_LOST`
instead of a traceback: a consequence, which the launcher does not report as a cause.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from caloforge.errors import CaloforgeError

__all__ = ["PEER_LOST", "RankFailed", "TrainingRequest", "run_training", "launch_data_parallel", "peer_lost",
           "without_nproc"]

PEER_LOST = 3  # exit code of a training process that stopped because another one vanished


class RankFailed(CaloforgeError):
    """A training process of a data-parallel run failed by itself; the others were stopped."""

    exit_code = 1


@dataclass(frozen=True)
class TrainingRequest:
    """One training call, as ``caloforge train`` takes it (see ``caloforge train --help``)."""

    config: str
    data: Path
    output: Path
    resume: bool = False
    device: str = "cpu"
    max_time: str | None = None
    max_iterations: int | None = None
    budget_clock: str | None = None
    seed: int | None = None
    threads: int = 0  # 0: the CPUs this process may use, divided among the ranks of this machine
    nproc: int = 1
    progress: bool = True
    init_from: Path | None = None  # a trained model's checkpoint or run directory to start from
    init_partial: bool = False

    def to_json(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> "TrainingRequest":
        fields: dict[str, Any] = json.loads(text)
        init = fields.get("init_from")
        return cls(**{**fields, "data": Path(fields["data"]), "output": Path(fields["output"]),
                      "init_from": Path(init) if init is not None else None})


def peer_lost(exc: BaseException) -> bool:
    """Whether a collective failed because a peer process went away (gloo / NCCL / c10d store)."""
    import torch.distributed as torch_dist

    text = str(exc).lower()
    return isinstance(exc, torch_dist.DistError) or any(
        word in text for word in ("gloo", "connection closed", "connection reset", "broken pipe", "nccl"))


def without_nproc(argv: Sequence[str]) -> list[str]:
    """A command line without its ``--nproc N`` / ``--nproc=N`` (what each rank runs).

    >>> without_nproc(["train", "--nproc", "2", "-c", "x", "--nproc=3"])
    ['train', '-c', 'x']
    """
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch_data_parallel(nproc: int, rank_args: Sequence[str]) -> None:
    """Run ``python rank_args…`` as ``nproc`` processes under torch's elastic launcher and wait for them.

    Raises ``KeyboardInterrupt`` when the run was stopped by a signal (the ranks checkpointed),
    :class:`WorkerDied` when a rank was killed from outside, :class:`RankFailed` when one failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from caloforge import interrupt, lifeline
    from caloforge.errors import WorkerDied, describe_exit

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"caloforge-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the one line below says it all
    # the ranks run in sessions of their own: they end with this launcher however it ends (arm_from_env)
    os.environ[lifeline.ENV] = str(os.getpid())
    try:
        elastic_launch(config, entrypoint=sys.executable)(*rank_args)
    except SignalException as exc:
        # the agent caught the stop signal (it installs its own handlers), sent SIGTERM to the ranks,
        # which checkpointed and stopped: an interruption like any other
        interrupt.record(exc.sigval)
        raise KeyboardInterrupt from None
    except ChildFailedError as exc:
        # the root cause: a process that failed by itself, not one the agent stopped afterwards (SIGTERM)
        # nor one that stopped because it lost its peers (PEER_LOST): those all fail within the same
        # monitoring interval, so their timestamps cannot tell cause from consequence
        own = ({r: f for r, f in exc.failures.items() if f.exitcode not in (-15, PEER_LOST)}
               or {r: f for r, f in exc.failures.items() if f.exitcode != -15} or exc.failures)
        rank, failure = min(own.items(), key=lambda item: (item[1].timestamp, item[0]))
        code = failure.exitcode
        if code is not None and code - 128 in interrupt.STOP_SIGNALS:  # a rank stopped by a signal, checkpointed
            interrupt.record(code - 128)
            raise KeyboardInterrupt from None
        if code is not None and code < 0:  # killed from outside (the OOM killer): not the code's fault
            raise WorkerDied(f"training process {rank} of {nproc} {describe_exit(code)}; the other processes "
                             "were stopped; continue from the last checkpoint with --resume") from None
        raise RankFailed(f"training process {rank} of {nproc} failed ({describe_exit(code)}); the other "
                         "processes were stopped") from None


def run_training(request: TrainingRequest, rank_args: Sequence[str]):
    """Carry out ``request``: train here, or (``nproc > 1``) launch ``nproc`` ranks running ``rank_args``.

    Returns the :class:`caloforge.train.TrainResult` of this process, or None when it launched the
    ranks.  A rank whose peer vanished exits with :data:`PEER_LOST` (``SystemExit``)."""
    from caloforge.models import load_config
    from caloforge.runtime import usable_cpus
    from caloforge.train import train

    nproc = request.nproc
    if nproc < 1:
        raise CaloforgeError(f"--nproc must be ≥ 1, got {nproc}")
    if nproc > 1:
        cfg = load_config(request.config)  # one error line here rather than one per process
        if cfg.training.batch_size % nproc:
            raise CaloforgeError(f"training.batch_size {cfg.training.batch_size} must be divisible by --nproc {nproc}")
        if not Path(request.data).is_file():
            raise CaloforgeError(f"{request.data}: no such file")
        launch_data_parallel(nproc, rank_args)
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    threads = request.threads
    if not threads and world > 1:
        threads = max(1, usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    # train() checks the config, --seed, --max-time and --max-iterations before it reads the data
    try:
        return train(request.config, request.data, request.output, resume=request.resume, device=request.device,
                     max_time=request.max_time, max_iterations=request.max_iterations,
                     budget_clock=request.budget_clock, progress=request.progress, seed=request.seed,
                     threads=threads or None, init_from=request.init_from, init_partial=request.init_partial)
    except RuntimeError as exc:
        if world > 1 and peer_lost(exc):  # a consequence of another rank's failure, not a cause
            # the launcher names the process that failed first, in one line
            raise SystemExit(PEER_LOST) from None
        raise

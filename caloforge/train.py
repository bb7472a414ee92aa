"""The training loop: budgets, logging, checkpoints, scoring, resume, data-parallel.

It knows no architecture: the family (``model.name``, :mod:`caloforge.models`) fits
its preprocessing, builds its optimisers and takes one training step at a time;
this loop feeds it seeded batches and keeps the books.  A run directory::

    RUN_DIR/
      run.json                  config, data fingerprints, and one entry per call (threads, device, processes)
      checkpoints/iter-000500/  model.safetensors, optimizer.safetensors, config.json (caloforge.checkpoint)
      best -> checkpoints/iter-…   the checkpoint with the best score so far
      scores.csv                every checkpoint's scores (chi2_etot, the model's validation metrics)
      log.csv                   the model's losses every ``log_every`` iterations
      tensorboard/              the same scalars for TensorBoard

Checkpoints are atomic, so a kill at any moment leaves only complete ones.  All
randomness comes from explicit ``torch.Generator`` objects saved with the weights
and optimiser moments, so ``resume=True`` continues bit-identically on the CPU with
the same thread count (other thread counts agree to float rounding, not bits:
matrix products sum in another order).

Training showers are held in memory, or — ``training.stream`` (``auto`` for files larger
than 4 × ``training.stream_pool_mb``) — streamed from the file through a shuffle pool of
HDF5 blocks (:mod:`caloforge.streaming`) whose position is checkpointed, so memory stays
bounded by the pool whatever the file size and resume stays bit-identical; the model's
preprocessing is then fitted on the pool's first content (a random subsample of blocks).

Each checkpoint is scored by the χ² between the total-energy distributions of
held-out showers and showers generated for the same conditions
(:func:`caloforge.evaluate.metrics.total_energy_chi2`), plus any validation metric
the model reports (e.g. a flow's ``val_nll``); ``training.select_by`` picks the one
that chooses ``best`` (lower is better).

Under ``torchrun`` (or ``--nproc``), each process trains on its slice of every
global batch (:mod:`caloforge.distributed`); only rank 0 writes.

``init_from`` starts the run from a trained model's weights (:mod:`caloforge.fine_tuning`,
``training.fine_tune``); ``run.json`` records the source, so ``resume`` continues from the
run's own checkpoints and never initialises again.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch

from caloforge import checkpoint as ckpt
from caloforge import interrupt
from caloforge import distributed as dist
from caloforge.config import BUDGET_CLOCKS, RunConfig, TrainingConfig, flatten, parse_duration
from caloforge.errors import ConfigError, DataError
from caloforge.io import ShowerData, atomic_path, check_showers, read_showers
from caloforge.models.base import load_config

if TYPE_CHECKING:
    from caloforge.fine_tuning import InitSource
    from caloforge.geometry import Geometry
    from caloforge.models.base import ShowerModel

__all__ = ["TrainResult", "StopTraining", "TrainingContext", "train", "split_validation", "split_indices", "load_config", "parse_duration",
           "TrainingConfig", "RunConfig", "latest_checkpoint"]

latest_checkpoint = ckpt.latest_checkpoint
# keys that may change between a run and its --resume (budgets and logging only)
RESUMABLE_CHANGES = {"training.max_iterations", "training.max_time", "training.budget_clock", "training.log_every", "training.tensorboard",
                     "training.keep_checkpoints", "description"}
# keys newer than some run directories: a run without them was trained in memory
ADDED_KEYS = {"training.stream", "training.stream_pool_mb", "training.fine_tune.freeze",
              "training.fine_tune.learning_rate_scale", "training.fine_tune.warmup_iterations",
              "training.fine_tune.preprocessing"}


@dataclass
class TrainResult:
    """What :func:`train` did: where the best checkpoint is and why it stopped."""

    run_dir: Path
    best_checkpoint: Path | None
    best_score: float
    best_iteration: int | None
    last_checkpoint: Path | None
    iterations: int
    history: list[tuple[int, float]]
    stopped: str  # "completed", "max_time", "diverged", "stopped" (by on_checkpoint); a stop signal raises
    # KeyboardInterrupt after a checkpoint of the last iteration
    message: str = ""

    @property
    def best_path(self) -> Path | None:
        """Alias of ``best_checkpoint`` (RUN_DIR/best)."""
        return self.best_checkpoint


class StopTraining(Exception):
    """Raised by an ``on_checkpoint`` hook to end :func:`train` cleanly after that checkpoint
    (e.g. a hyperparameter search pruning the trial); its message becomes ``TrainResult.message``."""


@dataclass(frozen=True)
class TrainingContext:
    """One training call, resolved: what :func:`train`'s arguments mean once checked.

    The loop reads everything from here; it knows the model only through its family's
    interface (:mod:`caloforge.models.base`), never an architecture."""

    config: RunConfig
    data: ShowerData | str | Path  # the training showers, or the file holding them
    validation: ShowerData | str | Path | None  # None: hold out ``training.validation_fraction`` of ``data``
    run_dir: Path
    resume: bool
    device: torch.device
    geometry: Geometry  # of ``config.model.geometry``
    budget_s: float | None  # this call's time budget, on the ``training.budget_clock``
    total_iterations: int
    progress: bool
    threads: int  # torch's intra-op threads in this process
    on_checkpoint: Callable[[int, dict], None] | None = None
    init_from: Path | None = None  # a trained model's checkpoint (or run) directory to start from
    init_partial: bool = False  # carry over only the tensors that match by name and shape

    @property
    def training(self) -> TrainingConfig:
        return self.config.training

    @property
    def source(self) -> str:
        """How messages name the training showers."""
        return str(self.data) if not isinstance(self.data, ShowerData) else "training data"


@dataclass(frozen=True)
class _TrainingShowers:
    """The showers of a run once read: the training ones (in memory, or an open file and its training
    rows when streamed), the validation ones that score checkpoints, and the training fingerprint."""

    training: ShowerData | tuple[Any, np.ndarray]
    validation: ShowerData
    fingerprint: dict


def split_validation(data: ShowerData, fraction: float, seed: int) -> tuple[ShowerData, ShowerData]:
    """Random (train, validation) split; the same seed gives the same split.

    >>> d = ShowerData(np.arange(1.0, 11.0), np.ones((10, 3)))
    >>> tr, va = split_validation(d, 0.2, seed=0)
    >>> len(tr), len(va), sorted(np.r_[tr.incident_energy, va.incident_energy]) == list(np.arange(1.0, 11.0))
    (8, 2, True)
    """
    train_rows, val_rows = split_indices(len(data), fraction, seed)
    return data.select(train_rows), data.select(val_rows)


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sorted (training, validation) row numbers of :func:`split_validation` for ``n`` rows.

    >>> [r.tolist() for r in split_indices(5, 0.4, seed=1)]
    [[1, 2, 3], [0, 4]]
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(fraction * n))), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _score_subset(n_val: int, tc: TrainingConfig) -> np.ndarray | None:
    """Positions of the validation rows kept for scoring (a fixed, seeded subset keeps it cheap)."""
    if n_val <= tc.score_max_showers:
        return None
    return np.sort(np.random.default_rng(tc.seed).permutation(n_val)[: tc.score_max_showers])


def _streams(tc: TrainingConfig, data, geo) -> bool:
    """Whether to stream the training showers (``training.stream``; ``auto``: when a file's
    showers would take more than 4 × ``stream_pool_mb`` in memory as float32)."""
    if isinstance(data, ShowerData) or tc.stream == "false":
        return False
    if tc.stream == "true":
        return True
    from caloforge.io import count_showers

    return count_showers(data) * geo.n_voxels * 4 > 4 * tc.stream_pool_mb * 2**20


def _open_stream(path: Path, validation, tc: TrainingConfig, geo, source: str):
    """(open file, sorted training rows, validation showers, training fingerprint) without reading
    the training showers into memory: one pass over the file validates every row, sums the
    training showers' energy for the fingerprint and collects the validation rows."""
    from caloforge.io import ShowerFile

    reader = ShowerFile(path, geo)
    try:
        n = len(reader)
        if n < 2:
            raise DataError(f"{source}: need at least 2 showers to train, got {n}")
        energy, _ = reader.columns()
        val_rows = None
        if validation is None:
            train_rows, val_rows = split_indices(n, tc.validation_fraction, tc.seed)
            keep = _score_subset(len(val_rows), tc)
            if keep is not None:
                val_rows = val_rows[keep]
        else:
            train_rows = np.arange(n)
        is_train = np.zeros(n, bool)
        is_train[train_rows] = True
        deposit, parts = 0.0, []
        step = max(1, (64 << 20) // (4 * reader.n_voxels))
        for lo in range(0, n, step):
            part = reader.read(lo, min(lo + step, n), validate=True)
            mask = is_train[lo:lo + len(part)]
            deposit += float(np.asarray(part.showers[mask], np.float64).sum())
            if val_rows is not None:
                want = val_rows[(val_rows >= lo) & (val_rows < lo + len(part))]
                if len(want):
                    parts.append(part.select(want - lo))
            del part
        if val_rows is not None:
            val_data = ShowerData.concatenate(parts)
        else:
            val_data = _showers(validation, geo, "validation data")
            keep = _score_subset(len(val_data), tc)
            if keep is not None:
                val_data = val_data.select(keep)
        fingerprint = {"n_showers": int(len(train_rows)), "n_voxels": reader.n_voxels,
                       "sum_incident_energy": float(energy[train_rows].sum()), "sum_energy_deposit": deposit}
        return reader, train_rows, val_data, fingerprint
    except BaseException:
        reader.close()
        raise


def _showers(data: ShowerData | str | Path, geo, what: str) -> ShowerData:
    if not isinstance(data, ShowerData):
        return read_showers(data, geometry=geo)
    return check_showers(data, what, geo.n_voxels)


def _fingerprint(data: ShowerData) -> dict:
    e = np.asarray(data.incident_energy, dtype=np.float64)
    return {"n_showers": len(data), "n_voxels": data.n_voxels, "sum_incident_energy": float(e.sum()),
            "sum_energy_deposit": float(np.asarray(data.showers, dtype=np.float64).sum())}


def _tensors(data: ShowerData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    showers = torch.as_tensor(np.ascontiguousarray(data.showers, dtype=np.float32)).to(device)
    energy = torch.as_tensor(np.asarray(data.incident_energy, dtype=np.float64)).to(device)
    conditions = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)).to(device) for k, v in data.conditions.items()}
    return showers, energy, conditions


# ----------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------
def _score(model, validation: ShowerData, seed: int, device: torch.device, batch_size: int = 10_000) -> dict:
    """E_tot χ² of showers generated for the validation conditions, plus the model's validation metrics."""
    from caloforge.evaluate.metrics import total_energy_chi2
    from caloforge.models.base import Batch

    was_training = model.training
    model.eval()
    rng = torch.Generator(device=device).manual_seed(seed)
    e = validation.incident_energy
    etot = np.empty(len(e))
    extra: dict[str, float] = {}
    try:
        with torch.no_grad():
            for lo in range(0, len(e), batch_size):
                part = validation.select(slice(lo, lo + batch_size))
                cond = {"incident_energy": part.incident_energy, **part.conditions}
                etot[lo:lo + len(part)] = model.sample(cond, rng).double().sum(1).cpu().numpy()
                s, en, c = _tensors(part, device)
                for k, v in model.validation_metrics(Batch(s, en, c)).items():
                    extra[k] = extra.get(k, 0.0) + float(v) * len(part) / len(e)
    finally:
        model.train(was_training)
    ref = np.asarray(validation.showers, dtype=np.float64).sum(1)
    chi2 = float(total_energy_chi2(e, ref, e, etot)) if np.all(np.isfinite(etot)) else math.inf
    scores = {"chi2_etot": chi2 if math.isfinite(chi2) else math.inf}
    scores.update({k: (v if math.isfinite(v) else math.inf) for k, v in extra.items()})
    return scores


def _best(history: list[dict], select_by: str) -> tuple[int | None, float]:
    """(iteration, score) of the best checkpoint: the lowest finite score among the complete ones
    (``ShowerModel.complete``: a two-stage model's first-stage checkpoints stop competing once the
    last stage has one), among all while none is complete."""
    complete = [h for h in history if h.get("complete", True)]
    history = [(h["iteration"], h["scores"].get(select_by, math.inf)) for h in (complete or history)]
    finite = [(s, i) for i, s in history if math.isfinite(s)]
    if not finite:
        return (history[0][0], math.inf) if history else (None, math.inf)
    s, i = min(finite)  # ties → earliest iteration
    return i, s


# ----------------------------------------------------------------------------------
# Run-directory books
# ----------------------------------------------------------------------------------
def _check_resumable(run_dir: Path, run_info: dict) -> None:
    old = json.loads((run_dir / "run.json").read_text())
    written, b = flatten(old.get("config", {})), flatten(run_info["config"])
    try:  # a run written before a key existed ran with what is now its default, as its checkpoints load
        a = flatten(load_config(old.get("config", {})).to_dict())
    except ConfigError:
        a = written
    for key in sorted(set(a) | set(b)):
        if key in ADDED_KEYS and key not in written:
            continue  # a run started before the key existed: see _train (it resumes in memory)
        if key not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
            raise ConfigError(f"{run_dir}: cannot resume, config key {key} was {a.get(key)!r}, now {b.get(key)!r}")
    for part in ("data", "validation"):
        if old.get(part) != run_info[part]:
            raise DataError(f"{run_dir}: cannot resume, the {part} showers differ from the ones the run started with")


def _write_scores(run_dir: Path, history: list[dict], select_by: str, best_iteration: int | None) -> None:
    names = ["chi2_etot"] + sorted({k for h in history for k in h["scores"]} - {"chi2_etot"})
    with atomic_path(run_dir / "scores.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["iteration", *names, "best"])
            for h in history:
                w.writerow([h["iteration"], *(repr(h["scores"].get(n, math.nan)) for n in names),
                            int(h["iteration"] == best_iteration)])


def _truncate_log(path: Path, columns: tuple[str, ...], iteration: int) -> None:
    """Keep only complete log rows up to ``iteration`` (after a kill mid-write)."""
    if not path.exists():
        return
    keep = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) == len(columns) and row[0].isdigit() and int(row[0]) <= iteration:
                keep.append(row)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows(keep)


def _prepare_run_dir(run_dir: Path, run_info: dict, resume: bool) -> list[tuple[int, Path]]:
    existing = ckpt.list_checkpoints(run_dir)
    if resume and not (run_dir / "run.json").exists():
        what = "does not exist" if not run_dir.exists() else "holds no training run (no run.json)"
        raise ConfigError(f"{run_dir}: cannot resume, the run directory {what}; drop --resume to start a new run")
    if (run_dir / "run.json").exists():
        if not resume:
            raise ConfigError(f"{run_dir}: already holds a training run; pass --resume to continue it, "
                              "or choose a new output directory")
        _check_resumable(run_dir, run_info)
    elif existing:
        raise ConfigError(f"{run_dir}: has checkpoints but no run.json; not a caloforge run directory")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a directory; choose another output directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{run_dir}: cannot write the run directory ({exc.strerror or exc})") from None
    for stale in list(run_dir.glob("checkpoints/.tmp-*")) + list(run_dir.glob(".best-*")):
        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
    return existing


def _training_cost(wall_s: float, device: torch.device, threads: int) -> dict[str, Any]:
    """What training has cost up to a checkpoint: wall seconds over every call (a resume adds to the
    time of the checkpoint it continues), the device kind and processes; a leaderboard prints it
    as CPU or GPU minutes (wall × processes)."""
    return {"wall_s": round(float(wall_s), 3), "device": "gpu" if device.type == "cuda" else device.type,
            "processes": dist.world_size(), "threads": threads}


def _record_call(run_dir: Path, run_info: dict, session: dict) -> None:
    path = run_dir / "run.json"
    info = json.loads(path.read_text()) if path.exists() else dict(run_info)
    info.setdefault("calls", []).append(session)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(info, indent=1))


# ----------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------
def train(
    config: RunConfig | str | Path | Mapping,
    data: ShowerData | str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    max_time: str | float | None = None,
    max_iterations: int | None = None,
    budget_clock: str | None = None,
    progress: bool = True,
    validation: ShowerData | str | Path | None = None,
    seed: int | None = None,
    threads: int | None = None,
    on_checkpoint: Callable[[int, dict], None] | None = None,
    init_from: str | Path | None = None,
    init_partial: bool = False,
) -> TrainResult:
    """Train (or, with ``resume``, continue training) a model; see the module docstring.

    ``data`` is a shower file or :class:`ShowerData`; without ``validation`` a fraction
    ``training.validation_fraction`` is held out (split by ``training.seed``) to score
    checkpoints.  ``max_time`` ('10m', seconds) and ``max_iterations`` override the
    config's budgets; the time budget counts this call only, in wall seconds or, with
    ``budget_clock="cpu"`` (or ``training.budget_clock``), in CPU seconds of this process.  Stops early, cleanly,
    when a loss becomes NaN/inf (``stopped == "diverged"``), keeping the last good
    checkpoint.  ``seed`` overrides ``training.seed``; ``threads`` sets torch's
    intra-op threads (None: the CPUs this process may use).

    ``init_from`` (a checkpoint directory such as ``RUN_DIR/best``, or a run directory) starts from
    that model's weights: all of them, or with ``init_partial`` those whose names and shapes match
    (:mod:`caloforge.fine_tuning`); ``training.fine_tune`` freezes parts, scales and warms up the
    learning rate and keeps or refits the preprocessing.

    ``on_checkpoint(iteration, scores)`` is called on rank 0 after each checkpoint is
    written and scored; raising :class:`StopTraining` there ends the run after that
    checkpoint with ``stopped == "stopped"`` (all ranks stop on the same iteration).
    """
    from caloforge.geometry import load_geometry
    from caloforge.runtime import resolve_device, threads as use_threads

    cfg = load_config(config)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, seed=seed))
    if budget_clock is not None:
        if budget_clock not in BUDGET_CLOCKS:
            raise ConfigError(f"--budget-clock must be one of {', '.join(BUDGET_CLOCKS)}, got {budget_clock!r}")
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, budget_clock=budget_clock))
    tc = cfg.training
    dev = resolve_device(device)
    budget_s = parse_duration(max_time) if max_time is not None else (
        parse_duration(tc.max_time) if tc.max_time is not None else None)
    total = int(max_iterations) if max_iterations is not None else tc.max_iterations
    if total <= 0:
        raise ConfigError(f"--max-iterations must be positive, got {total}")
    launched = dist.init_from_env(dev)
    world = dist.world_size()
    if tc.batch_size % world:
        raise ConfigError(f"training.batch_size {tc.batch_size} must be divisible by the {world} processes")
    geo = load_geometry(cfg.model.geometry)

    with use_threads(threads) as n_threads:
        try:
            return _train(TrainingContext(
                config=cfg, data=data, validation=validation, run_dir=Path(run_dir), resume=resume, device=dev, geometry=geo, budget_s=budget_s,
                total_iterations=total, progress=progress, threads=n_threads, on_checkpoint=on_checkpoint,
                init_from=Path(init_from) if init_from is not None else None, init_partial=bool(init_partial)))
        finally:
            if launched:
                dist.shutdown()


def _started_config(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("config", {})
    except (OSError, ValueError):
        return {}


def _started_from(run_dir: Path) -> dict | None:
    """The ``init_from`` record of a run's ``run.json`` (None: it started from scratch)."""
    try:
        return json.loads((run_dir / "run.json").read_text()).get("init_from")
    except (OSError, ValueError):
        return None


def _init_source(ctx: TrainingContext) -> tuple[InitSource | None, bool]:
    """(the trained model this run starts from or None, whether only matching tensors carry over).

    A new run reads ``ctx.init_from``; a resumed one that has a checkpoint needs no source, and one
    killed before its first checkpoint re-reads the source that ``run.json`` records (refusing weights
    that changed since).  Read before the showers: a wrong source costs no data reading."""
    from caloforge.fine_tuning import check_family, read_source

    run_dir, path, partial = ctx.run_dir, ctx.init_from, ctx.init_partial
    if ctx.resume:
        recorded = _started_from(run_dir)
        if path is not None and (recorded is None or ckpt.model_dir(path).resolve() != Path(recorded["source"])):
            was = f"from {recorded['source']}" if recorded else "from scratch"
            raise ConfigError(f"{run_dir}: cannot resume with --init-from {path}: the run started {was}")
        if recorded is None or ckpt.list_checkpoints(run_dir):
            return None, False
        path, partial = Path(recorded["source"]), bool(recorded.get("partial", False))
    if path is None:
        return None, False
    source = read_source(path)
    if ctx.resume and source.sha256 != _started_from(run_dir).get("sha256"):
        raise DataError(f"{source.path}: the weights changed since the run {run_dir} started from them; "
                        "start a new run")
    check_family(source, ctx.config.model)
    return source, partial


def _train(ctx: TrainingContext) -> TrainResult:
    """Read (or open, when streamed) the showers, then run the loop."""
    tc, run_dir, geo, source = ctx.training, ctx.run_dir, ctx.geometry, ctx.source
    if ctx.resume and not (run_dir / "run.json").exists():  # before minutes of reading data
        _prepare_run_dir(run_dir, {}, ctx.resume)
    init = _init_source(ctx)
    reader = None
    if ctx.resume and tc.stream != "false" and "stream" not in _started_config(run_dir).get("training", {"stream": 0}):
        # started before streaming existed: in memory, as then
        ctx = dataclasses.replace(ctx, config=dataclasses.replace(
            ctx.config, training=dataclasses.replace(tc, stream="false")))
        tc = ctx.training
    if _streams(tc, ctx.data, geo):  # only a pool of the training showers is ever in memory
        reader, train_rows, val_data, train_print = _open_stream(Path(ctx.data), ctx.validation, tc, geo, source)
        prepared = _TrainingShowers((reader, train_rows), val_data, train_print)
    else:
        data = _showers(ctx.data, geo, source)
        if len(data) < 2:
            raise DataError(f"{source}: need at least 2 showers to train, got {len(data)}")
        if ctx.validation is None:
            train_data, val_data = split_validation(data, tc.validation_fraction, tc.seed)
        else:
            train_data, val_data = data, _showers(ctx.validation, geo, "validation data")
        keep = _score_subset(len(val_data), tc)
        if keep is not None:
            val_data = val_data.select(keep)
        prepared = _TrainingShowers(train_data, val_data, _fingerprint(train_data))
    try:
        return _train_loop(ctx, prepared, *init)
    finally:
        if reader is not None:
            reader.close()


def _build_model(ctx: TrainingContext, showers: torch.Tensor, energy: torch.Tensor, conditions: dict[str, torch.Tensor],
                 init: InitSource | None, partial: bool, kept_state: dict | None = None) -> tuple[ShowerModel, dict | None]:
    """The model, seeded: fitted on the training showers, or built with the source's fitted state
    (``training.fine_tune.preprocessing``), then given the source's weights; the ``init_from``
    record for ``run.json`` (None without a source).  ``kept_state``: a resumed run that kept its
    source's preprocessing is built with its checkpoint's fitted state (the source may be gone)."""
    from caloforge import fine_tuning
    from caloforge.errors import CaloforgeError
    from caloforge.models.base import build, fit  # imports every family: only when training

    cfg, tc = ctx.config, ctx.training
    keep = init is not None and fine_tuning.keeps_preprocessing(init, cfg.model, tc.fine_tune)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        if kept_state is not None:
            model = build(cfg.model, kept_state, ckpt.model_loader)
        elif keep:
            try:
                model = build(cfg.model, init.meta["state"], ckpt.model_loader)
            except (CaloforgeError, KeyError, TypeError, ValueError, IndexError) as exc:
                raise ConfigError(f"--init-from {init.describe()}: its fitted preprocessing does not suit this "
                                  f"run's model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                  "set training.fine_tune.preprocessing: refit") from None
        else:
            model = fit(cfg.model, showers.cpu(), energy.cpu(), {k: v.cpu() for k, v in conditions.items()},
                        ctx.source, ckpt.model_loader)
    if init is None:
        return model, None
    carried = fine_tuning.carry_weights(model, init, partial)
    if dist.is_main():
        import sys

        print(carried.line(init) + ("; preprocessing kept" if keep else "; preprocessing refitted"),
              file=sys.stderr, flush=True)
    record = {"source": str(init.path), "sha256": init.sha256, "family": init.family, "geometry": init.geometry,
              "iteration": init.meta.get("iteration"), "partial": partial,
              "preprocessing": "keep" if keep else "refit", "carried": carried.carried, "fresh": carried.fresh}
    return model, record


def _train_loop(ctx: TrainingContext, prepared: _TrainingShowers, init: InitSource | None = None,
                partial: bool = False) -> TrainResult:
    """Iterations, checkpoints, scores and the run directory's books, for any model family."""
    from caloforge import fine_tuning
    from caloforge.models.base import BatchSource
    from caloforge.runtime import Progress

    cfg, tc, run_dir, dev, resume = ctx.config, ctx.training, ctx.run_dir, ctx.device, ctx.resume
    train_data, val_data = prepared.training, prepared.validation
    total, budget_s, on_checkpoint = ctx.total_iterations, ctx.budget_s, ctx.on_checkpoint
    main = dist.is_main()
    run_info = {"config": cfg.to_dict(), "data": prepared.fingerprint, "validation": _fingerprint(val_data)}
    existing = []
    if main:
        existing = _prepare_run_dir(run_dir, run_info, resume)
    dist.barrier()
    if not main:
        existing = ckpt.list_checkpoints(run_dir)

    # --- model, optimisers, random generators ------------------------------------------
    data_rng = torch.Generator().manual_seed(tc.seed + 1)  # the same on every rank: one global batch
    if isinstance(train_data, ShowerData):
        showers, energy, conditions = _tensors(train_data, dev)
        batches = BatchSource(showers, energy, conditions, tc.batch_size, data_rng)
    else:  # streamed: the preprocessing is fitted on the pool's first content (StreamingBatchSource.fit_sample)
        from caloforge.streaming import StreamingBatchSource, pool_rows_for

        reader, rows = train_data
        batches = StreamingBatchSource(reader, rows, tc.batch_size, data_rng, seed=tc.seed + 4, device=dev,
                                       pool_rows=pool_rows_for(tc.stream_pool_mb, reader.n_voxels))
        sample = batches.fit_sample()
        showers, energy, conditions = sample.showers, sample.incident_energy, sample.conditions
    started_from = _started_from(run_dir) if resume else None
    kept_state = None
    if resume and existing and started_from is not None and started_from.get("preprocessing") == "keep":
        kept_state = ckpt.read_config(existing[-1][1])[0]["state"]
    model, init_record = _build_model(ctx, showers, energy, conditions, init, partial, kept_state)
    del showers, energy, conditions
    model.to(dev).train()
    started_from = init_record or started_from
    if tc.fine_tune.freeze and started_from is None:
        raise ConfigError("training.fine_tune.freeze: freezing needs trained weights to keep; start the run "
                          "with --init-from")
    frozen = fine_tuning.freeze(model, tc.fine_tune.freeze)
    optimizers = model.configure_optimizers()
    fine_tuning.exclude_frozen(optimizers)
    lr_scale = fine_tuning.LearningRateScale(optimizers, tc.fine_tune.learning_rate_scale,
                                             tc.fine_tune.warmup_iterations)
    if init_record is not None:
        run_info["init_from"] = {**init_record, "frozen": frozen}
    noise_rng = torch.Generator(device=dev).manual_seed(tc.seed + 2 + 7919 * dist.rank())
    loss_names = tuple(model.loss_names)
    columns = ("iteration", "elapsed_s", *loss_names)

    iteration, history = 0, []
    prior_wall_s = 0.0  # training wall time of the calls before this one (a resumed run)
    best_iteration, best_score = None, math.inf
    last_ckpt: Path | None = None
    if resume and existing:
        last_ckpt = existing[-1][1]
        meta = ckpt.load_training_state(last_ckpt, model, optimizers, dev)
        ckpt.set_rng_state(data_rng, meta["rng"]["data"])
        batches.load_state(meta.get("data_stream", {}))
        noise_states = meta["rng"]["noise"]
        if isinstance(noise_states, str) or len(noise_states) != dist.world_size():
            raise ConfigError(f"{run_dir}: the run was trained with {1 if isinstance(noise_states, str) else len(noise_states)} "
                              f"process(es); resume it with the same number")
        ckpt.set_rng_state(noise_rng, noise_states[dist.rank()])
        iteration = int(meta["iteration"])
        history = list(meta["history"])
        prior_wall_s = float((meta.get("training_cost") or {}).get("wall_s") or 0.0)
        best_iteration, best_score = _best(history, tc.select_by)
        if main and best_iteration is not None:  # a kill between checkpoint and these updates leaves them stale
            ckpt.point_best(run_dir, run_dir / "checkpoints" / ckpt.checkpoint_name(best_iteration))
            _write_scores(run_dir, history, tc.select_by, best_iteration)
    if main:
        _truncate_log(run_dir / "log.csv", columns, iteration)
        _record_call(run_dir, run_info, {"started_iteration": iteration, "threads": ctx.threads, "device": str(dev),
                                         "processes": dist.world_size(), "torch_version": torch.__version__,
                                         "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def checkpoint(it: int) -> Path:
        nonlocal best_iteration, best_score, history
        noise_states = dist.all_gather_object(ckpt.rng_state(noise_rng))
        path = run_dir / "checkpoints" / ckpt.checkpoint_name(it)
        model.before_checkpoint(batches)  # every rank: the same weights, the same refit
        if main:
            scores = _score(model, val_data, tc.seed + 3, dev)
            if tc.select_by not in scores:
                raise ConfigError(f"training.select_by: {tc.select_by!r} is not a score of this model "
                                  f"(it reports {', '.join(scores)})")
            history = history + [{"iteration": it, "scores": scores, "complete": bool(model.complete)}]
            meta = {"iteration": it, "training": dataclasses.asdict(tc), "select_by": tc.select_by,
                    "score": scores[tc.select_by], "scores": scores, "history": history,
                    "training_cost": _training_cost(prior_wall_s + time.monotonic() - t0, dev, ctx.threads),
                    "rng": {"data": ckpt.rng_state(data_rng), "noise": noise_states}}
            if started_from is not None:  # the model's lineage travels with its weights
                meta["init_from"] = {k: started_from[k] for k in ("source", "sha256", "iteration")}
            if batches.state():  # a streamed source's pool position
                meta["data_stream"] = batches.state()
            ckpt.write_checkpoint(path, model, optimizers=optimizers, meta=meta)
            best_iteration, best_score = _best(history, tc.select_by)
            if best_iteration == it:
                ckpt.point_best(run_dir, path)
            _write_scores(run_dir, history, tc.select_by, best_iteration)
            kept = {ckpt.checkpoint_name(best_iteration)} if best_iteration is not None else set()
            for _, old in ckpt.list_checkpoints(run_dir)[: -tc.keep_checkpoints]:
                if old.name not in kept:
                    shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return path

    writer = log_file = log = None
    if main:
        if tc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=iteration + 1)
        new_log = not (run_dir / "log.csv").exists()
        log_file = open(run_dir / "log.csv", "a", newline="")
        log = csv.writer(log_file)
        if new_log:
            log.writerow(columns)
            log_file.flush()

    t0 = time.monotonic()
    budget_clock = time.process_time if tc.budget_clock == "cpu" else time.monotonic
    b0 = budget_clock()
    stopped, message = "completed", ""
    bar = Progress("train", total, start=iteration, enabled=ctx.progress and main, budget_s=budget_s)
    try:
        # stop signals (Ctrl-C, SIGTERM at a batch job's limit) are acted on between iterations only,
        # with a checkpoint, so that --resume loses nothing; SIGUSR1 asks for a checkpoint and goes on
        with interrupt.handle_sigint(), interrupt.held(), bar:
            while iteration < total:
                lr_scale.iteration = iteration
                losses = model.training_step(batches, optimizers, noise_rng)
                dist.broadcast_buffers(model)
                losses = dist.all_reduce_mean({k: float(v) for k, v in losses.items()}, dev)
                iteration += 1
                bad = [key for key in loss_names if not math.isfinite(losses.get(key, math.nan))]
                if bad:
                    stopped = "diverged"
                    kept = f"; last good checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was written yet"
                    message = (f"training diverged at iteration {iteration}: {bad[0].replace('_', ' ')} is "
                               f"{losses.get(bad[0], math.nan)}{kept}")
                    break
                elapsed = time.monotonic() - t0
                if main and (iteration % tc.log_every == 0 or iteration == total):
                    log.writerow([iteration, f"{elapsed:.3f}"] + [repr(losses[k]) for k in loss_names])
                    log_file.flush()
                    if writer is not None:
                        for k in loss_names:
                            writer.add_scalar(f"loss/{k}", losses[k], iteration)
                time_up, signalled, warned = dist.any_flags(
                    [main and budget_s is not None and budget_clock() - b0 >= budget_s,
                     interrupt.interrupted(), interrupt.take_warning()], dev)
                best_text = f"  best {tc.select_by} {best_score:.4g}" if best_iteration is not None else ""
                bar.update(iteration, "  ".join(f"{k} {losses[k]:+.3g}" for k in loss_names[:2]) + best_text)
                if signalled:
                    stopped = "interrupted"
                    if last_ckpt is None or last_ckpt.name != ckpt.checkpoint_name(iteration):
                        last_ckpt = checkpoint(iteration)
                    break
                if iteration % tc.checkpoint_every == 0 or iteration == total or time_up or warned:
                    last_ckpt = checkpoint(iteration)
                    if main:
                        scores = history[-1]["scores"]
                        if writer is not None:
                            for k, v in scores.items():
                                writer.add_scalar(f"score/{k}", v, iteration)
                            writer.flush()
                        bar.update(iteration, f"{tc.select_by} {scores[tc.select_by]:.4g} "
                                   f"(best {best_score:.4g} @ {best_iteration})", force=True)
                    if on_checkpoint is not None:
                        stop = None
                        if main:
                            try:
                                on_checkpoint(iteration, dict(history[-1]["scores"]))
                            except StopTraining as exc:
                                stop = str(exc) or f"stopped by on_checkpoint after iteration {iteration}"
                        if dist.broadcast_flag(stop is not None, dev):
                            stopped, message = "stopped", stop or f"stopped after iteration {iteration}"
                            break
                if time_up and iteration < total:
                    stopped, message = "max_time", f"time budget reached after iteration {iteration}"
                    break
    finally:
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()

    if stopped == "interrupted":
        if main:
            import signal
            import sys

            name = signal.Signals(interrupt.last_signal() or signal.SIGINT).name
            print(f"{name} at iteration {iteration}: checkpoint {last_ckpt} written; continue with --resume",
                  file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    best_path = run_dir / "best" if best_iteration is not None else None
    if not message:
        message = f"finished {iteration} iterations"
    chi2_history = [(h["iteration"], h["scores"][tc.select_by]) for h in history]
    return TrainResult(run_dir, best_path, best_score, best_iteration, last_ckpt, iteration, chi2_history,
                       stopped, message)

"""The simulator's entry points: :func:`simulate`, :func:`simulate_to_file`, plans and workers.

Reproducibility: showers are made in blocks of a fixed size that depends only on the
geometry; block ``b`` of part ``p`` draws every random number (energies of a range
spec included) from ``default_rng(SeedSequence([seed, p, b]))``.  Workers only decide
*where* a block runs, so the output is bit-identical whatever their number.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from caloforge import interrupt
from caloforge.errors import ConfigError, Geant4Died, WorkerDied, describe_exit
from caloforge.geometry import Geometry, load_geometry
from caloforge.io import CONDITION_NAMES, ShowerData, ShowerWriter
from caloforge.runtime import Progress

from .deposit import Stack, deposit, mip_spots, suppress, visible
from .em import MIN_SPOTS, capped_spots, em_spots, n_spots
from .hadronic import (HADRONIC_SAMPLING_SCALE, hadronic_spots, pi0_showers, sample_em_fraction,
                       sample_hadronic_visible, sample_interaction_depth)
from .units import parse_energy, parse_energy_list, parse_range

__all__ = ["PARTICLES", "ENERGY_SCALES", "DATASET_ENERGY_SCALE", "resolve_energy_scale", "EnergySpec", "Part", "simulate", "simulate_to_file", "simulate_plan", "iter_plan",
           "block_size", "spot_cap", "normalize_particle"]

PARTICLES = {
    "photon": "photon", "gamma": "photon",
    "electron": "electron", "e-": "electron", "e+": "electron", "positron": "electron",
    "pion": "pion", "pi+": "pion", "pi-": "pion", "pi": "pion", "pion+": "pion", "pion-": "pion",
}
PHOTON_CONVERSION_X0 = 9.0 / 7.0  # mean free path of a high-energy photon
FLUSH_SECONDS = 2.0  # finished showers wait at most this long before they reach the file
MAX_SPOTS = 100_000  # spots handled at once: bounds memory (≈ 100 bytes per spot) and page faults

# "visible": the energy seen by the active medium (sampling fraction applied);
# "calibrated": visible energy divided by the layer's sampling fraction, i.e. the energy
# deposited in active + passive material (E_tot / E_inc ≈ 1 minus leakage for EM showers).
ENERGY_SCALES = ("visible", "calibrated")
# the convention of each named geometry's published dataset (README "Energy conventions"):
# CaloChallenge DS1 and DS2/DS3 (Si energy / 0.033), CaloGAN (active + inactive per layer) and
# the ATLAS cells (EM scale) are calibrated; the CLIC (3DGAN) and ILD (BIB-AE) samples store the
# energy in the silicon (the MIP peak of the hit spectrum is visible-energy physics)
DATASET_ENERGY_SCALE = {"ds1-photons": "calibrated", "ds1-pions": "calibrated", "ds2": "calibrated",
                        "ds3": "calibrated", "calogan": "calibrated", "atlas-4layer": "calibrated",
                        "clic": "visible", "ild": "visible"}


def resolve_energy_scale(geometry: Geometry | str, energy_scale: str | None = None) -> str:
    """``energy_scale`` checked, or (``None``) the convention of the geometry's dataset:
    :data:`DATASET_ENERGY_SCALE` for the named geometries, ``"visible"`` for user geometries.

    >>> resolve_energy_scale("ds1-photons"), resolve_energy_scale("clic"), resolve_energy_scale("ild", "calibrated")
    ('calibrated', 'visible', 'calibrated')
    """
    if energy_scale is None:
        name = geometry if isinstance(geometry, str) else geometry.name
        return DATASET_ENERGY_SCALE.get(name, "visible")
    scale = str(energy_scale).strip().lower()
    if scale not in ENERGY_SCALES:
        raise ConfigError(f"unknown energy scale {energy_scale!r}: use visible or calibrated")
    return scale


def normalize_particle(particle: str) -> str:
    """``"gamma"`` → ``"photon"``, ``"pi+"`` → ``"pion"``…; ConfigError if unknown."""
    key = str(particle).strip().lower()
    if key not in PARTICLES:
        raise ConfigError(f"unknown particle {particle!r}: use photon, electron or pion")
    return PARTICLES[key]


# ----------------------------------------------------------------------------------
# What to simulate
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnergySpec:
    """Incident energies: a discrete list (``n`` showers each) or a uniform / log-uniform range (``n`` in all).

    >>> EnergySpec.parse("1GeV:100GeV", log=True)
    EnergySpec(kind='log-uniform', values=(), low=1000.0, high=100000.0)
    >>> EnergySpec.parse("1GeV,2GeV").values
    (1000.0, 2000.0)
    """

    kind: str  # "discrete" | "uniform" | "log-uniform"
    values: tuple[float, ...] = ()
    low: float = 0.0
    high: float = 0.0

    @classmethod
    def discrete(cls, values: Sequence[float]) -> "EnergySpec":
        return cls("discrete", tuple(float(v) for v in values))

    @classmethod
    def uniform(cls, low: float, high: float) -> "EnergySpec":
        return cls("uniform", (), float(low), float(high))

    @classmethod
    def log_uniform(cls, low: float, high: float) -> "EnergySpec":
        return cls("log-uniform", (), float(low), float(high))

    @classmethod
    def parse(cls, text: str, log: bool = False) -> "EnergySpec":
        """``"1GeV,2GeV"`` → discrete; ``"1GeV:100GeV"`` → uniform (log-uniform with ``log``
        or a ``log:`` prefix)."""
        text = str(text).strip()
        if text.lower().startswith("log:"):
            text, log = text[4:], True
        if ":" in text:
            lo, hi = parse_range(text, parse_energy)
            return cls.log_uniform(lo, hi) if log else cls.uniform(lo, hi)
        if log:
            raise ConfigError(f"--log needs an energy range LOW:HIGH, not {text!r}")
        return cls.discrete(parse_energy_list(text))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high, n)
        if self.kind == "log-uniform":
            return np.exp(rng.uniform(math.log(self.low), math.log(self.high), n))
        raise ValueError("discrete specs are expanded, not sampled")


Range = tuple[float, float]


@dataclass(frozen=True)
class Part:
    """A homogeneous piece of a dataset: one particle, energies, direction and impact."""

    particle: str
    energies: np.ndarray | EnergySpec  # explicit per-shower energies, or a range spec
    n: int  # number of showers
    theta: float | Range | np.ndarray | None = None  # rad; None → π/2 (perpendicular)
    phi: float | Range | np.ndarray | None = None
    impact: tuple | None = None  # (x, y) mm at the entrance face; None → centred

    @property
    def has_conditions(self) -> bool:
        return self.theta is not None or self.phi is not None or self.impact is not None


def make_part(particle, energies, n=None, theta=None, phi=None, impact=None) -> Part:
    """One validated :class:`Part` from the arguments of :func:`simulate` (see there)."""
    particle = normalize_particle(particle)
    if n is not None and (int(n) != n or n < 0):
        raise ConfigError(f"number of showers must be a non-negative integer, got {n!r}")
    if isinstance(energies, str):
        energies = EnergySpec.parse(energies)
    if isinstance(energies, EnergySpec):
        if n is None:
            raise ConfigError("a list of energies needs n (showers per energy)" if energies.kind == "discrete"
                              else "an energy range needs n (number of showers)")
        if energies.kind == "discrete":
            energies = energies.values  # listed energies, n showers each (below)
        else:
            if not (0 < energies.low <= energies.high and math.isfinite(energies.high)):
                raise ConfigError(f"bad energy range {energies.low}–{energies.high} MeV")
            return _check_angles(Part(particle, energies, int(n), theta, phi, impact))
    arr = np.atleast_1d(np.asarray(energies, dtype=float))
    if n is not None:  # listed energies with n showers each
        arr = np.repeat(arr, int(n))
    if arr.ndim != 1:
        raise ConfigError("energies must be a 1-d list of incident energies in MeV")
    if arr.size and (not np.all(np.isfinite(arr)) or np.any(arr <= 0)):
        raise ConfigError("incident energies must be positive and finite (MeV)")
    return _check_angles(Part(particle, arr, len(arr), theta, phi, impact))


def _check_angles(part: Part) -> Part:
    lists = {k: np.asarray(v, dtype=float) for k, v in (("theta", part.theta), ("phi", part.phi)) if isinstance(v, list)}
    if lists:  # a list is per-shower values; a tuple is a (low, high) range
        part = replace(part, **lists)
    th = part.theta
    if th is not None:
        vals = np.asarray(th, dtype=float).ravel()
        if not np.all((vals > 0) & (vals < math.pi)):
            raise ConfigError("theta must lie strictly between 0 and π rad (π/2 = perpendicular incidence)")
        if isinstance(th, tuple) and len(th) == 2 and th[1] < th[0]:
            raise ConfigError("theta range must be (low, high) with low ≤ high")
    for name, v in (("theta", part.theta), ("phi", part.phi)):
        if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) != part.n:
            raise ConfigError(f"{name} has {len(v)} values for {part.n} showers")
    if part.impact is not None and len(part.impact) != 2:
        raise ConfigError("impact must be (x, y) in mm")
    return part


# ----------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------
def block_size(geometry: Geometry) -> int:
    """Showers per block (and per random stream): depends on the geometry only, the same for
    every engine, so that every engine draws the same energies, angles and impacts row by row."""
    return int(np.clip(2**20 // geometry.n_voxels, 16, 512))


def piece_size(engine: str = "gflash") -> int | None:
    """Showers per task within a block (None: the whole block).  Geant4 runs a block in pieces:
    a shower costs ~8 ms per GeV there, and a piece is what a stopped run keeps."""
    if engine == "geant4":
        from caloforge.geant4.engine import BLOCK_SIZE

        return BLOCK_SIZE
    return None


def spot_cap(geometry: Geometry) -> int:
    """Most spots placed per shower component: enough to fill the readout, bounded for speed."""
    return int(np.clip(4 * geometry.n_voxels, 1000, 4000))


def stack_spot_cap(stack: Stack) -> int:
    """The spot cap with the material's fitted spot_scale (more spots, same growth law above it)."""
    return max(1, int(round(spot_cap(stack.geometry) * stack.tuning.spot_scale)))


@dataclass(frozen=True)
class _Task:
    """Block ``block`` of part ``stream``: that slice of the part, with its own random stream."""

    stream: int
    block: int
    part: Part
    calibrated: bool = False  # divide the visible energies by the sampling fraction
    rows: tuple[int, int] | None = None  # only these rows of the block (a piece: Geant4)

    @property
    def n(self) -> int:
        """Showers this task makes."""
        return self.part.n if self.rows is None else self.rows[1] - self.rows[0]


def _slice_cond(value, lo: int, hi: int):
    if isinstance(value, np.ndarray) and value.ndim >= 1:
        return value[lo:hi]
    if isinstance(value, tuple) and len(value) == 2 and any(isinstance(v, np.ndarray) for v in value):
        return tuple(np.asarray(v)[lo:hi] if np.ndim(v) else v for v in value)
    return value


def _slice_part(part: Part, lo: int, hi: int) -> Part:
    """Showers ``lo:hi`` of a part (ranges and scalars are shared, per-shower arrays sliced)."""
    energies = part.energies if isinstance(part.energies, EnergySpec) else np.asarray(part.energies, float)[lo:hi]
    return replace(part, energies=energies, n=hi - lo,
                   theta=_slice_cond(part.theta, lo, hi), phi=_slice_cond(part.phi, lo, hi),
                   impact=_slice_cond(part.impact, lo, hi))


def _tasks(parts: Sequence[Part], bsize: int, calibrated: bool = False, piece: int | None = None) -> list[_Task]:
    tasks = []
    for p_idx, part in enumerate(parts):
        if isinstance(part.energies, EnergySpec) and part.energies.kind == "discrete":
            raise ConfigError("a Part with a discrete EnergySpec must list its per-shower energies (np.repeat)")
        for b, lo in enumerate(range(0, part.n, bsize)):
            block = _slice_part(part, lo, min(lo + bsize, part.n))
            if piece is None:
                tasks.append(_Task(p_idx, b, block, calibrated))
            else:
                tasks += [_Task(p_idx, b, block, calibrated, (r, min(r + piece, block.n)))
                          for r in range(0, block.n, piece)]
    return tasks


def _draw(rng: np.random.Generator, value, n: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(n, default)
    if isinstance(value, tuple) and len(value) == 2 and all(np.ndim(v) == 0 for v in value):
        return rng.uniform(float(value[0]), float(value[1]), n)
    return np.broadcast_to(np.asarray(value, dtype=float), (n,)).copy()


# ----------------------------------------------------------------------------------
# The physics of one block
# ----------------------------------------------------------------------------------
def _expected_depth_mm(stack: Stack, particle: str, energy: np.ndarray, cos_tilt: np.ndarray) -> np.ndarray:
    """Depth [mm, from the entrance face along z] of the mean EM shower maximum: ``ln y − 0.5``
    (Rossi), after the conversion length where a photon's shower starts.  Pions use it too (their
    π⁰ showers), which keeps the axis inside the readout of thin calorimeters."""
    t_max = np.log(np.maximum(energy / stack.main.critical_energy, 2.0)) - 0.5
    if particle != "electron":
        t_max = t_max + PHOTON_CONVERSION_X0
    seg, z = stack.locate_depth(t_max * cos_tilt, "X0")
    back = stack.z_front[-1] + stack.thickness[-1]
    return np.where(seg >= 0, z, back) - stack.z_entrance


def _showers(stack: Stack, particle: str, rng: np.random.Generator, energy: np.ndarray, cos_tilt: np.ndarray,
             slope: tuple[np.ndarray, np.ndarray], impact: tuple[np.ndarray, np.ndarray], cap: int) -> np.ndarray:
    """Visible energies (n, n_voxels) of showers along the given axes."""
    n = len(energy)
    Z, Ec = stack.main.Z, stack.main.critical_energy
    if particle in ("photon", "electron"):
        t0 = rng.exponential(PHOTON_CONVERSION_X0, n) if particle == "photon" else np.zeros(n)
        spots = em_spots(rng, energy, t0, Z, Ec, stack.sampling, cap, tuning=stack.tuning)
        showers = visible(rng, stack, deposit(stack, spots, n, cos_tilt, slope, impact), threshold=stack.threshold)
    else:
        s_int = sample_interaction_depth(rng, n)  # first inelastic interaction [λ along the axis]
        total = stack.cum_lambda[-1] / cos_tilt
        interacts = s_int < total
        track = mip_spots(stack, np.minimum(s_int, total), cos_tilt, energy)
        e_track = np.bincount(track.shower, weights=track.weight, minlength=n)
        e_avail = np.where(interacts, np.maximum(energy - e_track, 0.0), 0.0)
        f_em = sample_em_fraction(rng, energy)
        h_visible = sample_hadronic_visible(rng, n)
        # the EM part: a few π⁰ showers starting at and somewhat after the interaction
        owner, e_sub, s_sub = pi0_showers(rng, f_em * e_avail, s_int)
        t_sub = stack.convert(s_sub * cos_tilt[owner], "lambda", "X0") / cos_tilt[owner]
        em = em_spots(rng, e_sub, t_sub, Z, Ec, stack.sampling, cap, shower_index=owner, tuning=stack.tuning)
        had = hadronic_spots(rng, (1.0 - f_em) * e_avail * h_visible, s_int, cap)
        dep_em = deposit(stack, track, n, cos_tilt, slope, impact)
        deposit(stack, em, n, cos_tilt, slope, impact, out=dep_em)
        dep_had = deposit(stack, had, n, cos_tilt, slope, impact)
        # zero suppression acts on the voxel's whole signal, not on each component
        showers = suppress(visible(rng, stack, dep_em, threshold=0.0)
                           + visible(rng, stack, dep_had, HADRONIC_SAMPLING_SCALE, threshold=0.0), stack.threshold)
    return showers


def _block_conditions(stack: Stack, task: _Task, rng: np.random.Generator):
    """Energies, angles and impact points of a block, drawn from its stream (the same for every engine)."""
    part, n = task.part, task.part.n
    energy = part.energies.sample(rng, n) if isinstance(part.energies, EnergySpec) else np.asarray(part.energies, float)
    theta = _draw(rng, part.theta, n, math.pi / 2)
    phi = _draw(rng, part.phi, n, 0.0)
    cos_tilt = np.sin(theta)  # angle between the axis and the layer normal is |π/2 − θ|
    cot = np.cos(theta) / cos_tilt
    slope = (cot * np.cos(phi), cot * np.sin(phi))
    if part.impact is None:  # centre the axis on x = y = 0 at the expected shower maximum
        zc = _expected_depth_mm(stack, part.particle, energy, cos_tilt)
        impact = (-zc * slope[0], -zc * slope[1])
    else:
        impact = (_draw(rng, part.impact[0], n, 0.0), _draw(rng, part.impact[1], n, 0.0))
    return energy, theta, phi, cos_tilt, slope, impact


def _block_rng(task: _Task, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), task.stream, task.block]))


def simulate_block(stack: Stack, task: _Task, seed: int) -> ShowerData:
    """Simulate one block; every random number comes from the block's own stream."""
    rng = _block_rng(task, seed)
    part, n = task.part, task.part.n
    energy, theta, phi, cos_tilt, slope, impact = _block_conditions(stack, task, rng)
    geo, cap = stack.geometry, stack_spot_cap(stack)
    # bound memory: sub-batches of at most MAX_SPOTS spots, drawn in order from the same stream
    est = capped_spots(n_spots(energy, stack.main.Z, stack.sampling) * stack.tuning.spot_factor(energy), MIN_SPOTS, cap)
    est *= 2 if part.particle == "pion" else 1
    showers = np.empty((n, geo.n_voxels), dtype=np.float32)
    lo = 0
    while lo < n:
        hi = lo + max(1, int(np.searchsorted(np.cumsum(est[lo:]), MAX_SPOTS, side="right")))
        sl = slice(lo, hi)
        showers[sl] = _showers(stack, part.particle, rng, energy[sl], cos_tilt[sl], (slope[0][sl], slope[1][sl]),
                               (impact[0][sl], impact[1][sl]), cap)
        lo = hi
    if task.calibrated:  # after the readout threshold and the sampling fluctuations, which are visible-energy physics
        showers /= stack.voxel_fraction.astype(np.float32)
    cond = {"incident_theta": theta, "incident_phi": phi, "impact_x": impact[0], "impact_y": impact[1]}
    return ShowerData(energy, showers, cond)


def simulate_block_geant4(stack: Stack, engine, task: _Task, seed: int) -> ShowerData:
    """One block through Geant4 (:class:`caloforge.geant4.engine.Geant4Engine`): the block's
    conditions as :func:`simulate_block` draws them, then one Geant4 seed per shower."""
    rng = _block_rng(task, seed)
    energy, theta, phi, _, _, impact = _block_conditions(stack, task, rng)
    seeds = rng.integers(1, 2**63 - 1, task.part.n, dtype=np.uint64)
    # a piece of the block: the block's draws, then its rows (so pieces tile the block exactly)
    rows = slice(*task.rows) if task.rows is not None else slice(None)
    impact = (np.broadcast_to(np.asarray(impact[0], float), energy.shape)[rows],
              np.broadcast_to(np.asarray(impact[1], float), energy.shape)[rows])
    energy, theta, phi, seeds = energy[rows], theta[rows], phi[rows], seeds[rows]
    showers, raw = engine.showers(task.part.particle, seeds, energy, theta, phi, impact[0], impact[1])
    cond = {"incident_theta": theta, "incident_phi": phi, "impact_x": impact[0], "impact_y": impact[1]}
    out = ShowerData(energy, showers, cond)
    if raw.n_fast is not None:  # the fast-simulation build: what the model did, for the file's record
        out.fast_stats = fast_stats(raw)
    return out


def fast_stats(raw) -> dict:
    """Counts and CPU times of a block from ``caloforge-g4-fast`` (summed over blocks into the file's attributes)."""
    fast = raw.n_fast > 0
    return {"fast_showers": int(fast.sum()), "full_showers": int((~fast).sum()),
            "fallback_out_of_range": int((raw.n_out_of_range > 0).sum()),
            "fallback_wrong_entry": int((raw.n_wrong_entry > 0).sum()),
            "model_cpu_seconds": float(raw.model_cpu.sum()), "cpu_seconds": float(raw.cpu_seconds.sum())}


# ----------------------------------------------------------------------------------
# Running blocks, in order, on worker processes
# ----------------------------------------------------------------------------------
ENGINES = ("gflash", "geant4")
# a worker killed by one of these may share its fate with the parent (a stop signal to the whole
# process group): the parent then reports the interruption, not a dead worker
_GROUP_SIGNALS = tuple(-s for s in interrupt.STOP_SIGNALS)


@dataclass(frozen=True)
class EngineSetup:
    """Which engine simulates the blocks, and what its workers need (picklable).

    ``gflash``: the parametrised simulator of this package.  ``geant4``: the compiled
    application (``build``: :class:`caloforge.geant4.build.Build`), with the measured
    per-layer sampling fractions of a calibrated file (``fractions``) and the production cut."""

    name: str = "gflash"
    build: object = None
    fractions: tuple[float, ...] | None = None
    cut_mm: float = 0.7
    fast_model: str | None = None  # a TorchScript export replacing e±/γ showers (caloforge-g4-fast)


class _BlockRunner:
    """Simulates blocks with one engine; a worker process holds one (Geant4: one application)."""

    def __init__(self, geometry: Geometry, engine: EngineSetup) -> None:
        self.stack = Stack.build(geometry)
        self.g4 = None
        if engine.name == "geant4":
            from caloforge.geant4.engine import Geant4Engine

            fractions = None if engine.fractions is None else np.asarray(engine.fractions)
            self.g4 = Geant4Engine.start(geometry, fractions, self.stack.threshold, engine.cut_mm, engine.build,
                                         fast_model=engine.fast_model)

    def __call__(self, task: _Task, seed: int) -> ShowerData:
        if self.g4 is not None:
            return simulate_block_geant4(self.stack, self.g4, task, seed)
        return simulate_block(self.stack, task, seed)

    def close(self) -> None:
        if self.g4 is not None:
            self.g4.close()


_WORKER: _BlockRunner | None = None


def _init_worker(geometry: Geometry, engine: EngineSetup = EngineSetup()) -> None:
    global _WORKER
    # Ctrl-C is the parent's business: it cancels the queue and keeps the finished showers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = _BlockRunner(geometry, engine)


def _worker_lifeline(parent_pid: int) -> None:
    """A worker ends with the run: a forked worker inherits the parent's recording handlers, which
    must not make ``terminate()`` a KeyboardInterrupt here; the batch system's early warning
    (SIGUSR1, sent to every process of a job step) is the parent's; and the worker dies when the
    parent does (kill -9, a crash), instead of blocking for good on the pool's queues."""
    from caloforge import lifeline

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    if interrupt.WARNING_SIGNAL is not None:
        signal.signal(interrupt.WARNING_SIGNAL, signal.SIG_IGN)
    lifeline.die_with_parent(signal.SIGKILL, parent_pid)


def _init_pool_worker(geometry: Geometry, parent_pid: int, engine: EngineSetup = EngineSetup()) -> None:
    """The pool's initializer: the worker's lifeline, then :func:`_init_worker`."""
    _worker_lifeline(parent_pid)
    _init_worker(geometry, engine)


def _run_task(args: tuple[_Task, int]) -> ShowerData:
    task, seed = args
    assert _WORKER is not None
    return _WORKER(task, seed)


def _start_method() -> str:
    """``fork`` (fast start) unless the parent runs threads (e.g. torch's pools), where it is unsafe."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1 and "torch" not in sys.modules:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _pool_processes(pool: ProcessPoolExecutor) -> dict:
    """The pool's worker processes (the executor's own dict: it fills as workers start; kept here
    because ``shutdown()`` drops the executor's reference to it)."""
    procs = getattr(pool, "_processes", None)
    return procs if isinstance(procs, dict) else {}


def _stop_pool(pool: ProcessPoolExecutor, processes: dict | None = None) -> None:
    """Cancel the queue and end the workers now: on Ctrl-C, SIGTERM or an error nobody waits for
    them, and none may be left behind (blocked on a queue lock or a full pipe) once the run ends."""
    procs = list((processes if processes is not None else _pool_processes(pool)).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:  # they hold nothing worth keeping: the finished blocks are the parent's
        if proc.exitcode is None:
            try:
                proc.kill()
            except (OSError, ValueError):
                pass
    for proc in procs:
        try:
            proc.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass


def _dead_worker(processes: dict, workers: int) -> WorkerDied:
    """The one-line error for a pool whose worker died: which one, and why it likely did."""
    procs = list(processes.values())
    deadline = time.monotonic() + 1.0  # the pool may notice the closed pipe before the exit is reaped
    while not (dead := [p for p in procs if p.exitcode not in (None, 0)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    own = [p for p in dead if p.exitcode != -signal.SIGTERM] or dead  # the pool SIGTERMs the others after
    if own:
        proc = own[0]
        what = f"simulation worker (pid {proc.pid}, 1 of {workers}) {describe_exit(proc.exitcode)}"
    else:
        what = f"a simulation worker (1 of {workers}) died"
    return WorkerDied(f"{what}; the run was stopped. Rerun with fewer --workers or more memory")


def _result(future, processes: dict | None = None) -> ShowerData:
    """The future's result, polling so that a Ctrl-C swallowed elsewhere is acted on within 0.1 s.

    The executor notices a killed worker by itself almost always; where it does not (a worker
    killed while it held the call queue's lock), a dead worker still ends the run within seconds."""
    dead_since = None
    while True:
        interrupt.check()
        try:
            return future.result(timeout=0.1)
        except FuturesTimeout:
            pass
        try:
            dead = any(p.exitcode not in (None, 0) for p in list((processes or {}).values()))
        except RuntimeError:  # the executor's dict changed size while we looked: look again
            continue
        if dead:
            dead_since = dead_since or time.monotonic()
            if time.monotonic() - dead_since > 3.0:
                raise BrokenProcessPool("a worker process died")


def _run_tasks(geo: Geometry, tasks: Sequence[_Task], seed: int, workers: int,
               engine: EngineSetup = EngineSetup()) -> Iterator[ShowerData]:
    """The tasks' blocks, in order: here, or on ``workers`` processes with a bounded window in flight."""
    if workers == 1:
        runner = _BlockRunner(geo, engine)
        try:
            for t in tasks:
                interrupt.check()
                yield runner(t, seed)
        finally:
            runner.close()
        return
    ctx = multiprocessing.get_context(_start_method())
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker,
                               initargs=(geo, os.getpid(), engine))
    processes = _pool_processes(pool)
    try:
        pending: deque = deque()
        try:
            for t in tasks:
                # a submit may fork a worker: a KeyboardInterrupt inside the interpreter's at-fork
                # hooks (logging's lock) would print a traceback, so the signal waits until after
                with interrupt.deferred():
                    pending.append(pool.submit(_run_task, (t, seed)))
                if len(pending) >= 2 * workers:
                    yield _result(pending.popleft(), processes)
            while pending:
                yield _result(pending.popleft(), processes)
        except BrokenProcessPool:
            err = _dead_worker(processes, workers)
            if any(p.exitcode in _GROUP_SIGNALS for p in processes.values()):
                time.sleep(0.5)  # a stop signal to the whole group reaches the parent about now
            interrupt.check()  # that was it: an interruption, not a dead worker
            raise err from None
    except BaseException:  # a stop signal, an error, a dead worker, the consumer closing the generator early
        _stop_pool(pool, processes)
        raise
    pool.shutdown(wait=True)


def setup_engine(geometry: Geometry, parts: Sequence[Part], engine: str | EngineSetup = "gflash",
                 energy_scale: str | None = None, cut_mm: float = 0.7, fast_model: str | Path | None = None
                 ) -> EngineSetup:
    """Check ``engine`` against the plan and prepare it once, in the parent: for Geant4 the
    build (compiled on first use) and, for a calibrated file, the measured sampling fractions.
    ``fast_model`` (Geant4 only): a caloforge model (TorchScript export, run directory or
    checkpoint) that replaces the showers of e±/γ entering the calorimeter in its trained
    range (:mod:`caloforge.geant4.fastsim`); checked against the geometry first."""
    if isinstance(engine, EngineSetup):
        return engine
    name = str(engine).strip().lower()
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    if name == "gflash":
        if fast_model is not None:
            raise ConfigError("--fast-model needs --engine geant4 (the model replaces Geant4's showers)")
        return EngineSetup()
    from caloforge.geant4.build import ensure_built
    from caloforge.geant4.engine import sampling_fractions

    if not (cut_mm > 0 and math.isfinite(cut_mm)):
        raise ConfigError(f"production cut must be a positive length in mm, got {cut_mm}")
    geometry.require_sampling()  # a layer without an absorber/active structure: one line, before building
    export = None
    if fast_model is not None:
        from caloforge.geant4.fastsim import resolve_fast_model

        export = str(resolve_fast_model(fast_model, geometry))
    build = ensure_built()
    if any(p.particle == "pion" for p in parts) and build.info.get("physics") == "data-free-em":
        raise ConfigError("pions need Geant4's hadronic physics and its data sets; this Geant4 build has the "
                          "data-free electromagnetic list only (photons and electrons): build against a full "
                          "Geant4 installation (geant4-config on PATH)")
    fractions = None
    if resolve_energy_scale(geometry, energy_scale) == "calibrated":
        fractions = tuple(float(f) for f in sampling_fractions(geometry, build, cut_mm))
    if export is not None:  # calibrated with the plain build (same physics), simulated with the fast one
        build = ensure_built(fast=True)
    return EngineSetup("geant4", build, fractions, float(cut_mm), export)


def plan_digest(geometry: Geometry, parts: Sequence[Part], engine: EngineSetup, energy_scale: str,
                condition_names: Sequence[str] = ()) -> str:
    """SHA-256 of everything that fixes a plan's showers but the seed: geometry, parts, engine
    (and its build and calibration), energy convention, stored conditions."""
    import hashlib
    import json

    h = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, np.ndarray):
            h.update(np.ascontiguousarray(value, dtype="<f8").tobytes())
        elif isinstance(value, EnergySpec):
            h.update(repr(value).encode())
        else:
            h.update(json.dumps(value, default=str).encode())
        h.update(b"\0")

    feed(geometry.to_dict())
    for part in parts:
        for value in (part.particle, part.n, part.energies, part.theta, part.phi, part.impact):
            feed(np.asarray(value, float) if isinstance(value, (list, np.ndarray)) else value)
    build = getattr(engine.build, "executable", None)  # its cache folder is named by the build's hash
    feed([engine.name, Path(build).parent.name if build else "", engine.fractions, engine.cut_mm, energy_scale,
          list(condition_names)])
    if engine.fast_model:  # the model's bytes, not its path
        h.update(hashlib.sha256(Path(engine.fast_model).read_bytes()).digest())
    if engine.name == "gflash":  # the fitted corrections change gflash's showers: a resumed file must match
        from .tuning import load_tuning

        feed({name: t.to_dict() for name, t in sorted(load_tuning().items())})
    return h.hexdigest()


def plan_tasks(geometry: Geometry, parts: Sequence[Part], engine: str = "gflash",
               calibrated: bool = False) -> list[_Task]:
    """The plan's blocks in order: what a run (or a shard of it) simulates."""
    return _tasks(parts, block_size(geometry), calibrated, piece_size(engine))


def iter_plan(geometry: Geometry | str, parts: Sequence[Part], seed: int = 0, workers: int | None = 1,
              progress: bool = False, description: str = "simulating",
              energy_scale: str | None = None, engine: str | EngineSetup = "gflash",
              tasks: Sequence[_Task] | None = None) -> Iterator[ShowerData]:
    """Yield the plan's showers block by block, in order (conditions: all four, always).
    ``energy_scale``: see :func:`resolve_energy_scale`; ``engine``: ``"gflash"`` or ``"geant4"``
    (or a prepared :class:`EngineSetup`); ``tasks``: a subset of the plan's blocks (a shard)."""
    geo = load_geometry(geometry)
    calibrated = resolve_energy_scale(geo, energy_scale) == "calibrated"
    setup = setup_engine(geo, parts, engine, energy_scale)
    if tasks is None:
        tasks = plan_tasks(geo, parts, setup.name, calibrated)
    workers = _default_workers() if workers is None or workers <= 0 else int(workers)
    total = sum(t.n for t in tasks)
    with (Progress(description, total, enabled=progress, unit="showers", interval=10.0) as bar,
          closing(_run_tasks(geo, tasks, seed, min(workers, max(len(tasks), 1)), setup)) as blocks):
        for out in blocks:
            bar.advance(len(out), force=bar.done + len(out) >= total)
            yield out


# Conditions a dataset derives from the simulated ones, by name: f(block conditions) → per-shower values
# (e.g. the ATLAS GAN's impact η from the impact x, :data:`caloforge.simulate.presets.SIMULATION_PRESETS`)
Derived = Mapping[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]]


def _condition_names(parts: Sequence[Part], derived: Derived | None = None) -> tuple[str, ...]:
    """Conditions to keep: all four when any part sets a direction or impact, else none; then the derived."""
    simulated = CONDITION_NAMES[:4]  # incident_theta, incident_phi, impact_x, impact_y (not impact_eta)
    return (simulated if any(p.has_conditions for p in parts) else ()) + tuple(derived or ())


def _derive(block: ShowerData, derived: Derived | None) -> ShowerData:
    """``block`` with the derived conditions added (computed from its simulated ones)."""
    for name, fn in (derived or {}).items():
        block.conditions[name] = np.asarray(fn(block.conditions), dtype=np.float64)
    return block


def simulate_plan(geometry: Geometry | str, parts: Sequence[Part], seed: int = 0, workers: int | None = 1,
                  progress: bool = False, energy_scale: str | None = None, derived: Derived | None = None,
                  engine: str | EngineSetup = "gflash") -> ShowerData:
    """Simulate all parts into memory (conditions kept when any part sets them; ``derived``:
    conditions computed from the simulated ones, see :data:`Derived`; ``engine``: see :func:`simulate`)."""
    geo = load_geometry(geometry)
    names = _condition_names(parts, derived)
    total = sum(p.n for p in parts)
    # filled block by block: no list of blocks plus a concatenated copy (half the peak memory)
    out = ShowerData(np.empty(total), np.empty((total, geo.n_voxels), np.float32),
                     {k: np.empty(total) for k in names})
    lo = 0
    for block in iter_plan(geo, parts, seed, workers, progress, energy_scale=energy_scale, engine=engine):
        block = _derive(block, derived)
        hi = lo + len(block)
        out.incident_energy[lo:hi] = block.incident_energy
        out.showers[lo:hi] = block.showers
        for k in names:
            out.conditions[k][lo:hi] = block.conditions[k]
        lo = hi
    return out


def simulate(
    geometry: Geometry | str,
    particle: str,
    energies,
    n: int | None = None,
    *,
    theta=None,
    phi=None,
    impact=None,
    seed: int = 0,
    workers: int | None = 1,
    progress: bool = False,
    energy_scale: str | None = None,
    engine: str = "gflash",
) -> ShowerData:
    """Simulate showers of ``particle`` in ``geometry``; returns :class:`~caloforge.io.ShowerData` (MeV).

    ``energies``: per-shower incident energies [MeV] (``n=None``); or a list / number
    with ``n`` showers per listed energy; or an :class:`EnergySpec` / string
    (``"1GeV:100GeV"``, ``"log:1GeV:1TeV"``, ``"1GeV,10GeV"``) with ``n`` showers in all
    for a range (each, for a list).  ``theta`` [rad], the polar angle of the incident
    direction with respect to the axis along the layers (π/2 = perpendicular), and
    ``phi`` [rad], the azimuth of the tilt in the layer plane: a number, a
    ``(low, high)`` uniform range or per-shower values.  ``impact``: ``(x, y)`` [mm] where
    the axis enters the first layer (default: the axis passes through the readout
    centre at the expected shower maximum).  When any of them is given, the result's
    ``conditions`` hold ``incident_theta, incident_phi, impact_x, impact_y``.
    ``workers``: processes (None → all cores); the output does not depend on it.
    ``energy_scale``: ``"visible"`` (energy in the active medium) or ``"calibrated"``
    (divided by the sampling fraction); ``None`` follows the geometry's dataset
    (:data:`DATASET_ENERGY_SCALE`; user geometries: visible).
    ``engine``: ``"gflash"`` (the parametrised simulator, default) or ``"geant4"`` (real
    transport in the geometry's sampling structure: :mod:`caloforge.geant4`).

    >>> d = simulate("calogan", "photon", [10_000.0] * 4, seed=1, energy_scale="visible")
    >>> d.showers.shape, bool(0.1 < d.showers.sum(1).mean() / 1e4 < 0.25)
    ((4, 504), True)
    >>> bool(0.9 < simulate("calogan", "photon", [10_000.0] * 4, seed=1).showers.sum(1).mean() / 1e4 < 1.05)
    True
    """
    part = make_part(particle, energies, n, theta, phi, impact)
    return simulate_plan(geometry, [part], seed=seed, workers=workers, progress=progress, energy_scale=energy_scale,
                         engine=engine)


def write_plan(path: str | Path, geometry: Geometry | str, parts: Sequence[Part], seed: int = 0,
               workers: int | None = None, progress: bool = False, chunk: int = 4096,
               attrs: dict | None = None, energy_scale: str | None = None, derived: Derived | None = None,
               engine: str | EngineSetup = "gflash", shard=None) -> int:
    """Stream a plan into a CaloChallenge HDF5 file (atomic). Returns the count.

    ``derived``: conditions computed from the simulated ones and stored too (:data:`Derived`).
    ``engine``: ``"gflash"`` or ``"geant4"`` (the file records which, and for Geant4 its
    version, physics list, production cut and calibration).  ``shard``
    (:class:`caloforge.production.Shard`): write only shard K of N of the plan, a contiguous
    range of whole blocks, for N batch jobs; ``caloforge merge`` joins them into the file the
    unsharded run writes.

    Showers are appended every ``chunk`` showers or :data:`FLUSH_SECONDS`, whichever
    comes first; on Ctrl-C (or SIGTERM, or a worker that died: :class:`~caloforge.errors.WorkerDied`)
    the finished ones are appended too and the file is left as ``<stem>.partial.h5`` holding
    whole showers.  The file's ``energy_scale`` attribute
    records the energy convention."""
    geo = load_geometry(geometry)
    names = _condition_names(parts, derived)
    scale = resolve_energy_scale(geo, energy_scale)
    setup = setup_engine(geo, parts, engine, scale)
    meta = {"generator": "caloforge.simulate", "geometry": geo.name, "seed": int(seed),
            "particles": ",".join(sorted({p.particle for p in parts})), "energy_scale": scale, "engine": setup.name}
    if setup.name == "geant4":
        from caloforge.geant4.engine import engine_attrs

        meta.update(engine_attrs(setup.build, setup.cut_mm, setup.fractions))
        if setup.fast_model:
            from caloforge.geant4.fastsim import read_torchscript_metadata

            fm = read_torchscript_metadata(setup.fast_model)
            meta.update(geant4_fast_model=str(setup.fast_model), geant4_fast_model_family=str(fm.get("family", "")),
                        geant4_fast_model_source=str(fm.get("source", "")),
                        geant4_fast_model_energy_range_mev=np.asarray(fm.get("energy_range_mev", [0, 0]), float))
    tasks = plan_tasks(geo, parts, setup.name, scale == "calibrated")
    digest = plan_digest(geo, parts, setup, scale, names)
    meta.update(plan_sha256=digest, n_total=int(sum(t.n for t in tasks)))
    if shard is not None:
        from caloforge.production import simulation_shard

        tasks, shard_attrs = simulation_shard(tasks, shard, digest)
        meta.update(shard_attrs)
    meta.update(attrs or {})
    buf: list[ShowerData] = []
    buffered = 0
    stats: dict[str, float] = {}
    last_flush = time.monotonic()

    def flush(w: ShowerWriter) -> None:
        nonlocal buf, buffered, last_flush
        with interrupt.deferred():  # written and forgotten together: never twice, never lost
            if buf:
                d = ShowerData.concatenate(buf)
                w.append(d.incident_energy, d.showers, {k: d.conditions[k] for k in names})
                buf, buffered = [], 0
            last_flush = time.monotonic()

    with ShowerWriter(path, geo.n_voxels, conditions=names, attrs=meta) as writer:
        try:
            for block in iter_plan(geo, parts, seed, workers, progress, description=f"simulating → {Path(path).name}",
                                   energy_scale=scale, engine=setup, tasks=tasks):
                for k, v in getattr(block, "fast_stats", {}).items():
                    stats[k] = stats.get(k, 0) + v
                buf.append(_derive(block, derived))
                buffered += len(block)
                # by size, and by time so that slow geometries keep their finished showers too
                if buffered >= chunk or time.monotonic() - last_flush > FLUSH_SECONDS:
                    flush(writer)
        except (KeyboardInterrupt, WorkerDied, Geant4Died):
            flush(writer)  # the finished blocks go into FILE.partial.h5
            raise
        flush(writer)
        if setup.fast_model:  # how many showers the model made, how many fell back to transport and why
            for k, v in stats.items():
                writer._file.attrs[f"geant4_fast_{k}"] = v
        return writer.n


def simulate_to_file(
    path: str | Path,
    geometry: Geometry | str,
    particle: str,
    energies,
    n: int | None = None,
    *,
    theta=None,
    phi=None,
    impact=None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
    chunk: int = 4096,
    energy_scale: str | None = None,
    engine: str = "gflash",
) -> int:
    """Like :func:`simulate`, but streams into a CaloChallenge file in chunks of ``chunk``
    showers; an interrupted run leaves ``<stem>.partial.h5`` with the complete showers.
    Returns the number of showers written."""
    part = make_part(particle, energies, n, theta, phi, impact)
    return write_plan(path, geometry, [part], seed=seed, workers=workers, progress=progress, chunk=chunk,
                      energy_scale=energy_scale, engine=engine)

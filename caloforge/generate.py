"""Generate showers from a trained model (a checkpoint directory or a run directory).

Loading never unpickles: a model is ``config.json`` + ``model.safetensors``.
Output is always finite and ≥ 0, in MeV, in the CaloChallenge layout.

>>> import numpy as np, tempfile
>>> from caloforge.train import train
>>> from caloforge.io import ShowerData
>>> rng = np.random.default_rng(0)
>>> e = np.repeat([1000.0, 8000.0], 20)
>>> data = ShowerData(e, rng.random((40, 368)) * e[:, None] / 368)
>>> cfg = {"model": {"latent_dim": 4, "generator_hidden": [8], "critic_hidden": [8], "critic_steps": 1},
...        "training": {"batch_size": 8, "max_iterations": 2, "checkpoint_every": 2, "tensorboard": False}}
>>> run = train(cfg, data, tempfile.mkdtemp(), progress=False)
>>> out = generate(load_model(run.best_checkpoint), np.array([1000.0, 4000.0]), seed=1)
>>> out.showers.shape, bool((out.showers >= 0).all())
((2, 368), True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from caloforge.errors import ConfigError, DataError
from caloforge.io import ShowerData, ShowerWriter, iter_showers

__all__ = ["ENGINES", "ShowerGenerator", "OutOfRangeWarning", "load_model", "generate", "generate_to_file",
           "parse_energies", "reference_energies", "batch_seed", "parse_sampling"]


class OutOfRangeWarning(UserWarning):
    """Requested incident energies lie outside the range the model was trained on."""


@dataclass
class ShowerGenerator:
    """A loaded model (any family) plus what is needed to use it."""

    model: torch.nn.Module
    path: Path
    geometry: str
    n_voxels: int
    e_min: float
    e_max: float
    iteration: int
    score: float | None
    config: dict

    @property
    def condition_names(self) -> list[str]:
        """The conditions the model needs, ``incident_energy`` first."""
        return list(self.model.condition_names)

    def generate(self, incident_energy, **kwargs) -> ShowerData:
        """Same as :func:`generate` with this model."""
        return generate(self, incident_energy, **kwargs)

    def __repr__(self) -> str:
        return (f"ShowerGenerator({self.config.get('name', '?')}, {self.geometry}, {self.n_voxels} voxels, "
                f"E {self.e_min:g}–{self.e_max:g} MeV, conditions {', '.join(self.condition_names)}, "
                f"iteration {self.iteration}, from {self.path})")


def load_model(path: str | Path, device: str = "cpu") -> ShowerGenerator:
    """Load a checkpoint directory (or a run directory's ``best``) from safetensors + JSON.

    Raises :class:`DataError` with one line for a missing, incomplete or corrupt
    model, and refuses pickled files (``.pt``, ``.pth``, ``.ckpt``, …); see
    :mod:`caloforge.checkpoint`.
    """
    from caloforge import checkpoint

    model, meta = checkpoint.restore_model(path, device=device)
    e_min, e_max = model.energy_limits
    return ShowerGenerator(model, checkpoint.model_dir(path), model.geometry.name, model.n_voxels, float(e_min),
                           float(e_max), int(meta.get("iteration", 0)), meta.get("score"), dict(meta["model"]))


def _prepare(model, incident_energy, conditions, batch_size: int | None, device: str | None,
             sampling: Mapping[str, object] | None = None):
    """(generator on its device, energies, conditions, block size), all checked before an output file is opened.

    ``batch_size`` None: the memory-aware default of :func:`caloforge.blocks.default_block_size`,
    from the whole request (every shard of it gets the same).
    """
    from caloforge.runtime import resolve_device

    if batch_size is not None and batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    if isinstance(model, ShowerGenerator):
        gen = model
        if device is not None:
            gen.model.to(resolve_device(device))
    else:
        gen = load_model(model, device=device or "cpu")
    if sampling:  # family generation options (ODE steps, …): unknown ones are a ConfigError
        gen.model.set_sampling(**dict(sampling))
    energy = np.asarray(incident_energy, dtype=np.float64).reshape(-1)
    conditions = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in (conditions or {}).items()}
    for k, v in conditions.items():
        if len(v) != len(energy):
            raise DataError(f"condition {k!r} has {len(v)} rows, expected {len(energy)}")
        if not np.all(np.isfinite(v)):
            raise DataError(f"condition {k!r} contains NaN/inf")
    missing = [k for k in gen.condition_names[1:] if k not in conditions]
    if missing:
        raise ConfigError(f"{gen.path}: the model is conditioned on {', '.join(missing)}; give it "
                          f"(e.g. --theta 60:120) or use --like REF.h5 with a {missing[0]!r} dataset")
    if energy.size and (not np.all(np.isfinite(energy)) or np.any(energy <= 0)):
        raise DataError("incident energies must be finite and > 0 MeV")
    outside = (energy < gen.e_min * (1 - 1e-9)) | (energy > gen.e_max * (1 + 1e-9))
    if outside.any():
        warnings.warn(
            f"{int(outside.sum())} of {energy.size} incident energies lie outside the trained range "
            f"{gen.e_min:g}–{gen.e_max:g} MeV ({energy[outside].min():g}–{energy[outside].max():g} MeV asked); "
            "the model extrapolates there", OutOfRangeWarning, stacklevel=3)
    if batch_size is None:
        from caloforge.blocks import MAX_BLOCK, default_block_size

        batch_size = default_block_size(gen.model, energy, conditions) if len(energy) else MAX_BLOCK
    return gen, energy, conditions, int(batch_size)


ENGINES = ("auto", "onnxruntime", "bf16", "pytorch")
FAST_MIN_SHOWERS = 20_000  # below this, building the ONNX Runtime session costs more than it saves
BF16_MIN_SHOWERS = 50_000  # from here the bf16 check (3 × 2048 showers) costs < 10 % of the request
_PRECISION = {"onnxruntime": "fp32", "bf16": "bf16"}


def _sampler(gen: ShowerGenerator, n: int, engine: str):
    """The ONNX Runtime sampler (:mod:`caloforge.engine`) when it applies, else None (PyTorch).

    ``auto``: PyTorch below :data:`FAST_MIN_SHOWERS` showers and for models whose export is
    slower (:attr:`~caloforge.models.base.ShowerModel.eager_is_faster`); fp32 ONNX Runtime from there;
    from :data:`BF16_MIN_SHOWERS` bf16 where it applies and passes its physics-level check
    (faster than fp32 ONNX Runtime there), else fp32 (parity 1e-5).  The choice depends on the
    model, the CPU and the size of the whole request, never on timings.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "pytorch" or (engine == "auto" and (n < FAST_MIN_SHOWERS or gen.model.eager_is_faster)):
        return None
    if gen.model.sampling_options:  # the exported graph fixes the options (ODE steps…): stay in PyTorch
        if engine != "auto":
            raise ConfigError(f"{gen.path}: --engine {engine} does not take generation options "
                              f"({', '.join(gen.model.sampling_options)}); use auto or pytorch")
        return None
    from caloforge.engine import fast_sampler

    precision = _PRECISION.get(engine) or ("auto" if n >= BF16_MIN_SHOWERS else "fp32")
    key = (torch.get_num_threads(), str(gen.model.device), precision)
    cache = gen.__dict__.setdefault("_engines", {})  # built once per loaded model, thread count and precision
    if key not in cache:
        cache[key] = fast_sampler(gen.model, precision=precision)
    if cache[key] is None and engine != "auto":
        check = "parity" if precision == "fp32" else "the bf16 physics check on a CPU with bf16 support"
        raise ConfigError(f"{gen.path}: --engine {engine} is not available for this model (it must be on the CPU, "
                          f"sample by decode(sample_noise), export, and pass {check}); use auto or pytorch")
    return cache[key]


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a generation with base ``seed``.

    Every batch of ``batch_size`` showers draws its noise from its own generator, so
    any split of the rows on batch boundaries (``caloforge generate --shard K/N``, see
    :mod:`caloforge.production`) reproduces the unsplit output exactly.  Batch 0 uses
    ``seed`` itself (a file of one batch is what caloforge 0.1 wrote); the others a
    SeedSequence hash of (seed, index), so neighbouring seeds share no batch.

    >>> batch_seed(7, 0), batch_seed(7, 1) == batch_seed(8, 0), batch_seed(7, 1) == batch_seed(7, 1)
    (7, False, True)
    """
    if index == 0:
        return int(seed)
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 62 bits: a valid torch seed


def _batches(gen: ShowerGenerator, energy: np.ndarray, conditions: Mapping[str, np.ndarray], batch_size: int,
             seed: int, engine: str = "auto", first_batch: int = 0, request_size: int | None = None):
    dev = gen.model.device
    gen.model.eval()
    # the engine follows the size of the whole request, so that every shard of it uses the same one
    sampler = _sampler(gen, len(energy) if request_size is None else request_size, engine)
    for lo in range(0, len(energy), batch_size):
        rng = torch.Generator(device=dev).manual_seed(batch_seed(seed, first_batch + lo // batch_size))
        e = energy[lo:lo + batch_size]
        cond = {"incident_energy": e, **{k: v[lo:lo + batch_size] for k, v in conditions.items()}}
        if sampler is not None:  # the same noise from rng through the exported graph
            showers = sampler.sample(cond, rng)
        else:
            showers = gen.model.sample(cond, rng).cpu().numpy()
        # the networks end in ReLU, but guard against any NaN/inf or negative output
        showers = np.nan_to_num(showers, nan=0.0, posinf=0.0, neginf=0.0)
        np.maximum(showers, 0.0, out=showers)
        yield lo, e, showers


def generate(model, incident_energy, *, conditions: Mapping[str, np.ndarray] | None = None,
             batch_size: int | None = None, device: str | None = None, seed: int = 0, engine: str = "auto",
             sampling: Mapping[str, object] | None = None) -> ShowerData:
    """Showers (MeV, float32, finite, ≥ 0) for incident energies (N,) in MeV.

    ``model`` is a :class:`ShowerGenerator` or a path for :func:`load_model`.
    ``conditions`` (angles in rad, impact points in mm) go to the model when it is
    conditioned on them and are written to the output row for row.  Energies outside
    the trained range raise an :class:`OutOfRangeWarning`.  ``device`` moves the
    model there; None keeps it where it is (a path is loaded on the CPU).  ``engine``:
    ``auto`` runs large CPU requests through ONNX Runtime when it reproduces the model
    (:mod:`caloforge.engine`; from 50 000 showers bf16 dense layers where they apply and
    pass the physics-level check), ``pytorch`` never does, ``onnxruntime`` (fp32)
    and ``bf16`` insist.  Each batch
    of ``batch_size`` rows is seeded by :func:`batch_seed`: the output depends on
    ``seed`` and ``batch_size``, and rows split on batch boundaries reproduce it.
    ``batch_size`` None (default) picks the block by memory
    (:func:`caloforge.blocks.default_block_size`: 10 000 where it fits in 2 GiB, fewer on
    the granular grids); it depends on the model only, never on the machine, and an
    explicit ``batch_size`` equal to it gives the same showers.
    ``sampling`` sets the family's generation options (``{"steps": 16}`` for an ODE
    model; :meth:`~caloforge.models.base.ShowerModel.set_sampling`), kept on the model.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    gen, energy, conditions, batch_size = _prepare(model, incident_energy, conditions, batch_size, device, sampling)
    out = np.empty((len(energy), gen.n_voxels), dtype=np.float32)
    for lo, e, showers in _batches(gen, energy, conditions, batch_size, seed, engine):
        out[lo:lo + len(e)] = showers
    return ShowerData(energy, out, conditions)


def generate_to_file(model, path: str | Path, incident_energy, *, conditions: Mapping[str, np.ndarray] | None = None,
                     batch_size: int | None = None, device: str | None = None, seed: int = 0,
                     progress: bool = False, engine: str = "auto",
                     sampling: Mapping[str, object] | None = None) -> Path:
    """Stream generated showers into a CaloChallenge HDF5 file (atomic: temp + rename); see :func:`generate`."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    gen, energy, conditions, batch_size = _prepare(model, incident_energy, conditions, batch_size, device, sampling)
    attrs = {"generator": "caloforge", "model": str(gen.path), "model_iteration": gen.iteration,
             "geometry": gen.geometry, "seed": int(seed), "batch_size": int(batch_size)}
    for key, value in gen.model.sampling_options.items():
        attrs[f"sampling_{key}"] = value
    from caloforge.runtime import Progress

    with Progress("generate", len(energy), enabled=progress, unit="showers", interval=10.0) as bar:
        with ShowerWriter(path, gen.n_voxels, conditions=tuple(conditions), attrs=attrs) as w:
            for lo, e, showers in _batches(gen, energy, conditions, batch_size, seed, engine):
                w.append(e, showers, {k: v[lo:lo + len(e)] for k, v in conditions.items()})
                bar.update(lo + len(e))
    return Path(path)


def reference_energies(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], int | None]:
    """Incident energies (MeV), conditions and voxel count (None for an empty file) of a shower file.

    Streamed chunk by chunk so that only these columns are held: ``--like`` needs one
    generated shower per reference row, never the (possibly DS3-sized) reference showers.
    """
    energy, conditions, n_voxels = [], [], None
    for part in iter_showers(path):
        energy.append(part.incident_energy)
        conditions.append(part.conditions)
        n_voxels = part.n_voxels
    if not energy:
        return np.zeros(0), {}, None
    return np.concatenate(energy), {k: np.concatenate([c[k] for c in conditions]) for k in conditions[0]}, n_voxels


def parse_energies(text: str) -> np.ndarray:
    """'1GeV,65GeV,256MeV' → MeV array; a bare number is MeV (the ``--energies`` option).

    >>> parse_energies("1GeV, 65 GeV,256").tolist()
    [1000.0, 65000.0, 256.0]
    """
    from caloforge.simulate.units import parse_energy_list

    try:
        return parse_energy_list(text)
    except ConfigError as exc:
        raise ConfigError(f"--energies: {exc} (e.g. 1GeV,65GeV or 256MeV)") from None


def parse_sampling(items) -> dict[str, str]:
    """['steps=16', 'solver=rk4'] → {'steps': '16', 'solver': 'rk4'} (the ``--sampling`` option).

    The model converts the values to its options' types (:meth:`ShowerModel.set_sampling`).

    >>> parse_sampling(["steps=16", "solver = rk4"])
    {'steps': '16', 'solver': 'rk4'}
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--sampling: expected KEY=VALUE (e.g. steps=16), got {item!r}")
        out[key] = value
    return out

"""Generate showers from a trained model (a checkpoint directory or a run directory).

Loading never unpickles: a model is ``config.json`` + ``model.safetensors``.
Output is always finite and ≥ 0, in MeV, in the CaloChallenge layout.

>>> import numpy as np, tempfile
>>> from caloforge.train import train
>>> from caloforge.io import ShowerData
>>> rng = np.random.default_rng(0)
>>> e = np.repeat([1000.0, 8000.0], 20)
>>> data = ShowerData(e, rng.random((40, 368)) * e[:, None] / 368)
>>> cfg = {"model": {"latent_dim": 4, "generator_hidden": [8], "critic_hidden": [8]},
...        "training": {"batch_size": 8, "critic_steps": 1, "max_iterations": 2, "checkpoint_every": 2,
...                     "tensorboard": False}}
>>> run = train(cfg, data, tempfile.mkdtemp(), progress=False)
>>> out = generate(load_model(run.best_checkpoint), np.array([1000.0, 4000.0]), seed=1)
>>> out.showers.shape, bool((out.showers >= 0).all())
((2, 368), True)
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from caloforge.errors import ConfigError, DataError
from caloforge.io import ShowerData, ShowerWriter, iter_showers

__all__ = ["ShowerGenerator", "OutOfRangeWarning", "load_model", "generate", "generate_to_file", "parse_energies",
           "reference_energies"]

REFUSED_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


class OutOfRangeWarning(UserWarning):
    """Requested incident energies lie outside the range the model was trained on."""


@dataclass
class ShowerGenerator:
    """A loaded model: the network plus what is needed to use it."""

    model: torch.nn.Module
    path: Path
    geometry: str
    n_voxels: int
    e_min: float
    e_max: float
    iteration: int
    score: float | None
    config: dict

    def generate(self, incident_energy, **kwargs) -> ShowerData:
        """Same as :func:`generate` with this model."""
        return generate(self, incident_energy, **kwargs)

    def __repr__(self) -> str:
        return (f"ShowerGenerator({self.config.get('name', '?')}, {self.geometry}, {self.n_voxels} voxels, "
                f"E {self.e_min:g}–{self.e_max:g} MeV, iteration {self.iteration}, from {self.path})")


def _model_dir(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: no such model directory")
    if path.is_file():
        if path.suffix.lower() in REFUSED_SUFFIXES:
            raise DataError(f"{path}: refusing to load a pickled model; caloforge models are a directory with "
                            "config.json + model.safetensors")
        if path.name in ("model.safetensors", "config.json"):
            return path.parent
        raise DataError(f"{path}: not a model directory (expected config.json + model.safetensors)")
    if not (path / "config.json").exists() and (path / "best").exists():
        return path / "best"  # a run directory: use its best checkpoint
    if (path / "run.json").exists() and not (path / "config.json").exists():
        raise DataError(f"{path}: this training run has no checkpoint yet (no {path / 'best'})")
    return path


def load_model(path: str | Path, device: str = "cpu") -> ShowerGenerator:
    """Load a checkpoint directory (or a run directory's ``best``) from safetensors + JSON.

    Raises :class:`DataError` with one line for a missing, incomplete or corrupt
    model, and refuses pickled files (``.pt``, ``.pth``, ``.ckpt``, …).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from caloforge.models import MODELS, Preprocessing, build_model
    from caloforge.train import resolve_device

    path = Path(path)
    mdir = _model_dir(path)
    weights, cfg_file = mdir / "model.safetensors", mdir / "config.json"
    if not weights.exists():
        pickled = [p.name for p in mdir.iterdir() if p.suffix.lower() in REFUSED_SUFFIXES] if mdir.is_dir() else []
        extra = f"; found {', '.join(pickled)}, but pickled models are never loaded" if pickled else ""
        raise DataError(f"{mdir}: model.safetensors not found{extra}")
    if not cfg_file.exists():
        raise DataError(f"{mdir}: config.json not found")
    try:
        meta = json.loads(cfg_file.read_text())
        model_cfg = dict(meta["model"])
        entry = MODELS[model_cfg.get("name", "caloshowergan")]
        known = {f.name for f in fields(entry.config)}
        cfg = entry.config(**{k: v for k, v in model_cfg.items() if k in known})
        preps = [Preprocessing(**p) for p in meta["preprocessing"]]
        model = build_model(cfg, preps)  # an edited config.json (bad activation, ranges ≠ split) fails here
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{cfg_file}: not a caloforge model config ({type(exc).__name__}: {exc})") from None
    dev = resolve_device(device)
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{weights}: corrupt or truncated safetensors file ({str(exc).splitlines()[0]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"{weights}: weights do not match config.json ({str(exc).splitlines()[0]})") from None
    model.to(dev).eval()
    return ShowerGenerator(model, mdir, meta.get("geometry", preps[0].geometry), preps[0].n_voxels,
                           float(model.e_min), float(model.e_max), int(meta.get("iteration", 0)),
                           meta.get("score"), model_cfg)


def _prepare(model, incident_energy, conditions, batch_size: int, device: str | None):
    """(generator on its device, energies, conditions), all checked before an output file is opened."""
    from caloforge.train import resolve_device

    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    if isinstance(model, ShowerGenerator):
        gen = model
        if device is not None:
            gen.model.to(resolve_device(device))
    else:
        gen = load_model(model, device=device or "cpu")
    energy = np.asarray(incident_energy, dtype=np.float64).reshape(-1)
    conditions = {k: np.asarray(v).reshape(-1) for k, v in (conditions or {}).items()}
    for k, v in conditions.items():
        if len(v) != len(energy):
            raise DataError(f"condition {k!r} has {len(v)} rows, expected {len(energy)}")
    if energy.size and (not np.all(np.isfinite(energy)) or np.any(energy <= 0)):
        raise DataError("incident energies must be finite and > 0 MeV")
    outside = (energy < gen.e_min * (1 - 1e-9)) | (energy > gen.e_max * (1 + 1e-9))
    if outside.any():
        warnings.warn(
            f"{int(outside.sum())} of {energy.size} incident energies lie outside the trained range "
            f"{gen.e_min:g}–{gen.e_max:g} MeV ({energy[outside].min():g}–{energy[outside].max():g} MeV asked); "
            "the model extrapolates there", OutOfRangeWarning, stacklevel=3)
    return gen, energy, conditions


def _batches(gen: ShowerGenerator, energy: np.ndarray, batch_size: int, seed: int):
    dev = next(gen.model.parameters()).device
    gen.model.eval()
    rng = torch.Generator(device=dev).manual_seed(int(seed))
    for lo in range(0, len(energy), batch_size):
        e = energy[lo:lo + batch_size]
        showers = gen.model.sample(e, rng).cpu().numpy()
        # the networks end in ReLU, but guard against any NaN/inf or negative output
        showers = np.nan_to_num(showers, nan=0.0, posinf=0.0, neginf=0.0)
        np.maximum(showers, 0.0, out=showers)
        yield lo, e, showers


def generate(model, incident_energy, *, conditions: Mapping[str, np.ndarray] | None = None,
             batch_size: int = 10_000, device: str | None = None, seed: int = 0) -> ShowerData:
    """Showers (MeV, float32, finite, ≥ 0) for incident energies (N,) in MeV.

    ``model`` is a :class:`ShowerGenerator` or a path for :func:`load_model`.
    ``conditions`` (angles, impact points) are copied to the output row for row;
    CaloShowerGAN is conditioned on the incident energy only.  Energies outside
    the trained range raise an :class:`OutOfRangeWarning`.  ``device`` moves the
    model there; None keeps it where it is (a path is loaded on the CPU).
    """
    gen, energy, conditions = _prepare(model, incident_energy, conditions, batch_size, device)
    out = np.empty((len(energy), gen.n_voxels), dtype=np.float32)
    for lo, e, showers in _batches(gen, energy, batch_size, seed):
        out[lo:lo + len(e)] = showers
    return ShowerData(energy, out, conditions)


def generate_to_file(model, path: str | Path, incident_energy, *, conditions: Mapping[str, np.ndarray] | None = None,
                     batch_size: int = 10_000, device: str | None = None, seed: int = 0,
                     progress: bool = False) -> Path:
    """Stream generated showers into a CaloChallenge HDF5 file (atomic: temp + rename); see :func:`generate`."""
    gen, energy, conditions = _prepare(model, incident_energy, conditions, batch_size, device)
    attrs = {"generator": "caloforge", "model": str(gen.path), "model_iteration": gen.iteration,
             "geometry": gen.geometry, "seed": int(seed)}
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(stderr=True), transient=True)
        task = bar.add_task("generate", total=len(energy))
        bar.start()
    try:
        with ShowerWriter(path, gen.n_voxels, conditions=tuple(conditions), attrs=attrs) as w:
            for lo, e, showers in _batches(gen, energy, batch_size, seed):
                w.append(e, showers, {k: v[lo:lo + len(e)] for k, v in conditions.items()})
                if bar is not None:
                    bar.update(task, advance=len(e))
    finally:
        if bar is not None:
            bar.stop()
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

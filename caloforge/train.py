"""Training loop for the WGAN-GP models: checkpoints, resume, scoring, logging.

A run directory looks like::

    RUN_DIR/
      run.json                  config + data fingerprint (checked on --resume)
      checkpoints/iter-000500/  model.safetensors, optimizer.safetensors, config.json
      best -> checkpoints/iter-…   the checkpoint with the lowest E_tot χ² so far
      scores.csv                iteration, chi2 of every checkpoint
      log.csv                   losses every ``log_every`` iterations
      tensorboard/              the same scalars for TensorBoard

Checkpoints are written to a temporary directory and renamed into place, so a
kill at any moment leaves only complete checkpoints.  All randomness comes from
explicit ``torch.Generator`` objects whose states are saved with the weights and
optimiser moments, so ``resume=True`` continues bit-identically on CPU.

Each checkpoint is scored by the χ² between the total-energy distributions of the
held-out reference showers and showers generated for the same incident energies
(:func:`caloforge.evaluate.metrics.total_energy_chi2`); lower is better.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import math
import os
import re
import shutil
import time
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from caloforge.errors import ConfigError, DataError
from caloforge.io import ShowerData, atomic_path, read_showers

__all__ = [
    "OptimizerConfig",
    "TrainingConfig",
    "TrainConfig",
    "TrainResult",
    "load_config",
    "parse_duration",
    "split_validation",
    "train",
    "latest_checkpoint",
]

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
CHECKPOINT_FORMAT = "caloforge-checkpoint"
CHECKPOINT_VERSION = 1
LOG_COLUMNS = ("iteration", "elapsed_s", "critic_loss", "generator_loss", "gradient_penalty", "wasserstein")
# keys that may change between a run and its --resume (budgets and logging only)
RESUMABLE_CHANGES = {"training.max_iterations", "training.max_time", "training.log_every", "training.tensorboard",
                     "training.keep_checkpoints", "description"}


# ----------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------
@dataclass
class OptimizerConfig:
    """Adam hyperparameters."""

    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999


@dataclass
class TrainingConfig:
    """The ``training:`` section: WGAN-GP schedule, budgets, checkpointing."""

    batch_size: int = 1024
    critic_steps: int = 8
    gp_lambda: float = 3.0
    generator_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(1e-4, 0.5, 0.999))
    critic_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(1e-4, 0.9, 0.999))
    max_iterations: int = 100_000
    max_time: str | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    validation_fraction: float = 0.2
    score_max_showers: int = 50_000
    log_every: int = 50
    tensorboard: bool = True
    seed: int = 0


@dataclass
class TrainConfig:
    """A whole training config: ``model:`` (see :data:`caloforge.models.MODELS`) and ``training:``."""

    model: Any
    training: TrainingConfig = field(default_factory=TrainingConfig)
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(d|h|min|m|sec|s)?", re.IGNORECASE)
_UNIT_S = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int, key: str = "max-time") -> float:
    """'10m' → 600.0; accepts s, m/min, h, d, combinations ('1h30m') and plain seconds.

    >>> parse_duration("10m"), parse_duration("1h30m"), parse_duration(45), parse_duration("2.5s")
    (600.0, 5400.0, 45.0, 2.5)
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 90s, 10m or 2h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().replace(" ", "")
        if not text:
            raise ConfigError(f"{key}: expected a duration like 90s, 10m or 2h, got an empty value")
        pos, seconds = 0, 0.0
        while pos < len(text):
            m = _DURATION.match(text, pos)
            if not m or m.end() == pos:
                raise ConfigError(f"{key}: expected a duration like 90s, 10m or 2h, got {value!r}")
            seconds += float(m.group(1)) * _UNIT_S[m.group(2).lower() if m.group(2) else None]
            pos = m.end()
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{key}: duration must be positive, got {value!r}")
    return seconds


def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    """Coerce/validate one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key + ".", source)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_type(value, args[0], key, source)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_check_type(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 1e-4 as a string
            except ValueError:
                raise ConfigError(f"{source}: {key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: Any, prefix: str, source: str):
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{source}: unknown key {prefix}{key}{hint}")
    kwargs = {k: _check_type(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**kwargs)


def _require(ok: bool, source: str, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{source}: {key} must be {what}, got {value!r}")


def _validate(cfg: TrainConfig, source: str) -> None:
    from caloforge.geometry import load_geometry
    from caloforge.models.caloshowergan import ACTIVATIONS, INITIALIZERS

    m, t = cfg.model, cfg.training
    try:
        load_geometry(m.geometry)
    except Exception as exc:  # GeometryError or a bad path
        raise ConfigError(f"{source}: model.geometry {m.geometry!r} is not a known geometry ({exc})") from None
    _require(m.latent_dim > 0, source, "model.latent_dim", "a positive integer", m.latent_dim)
    for key in ("generator_hidden", "critic_hidden"):
        v = getattr(m, key)
        _require(len(v) > 0 and all(w > 0 for w in v), source, f"model.{key}", "a non-empty list of positive integers", v)
    for key in ("generator_activation", "critic_activation", "output_activation"):
        v = getattr(m, key)
        _require(v in ACTIVATIONS, source, f"model.{key}", f"one of {', '.join(ACTIVATIONS)}", v)
    for key in ("generator_init", "critic_init"):
        v = getattr(m, key)
        _require(v in INITIALIZERS, source, f"model.{key}", f"one of {', '.join(INITIALIZERS)}", v)
    _require(m.noise_std > 0, source, "model.noise_std", "positive", m.noise_std)
    _require(0 < m.batchnorm_momentum <= 1, source, "model.batchnorm_momentum", "in (0, 1]", m.batchnorm_momentum)
    _require(m.batchnorm_eps > 0, source, "model.batchnorm_eps", "positive", m.batchnorm_eps)
    _require(m.voxel_scale > 0, source, "model.voxel_scale", "positive", m.voxel_scale)
    b = m.energy_split
    _require(all(x > 0 for x in b) and all(y > x for x, y in zip(b, b[1:])), source, "model.energy_split",
             "increasing positive energies in MeV", b)
    r = m.energy_range
    _require(len(r) == 0 or (len(r) == 2 and 0 < r[0] < r[1]), source, "model.energy_range",
             "empty or [E_min, E_max] MeV with 0 < E_min < E_max", r)
    for key in ("batch_size", "critic_steps", "max_iterations", "checkpoint_every", "keep_checkpoints",
                "score_max_showers", "log_every"):
        v = getattr(t, key)
        _require(v > 0, source, f"training.{key}", "a positive integer", v)
    _require(t.gp_lambda >= 0, source, "training.gp_lambda", "≥ 0", t.gp_lambda)
    _require(0 < t.validation_fraction < 1, source, "training.validation_fraction", "in (0, 1)", t.validation_fraction)
    _require(t.seed >= 0, source, "training.seed", "a non-negative integer", t.seed)
    for name in ("generator_optimizer", "critic_optimizer"):
        o = getattr(t, name)
        _require(o.lr > 0, source, f"training.{name}.lr", "positive", o.lr)
        _require(0 <= o.beta1 < 1, source, f"training.{name}.beta1", "in [0, 1)", o.beta1)
        _require(0 <= o.beta2 < 1, source, f"training.{name}.beta2", "in [0, 1)", o.beta2)
    if t.max_time is not None:
        parse_duration(t.max_time, key=f"{source}: training.max_time")


def load_config(path_or_dict: str | Path | Mapping | TrainConfig) -> TrainConfig:
    """Read and validate a training config (YAML file, shipped config name, mapping, or TrainConfig).

    Unknown keys and bad values raise :class:`ConfigError` naming the key.

    >>> cfg = load_config({"model": {"geometry": "ds1-photons"}, "training": {"batch_size": 64}})
    >>> cfg.model.critic_hidden, cfg.training.batch_size, cfg.training.critic_steps
    ([368, 368, 368], 64, 8)
    >>> load_config({"training": {"batchsize": 64}})
    Traceback (most recent call last):
    ...
    caloforge.errors.ConfigError: config: unknown key training.batchsize (did you mean training.batch_size?)
    """
    from caloforge.models import MODELS

    if isinstance(path_or_dict, TrainConfig):
        return path_or_dict
    if isinstance(path_or_dict, Mapping):
        data, source = dict(path_or_dict), "config"
    else:
        import yaml

        path = Path(path_or_dict)
        shipped = SHIPPED_CONFIGS / f"{path_or_dict}.yaml"
        if not path.is_file() and path.suffix == "" and shipped.is_file():
            path = shipped  # a shipped config by name: "demo", "caloshowergan-photons"
        source = str(path)
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")))
            raise ConfigError(f"{path}: no such config file (shipped configs: {names})")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"{path}: not valid YAML{line}") from None
        if data is None:
            data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping with model: and training: sections")
    for key in data:
        if key not in ("model", "training", "description"):
            raise ConfigError(f"{source}: unknown key {key} (known: model, training, description)")
    model = dict(data.get("model") or {})
    name = model.get("name", "caloshowergan")
    if name not in MODELS:
        raise ConfigError(f"{source}: model.name {name!r} is unknown; known: {', '.join(MODELS)}")
    cfg = TrainConfig(
        model=_from_dict(MODELS[name].config, model, "model.", source),
        training=_from_dict(TrainingConfig, data.get("training"), "training.", source),
        description=_check_type(data.get("description", ""), str, "description", source),
    )
    _validate(cfg, source)
    return cfg


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ----------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------
def split_validation(data: ShowerData, fraction: float, seed: int) -> tuple[ShowerData, ShowerData]:
    """Random (train, validation) split; the same seed gives the same split.

    >>> d = ShowerData(np.arange(1.0, 11.0), np.ones((10, 3)))
    >>> tr, va = split_validation(d, 0.2, seed=0)
    >>> len(tr), len(va), sorted(np.r_[tr.incident_energy, va.incident_energy]) == list(np.arange(1.0, 11.0))
    (8, 2, True)
    """
    perm = np.random.default_rng(seed).permutation(len(data))
    n_val = min(max(1, int(round(fraction * len(data)))), len(data) - 1)
    return data.select(np.sort(perm[n_val:])), data.select(np.sort(perm[:n_val]))


def _showers(data: ShowerData | str | Path, geo, what: str) -> ShowerData:
    """Showers for ``geo``: a file is read (and validated) by read_showers, in-memory data is checked here."""
    if not isinstance(data, ShowerData):
        return read_showers(data, geometry=geo)
    if data.n_voxels != geo.n_voxels:
        raise DataError(f"{what}: showers have {data.n_voxels} voxels but geometry {geo.name} has {geo.n_voxels}")
    e = data.incident_energy
    if not (np.all(np.isfinite(e)) and np.all(e > 0)):
        raise DataError(f"{what}: incident energies must be finite and > 0 MeV")
    if not np.all(np.isfinite(data.showers)) or np.any(data.showers < 0):
        raise DataError(f"{what}: shower energies must be finite and ≥ 0 MeV")
    return data


def _fingerprint(data: ShowerData) -> dict:
    e = np.asarray(data.incident_energy, dtype=np.float64)
    return {"n_showers": len(data), "n_voxels": data.n_voxels, "sum_incident_energy": float(e.sum()),
            "sum_energy_deposit": float(np.asarray(data.showers, dtype=np.float64).sum())}


def _preprocessings(model_cfg, train_data: ShowerData, geometry_name: str):
    from caloforge.models import Preprocessing
    from caloforge.models.energy_split import range_index

    e = train_data.incident_energy
    route = range_index(model_cfg.energy_split, e)
    out = []
    for k in range(len(model_cfg.energy_split) + 1):
        part = e[route == k]
        if len(part) == 0:
            lo = model_cfg.energy_split[k - 1] if k else "0"
            hi = model_cfg.energy_split[k] if k < len(model_cfg.energy_split) else "∞"
            raise ConfigError(f"model.energy_split: no training showers between {lo} and {hi} MeV (range {k})")
        e_min, e_max = float(part.min()), float(part.max())
        if model_cfg.energy_range:
            if k == 0:
                e_min = float(model_cfg.energy_range[0])
            if k == len(model_cfg.energy_split):
                e_max = float(model_cfg.energy_range[1])
        out.append(Preprocessing(e_min, e_max, train_data.n_voxels, geometry_name, model_cfg.voxel_scale))
    return out


# ----------------------------------------------------------------------------------
# Results and checkpoints
# ----------------------------------------------------------------------------------
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
    stopped: str  # "completed", "max_time", "diverged"
    message: str = ""

    @property
    def best_path(self) -> Path | None:
        """Alias of ``best_checkpoint`` (RUN_DIR/best)."""
        return self.best_checkpoint


def _checkpoint_name(iteration: int) -> str:
    return f"iter-{iteration:07d}"


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in (run_dir / "checkpoints").glob("iter-*"):
        m = re.fullmatch(r"iter-(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    found = _checkpoints(Path(run_dir))
    return found[-1][1] if found else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _optimizer_tensors(optimizers: Mapping[str, torch.optim.Optimizer]) -> tuple[dict, dict]:
    tensors, groups = {}, {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"{name}.{pid}.{k}"] = v.detach().cpu().contiguous()
        groups[name] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _load_optimizers(optimizers: Mapping[str, torch.optim.Optimizer], tensors: Mapping[str, torch.Tensor],
                     groups: Mapping[str, list]) -> None:
    for name, opt in optimizers.items():
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            head, pid, k = key.rsplit(".", 2)
            if head == name:
                state.setdefault(int(pid), {})[k] = v
        param_groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups[name]]
        opt.load_state_dict({"state": state, "param_groups": param_groups})


def _rng_state(gen: torch.Generator) -> str:
    return gen.get_state().numpy().tobytes().hex()


def _set_rng_state(gen: torch.Generator, state: str) -> None:
    gen.set_state(torch.frombuffer(bytearray(bytes.fromhex(state)), dtype=torch.uint8))


def _write_checkpoint(path: Path, model: torch.nn.Module, optimizers, meta: dict) -> None:
    from safetensors.torch import save_file

    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    tensors, groups = _optimizer_tensors(optimizers)
    save_file(tensors, tmp / "optimizer.safetensors")
    (tmp / "config.json").write_text(json.dumps({**meta, "optimizer_param_groups": groups}, indent=1))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if path.exists():  # the same iteration written again after a resume
        shutil.rmtree(path)
    os.rename(tmp, path)
    _fsync(path.parent)


def _point_best(run_dir: Path, checkpoint: Path) -> None:
    """Atomically make RUN_DIR/best a relative symlink to ``checkpoint``."""
    link = run_dir / "best"
    tmp = run_dir / f".best-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(checkpoint, run_dir), tmp)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)


def _write_scores(run_dir: Path, history: list[tuple[int, float]], best_iteration: int | None) -> None:
    with atomic_path(run_dir / "scores.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["iteration", "chi2_etot", "best"])
            for it, score in history:
                w.writerow([it, repr(score), int(it == best_iteration)])


def _truncate_log(path: Path, iteration: int) -> None:
    """Keep only complete log rows up to ``iteration`` (after a kill mid-write)."""
    if not path.exists():
        return
    keep = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) == len(LOG_COLUMNS) and row[0].isdigit() and int(row[0]) <= iteration:
                keep.append(row)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(LOG_COLUMNS)
            w.writerows(keep)


# ----------------------------------------------------------------------------------
# One WGAN-GP iteration
# ----------------------------------------------------------------------------------
def _train_iteration(gan, opt_g, opt_d, x: torch.Tensor, cond: torch.Tensor, tc: TrainingConfig,
                     data_rng: torch.Generator, noise_rng: torch.Generator) -> dict[str, float]:
    """``critic_steps`` critic updates, then one generator update (WGAN-GP)."""
    device, n, batch = x.device, len(x), tc.batch_size
    for _ in range(tc.critic_steps):
        idx = torch.randint(n, (batch,), generator=data_rng).to(device)
        real, c = x[idx], cond[idx]
        with torch.no_grad():
            fake = gan.generator(gan.noise(batch, noise_rng, device), c)
        eps = torch.rand(batch, 1, generator=noise_rng, device=device)
        mix = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
        scores = gan.critic(torch.cat([real, fake, mix]), torch.cat([c, c, c]))
        d_real, d_fake, d_mix = scores[:batch].mean(), scores[batch:2 * batch].mean(), scores[2 * batch:]
        (grad,) = torch.autograd.grad(d_mix.sum(), mix, create_graph=True)
        gp = ((grad.norm(2, dim=1) - 1.0) ** 2).mean()
        d_loss = d_fake - d_real + tc.gp_lambda * gp
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    idx = torch.randint(n, (batch,), generator=data_rng).to(device)
    c = cond[idx]
    gan.critic.requires_grad_(False)  # only the generator's weights need gradients here
    g_loss = -gan.critic(gan.generator(gan.noise(batch, noise_rng, device), c), c).mean()
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    gan.critic.requires_grad_(True)
    return {"critic_loss": d_loss.item(), "generator_loss": g_loss.item(), "gradient_penalty": gp.item(),
            "wasserstein": (d_real - d_fake).item()}


def _score(model, validation: ShowerData, seed: int, device: torch.device, batch_size: int = 10_000) -> float:
    """E_tot χ² of showers generated for the validation energies vs the validation showers."""
    from caloforge.evaluate.metrics import total_energy_chi2

    was_training = model.training
    model.eval()
    rng = torch.Generator(device=device).manual_seed(seed)
    e = validation.incident_energy
    etot = np.empty(len(e))
    try:
        for lo in range(0, len(e), batch_size):
            etot[lo:lo + batch_size] = model.sample(e[lo:lo + batch_size], rng).double().sum(1).cpu().numpy()
    finally:
        model.train(was_training)
    ref = np.asarray(validation.showers, dtype=np.float64).sum(1)
    if not np.all(np.isfinite(etot)):
        return math.inf
    score = float(total_energy_chi2(e, ref, e, etot))
    return score if math.isfinite(score) else math.inf


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' → torch.device; ConfigError when CUDA is not available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: {device} requested but no CUDA GPU is available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: unsupported device {device!r} (use cpu or cuda)")
    return dev


# ----------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------
class _Progress:
    """A rich progress bar with iteration rate, ETA and the latest losses (or nothing)."""

    def __init__(self, enabled: bool, total: int, start: int, budget_s: float | None) -> None:
        self.enabled, self.total, self.start, self.budget = enabled, total, start, budget_s
        self.t0 = time.monotonic()
        self.last = 0.0
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, rate="", info="")
            self.bar.start()

    def update(self, iteration: int, info: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        elapsed = now - self.t0
        rate = (iteration - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - iteration) / rate if rate > 0 else math.inf
        if self.budget is not None:
            eta = min(eta, max(self.budget - elapsed, 0.0))
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "-:--:--"
        self.bar.update(self.task, completed=iteration, rate=f"{rate:.2f} it/s  ETA {eta_text}", info=info)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


def train(
    config: TrainConfig | str | Path | Mapping,
    data: ShowerData | str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    max_time: str | float | None = None,
    max_iterations: int | None = None,
    progress: bool = True,
    validation: ShowerData | str | Path | None = None,
    seed: int | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue training) a model; see the module docstring.

    ``data`` is a shower file or :class:`ShowerData`; without ``validation`` a fraction
    ``training.validation_fraction`` is held out (split by ``training.seed``) to score
    checkpoints.  ``max_time`` ('10m', seconds) and ``max_iterations`` override the
    config's budgets; the time budget counts this call only.  Stops early, cleanly,
    when a loss becomes NaN/inf (``stopped == "diverged"``), keeping the last good
    checkpoint.  ``seed`` overrides ``training.seed``.
    """
    from caloforge.geometry import load_geometry
    from caloforge.models import build_model

    cfg = load_config(config)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, seed=seed))
    tc = cfg.training
    dev = resolve_device(device)
    budget_s = parse_duration(max_time) if max_time is not None else (
        parse_duration(tc.max_time) if tc.max_time is not None else None)
    total = int(max_iterations) if max_iterations is not None else tc.max_iterations
    if total <= 0:
        raise ConfigError(f"--max-iterations must be positive, got {total}")
    geo = load_geometry(cfg.model.geometry)

    source = str(data) if not isinstance(data, ShowerData) else "training data"
    data = _showers(data, geo, source)
    if len(data) < 2:
        raise DataError(f"{source}: need at least 2 showers to train, got {len(data)}")
    if validation is None:
        train_data, val_data = split_validation(data, tc.validation_fraction, tc.seed)
    else:
        train_data, val_data = data, _showers(validation, geo, "validation data")
    if len(val_data) > tc.score_max_showers:  # a fixed, seeded subset keeps scoring cheap
        keep = np.sort(np.random.default_rng(tc.seed).permutation(len(val_data))[: tc.score_max_showers])
        val_data = val_data.select(keep)

    run_dir = Path(run_dir)
    run_info = {"config": cfg.to_dict(), "data": _fingerprint(train_data), "validation": _fingerprint(val_data)}
    existing = _checkpoints(run_dir)
    if (run_dir / "run.json").exists():
        if not resume:
            raise ConfigError(f"{run_dir}: already holds a training run; pass --resume to continue it, "
                              "or choose a new output directory")
        _check_resumable(run_dir, run_info)
    elif existing:
        raise ConfigError(f"{run_dir}: has checkpoints but no run.json; not a caloforge run directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in list(run_dir.glob("checkpoints/.tmp-*")) + list(run_dir.glob(".best-*")):
        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
    if not (run_dir / "run.json").exists():
        with atomic_path(run_dir / "run.json") as tmp:
            tmp.write_text(json.dumps(run_info, indent=1))

    # --- model, optimisers, random generators ------------------------------------------
    preps = _preprocessings(cfg.model, train_data, geo.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        model = build_model(cfg.model, preps)
    model.to(dev).train()
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for k, gan in enumerate(model.gans):
        g, d = tc.generator_optimizer, tc.critic_optimizer
        optimizers[f"gans.{k}.generator"] = torch.optim.Adam(gan.generator.parameters(), lr=g.lr, betas=(g.beta1, g.beta2))
        optimizers[f"gans.{k}.critic"] = torch.optim.Adam(gan.critic.parameters(), lr=d.lr, betas=(d.beta1, d.beta2))
    data_rng = torch.Generator().manual_seed(tc.seed + 1)
    noise_rng = torch.Generator(device=dev).manual_seed(tc.seed + 2)

    # training tensors per energy range
    route = model.route(train_data.incident_energy)
    tensors = []
    for k, gan in enumerate(model.gans):
        part = train_data.select(np.flatnonzero(route == k))
        e = torch.as_tensor(part.incident_energy, dtype=torch.float64)
        x = gan.preprocessing.forward(torch.as_tensor(part.showers), e).to(dev)
        tensors.append((x, gan.preprocessing.condition(e).to(dev)))

    iteration, history, best_iteration, best_score = 0, [], None, math.inf
    last_ckpt: Path | None = None
    if resume and existing:
        last_ckpt = existing[-1][1]
        meta = _load_checkpoint(last_ckpt, model, optimizers, dev)
        _set_rng_state(data_rng, meta["rng"]["data"])
        _set_rng_state(noise_rng, meta["rng"]["noise"])
        iteration = int(meta["iteration"])
        history = [(int(i), float(s)) for i, s in meta["scores"]]
        best_iteration, best_score = _best(history)
        if best_iteration is not None:  # a kill between checkpoint and these updates leaves them stale
            _point_best(run_dir, run_dir / "checkpoints" / _checkpoint_name(best_iteration))
            _write_scores(run_dir, history, best_iteration)
    _truncate_log(run_dir / "log.csv", iteration)

    def meta_for(it: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "iteration": it,
            "model": asdict(cfg.model), "training": asdict(tc), "geometry": geo.name, "n_voxels": geo.n_voxels,
            "e_min": model.e_min, "e_max": model.e_max, "energy_split": list(cfg.model.energy_split),
            "preprocessing": [asdict(g.preprocessing) for g in model.gans],
            "rng": {"data": _rng_state(data_rng), "noise": _rng_state(noise_rng)},
            "scores": [[i, s] for i, s in history], "score": history[-1][1] if history else None,
            "score_name": "chi2_etot", "torch_version": torch.__version__,
        }

    def checkpoint(it: int) -> Path:
        nonlocal best_iteration, best_score, history
        score = _score(model, val_data, tc.seed + 3, dev)
        history = history + [(it, score)]
        path = run_dir / "checkpoints" / _checkpoint_name(it)
        _write_checkpoint(path, model, optimizers, meta_for(it))
        best_iteration, best_score = _best(history)
        if best_iteration == it:
            _point_best(run_dir, path)
        _write_scores(run_dir, history, best_iteration)
        kept = {_checkpoint_name(best_iteration)} if best_iteration is not None else set()
        for _, old in _checkpoints(run_dir)[: -tc.keep_checkpoints]:
            if old.name not in kept:
                shutil.rmtree(old, ignore_errors=True)
        return path

    writer = None
    if tc.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=iteration + 1)
    new_log = not (run_dir / "log.csv").exists()
    log_file = open(run_dir / "log.csv", "a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(LOG_COLUMNS)
        log_file.flush()

    bar = _Progress(progress, total, iteration, budget_s)
    t0 = time.monotonic()
    stopped, message = "completed", ""
    try:
        while iteration < total:
            losses = [_train_iteration(gan, optimizers[f"gans.{k}.generator"], optimizers[f"gans.{k}.critic"],
                                       *tensors[k], tc, data_rng, noise_rng)
                      for k, gan in enumerate(model.gans)]
            iteration += 1
            agg = {key: float(np.mean([l[key] for l in losses])) for key in losses[0]}
            bad = [key for key, v in agg.items() if not math.isfinite(v)]
            if bad:
                stopped = "diverged"
                kept = f"; last good checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was written yet"
                message = f"training diverged at iteration {iteration}: {bad[0].replace('_', ' ')} is {agg[bad[0]]}{kept}"
                break
            elapsed = time.monotonic() - t0
            if iteration % tc.log_every == 0 or iteration == total:
                log.writerow([iteration, f"{elapsed:.3f}"] + [repr(agg[k]) for k in LOG_COLUMNS[2:]])
                log_file.flush()
                if writer is not None:
                    for k in LOG_COLUMNS[2:]:
                        writer.add_scalar(f"loss/{k}", agg[k], iteration)
            time_up = budget_s is not None and elapsed >= budget_s
            best_text = f"best χ² {best_score:.4g}" if best_iteration is not None else ""
            bar.update(iteration, f"D {agg['critic_loss']:+.3g}  G {agg['generator_loss']:+.3g}  {best_text}")
            if iteration % tc.checkpoint_every == 0 or iteration == total or time_up:
                last_ckpt = checkpoint(iteration)
                if writer is not None:
                    writer.add_scalar("score/chi2_etot", history[-1][1], iteration)
                    writer.flush()
                bar.update(iteration, f"χ² {history[-1][1]:.4g} (best {best_score:.4g} @ {best_iteration})", force=True)
            if time_up and iteration < total:
                stopped, message = "max_time", f"time budget reached after iteration {iteration}"
                break
    finally:
        bar.close()
        log_file.close()
        if writer is not None:
            writer.close()

    best_path = run_dir / "best" if best_iteration is not None else None
    if not message:
        message = f"finished {iteration} iterations"
    return TrainResult(run_dir, best_path, best_score, best_iteration, last_ckpt, iteration, history, stopped, message)


def _best(history: list[tuple[int, float]]) -> tuple[int | None, float]:
    finite = [(s, i) for i, s in history if math.isfinite(s)]
    if not finite:
        return (history[0][0], math.inf) if history else (None, math.inf)
    s, i = min(finite)  # ties → earliest iteration
    return i, s


def _check_resumable(run_dir: Path, run_info: dict) -> None:
    old = json.loads((run_dir / "run.json").read_text())
    a, b = _flatten(old.get("config", {})), _flatten(run_info["config"])
    for key in sorted(set(a) | set(b)):
        if key not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
            raise ConfigError(f"{run_dir}: cannot resume, config key {key} was {a.get(key)!r}, now {b.get(key)!r}")
    for part in ("data", "validation"):
        if old.get(part) != run_info[part]:
            raise DataError(f"{run_dir}: cannot resume, the {part} showers differ from the ones the run started with")


def _load_checkpoint(path: Path, model: torch.nn.Module, optimizers, device: torch.device) -> dict:
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "config.json").read_text())
        model.load_state_dict(load_file(path / "model.safetensors", device=str(device)))
        _load_optimizers(optimizers, load_file(path / "optimizer.safetensors"),  # Adam wants CPU steps
                         meta["optimizer_param_groups"])
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DataError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return meta

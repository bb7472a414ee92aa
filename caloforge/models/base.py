"""The model interface every family implements, and the registry from ``model.name`` to it.

A family is one file: a config dataclass (subclass of :class:`ModelConfig`) and a
:class:`ShowerModel` subclass registered with :func:`register`.  The model owns

* its preprocessing and condition encoding, fitted from the training data by
  :meth:`ShowerModel.fit_state` and saved as JSON with the weights;
* its optimisers (:meth:`ShowerModel.configure_optimizers`) and its losses: one
  :meth:`ShowerModel.training_step` is a whole iteration (a GAN's critic steps and
  its generator step, an autoencoder's reconstruction + adversarial + MMD terms);
* sampling: :meth:`ShowerModel.sample_noise` and :meth:`ShowerModel.decode`, which
  :meth:`ShowerModel.sample` combines into finite, non-negative showers in MeV;
* :meth:`ShowerModel.export_module`, the network to export for inference.

The trainer (:mod:`caloforge.train`) knows nothing else about a family.

Families never import each other: what several share lives in :mod:`caloforge.models.parts`,
and what one family needs of another's models is a :class:`typing.Protocol` here
(:class:`Teacher`).  A family that builds on another trained model (the student on its
teacher) gets it through a :class:`ModelLoader` handed to :func:`fit` / :func:`build` by the
code that loads checkpoints (:func:`caloforge.checkpoint.model_loader`), never by importing it.

>>> from caloforge.models import get_family
>>> get_family("caloshowergan").Config.__name__
'CaloShowerGANConfig'
>>> cfg = load_config({"model": {"name": "caloshowergan", "geometry": "ds1-photons"},
...                    "training": {"batch_size": 64}})
>>> cfg.model.critic_hidden, cfg.training.batch_size, cfg.model.critic_steps
([368, 368, 368], 64, 8)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from caloforge import distributed
from caloforge.conditions import ConditionEncoder, check_conditions_config
from caloforge.config import RunConfig, from_dict, parse_run_config, requirement
from caloforge.errors import ConfigError

__all__ = ["ModelConfig", "Batch", "BatchSource", "ShowerModel", "ModelLoader", "Teacher", "register", "get_family",
           "families", "model_config", "load_config", "build", "fit", "as_conditions"]

_REGISTRY: dict[str, type["ShowerModel"]] = {}


@dataclass
class ModelConfig:
    """Keys every family's ``model:`` section has.

    ``conditions`` maps condition names to encodings (:mod:`caloforge.conditions`);
    ``energy_condition`` is ``incident`` or ``kinetic`` (E − m of ``particle``);
    ``energy_range`` ([E_min, E_max] MeV) pins the energy encoding's range, empty
    takes it from the training data.
    """

    name: str = ""
    geometry: str = "ds1-photons"
    conditions: dict[str, str] = field(default_factory=lambda: {"incident_energy": "log"})
    energy_condition: str = "incident"
    particle: str = "photon"
    energy_range: list[float] = field(default_factory=list)

    def check(self, require: Callable[[bool, str, str, Any], None], source: str) -> None:
        """Validate values (``require(ok, key, what, value)``); families extend this."""
        from caloforge.geometry import load_geometry

        try:
            load_geometry(self.geometry)
        except Exception as exc:  # GeometryError or a bad path
            raise ConfigError(f"{source}: model.geometry {self.geometry!r} is not a known geometry ({exc})") from None
        check_conditions_config(self.conditions, self.energy_condition, self.particle, require)
        r = self.energy_range
        require(len(r) == 0 or (len(r) == 2 and 0 < r[0] < r[1]), "model.energy_range",
                "empty or [E_min, E_max] MeV with 0 < E_min < E_max", r)


@dataclass
class Batch:
    """Training showers: ``showers`` (n, V) float32 MeV, ``incident_energy`` (n,) float64 MeV, conditions."""

    showers: Tensor
    incident_energy: Tensor
    conditions: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.incident_energy)


class BatchSource:
    """Seeded random batches from the training showers (drawn with replacement).

    Under data-parallel training every rank draws the same global indices from the
    same generator and keeps its own slice, so the global batch is the one a single
    process would draw.  :meth:`subset` restricts to some rows (energy ranges) and
    shares the generator.
    """

    def __init__(self, showers: Tensor, incident_energy: Tensor, conditions: Mapping[str, Tensor],
                 batch_size: int, generator: torch.Generator, index: np.ndarray | None = None) -> None:
        self.showers, self.incident_energy, self.conditions = showers, incident_energy, dict(conditions)
        self.batch_size, self.generator = int(batch_size), generator
        self.index = None if index is None else torch.as_tensor(index, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.incident_energy) if self.index is None else len(self.index)

    def subset(self, index: np.ndarray, batch_size: int | None = None) -> "BatchSource":
        index = np.asarray(index, dtype=np.int64)
        if self.index is not None:
            index = self.index.numpy()[index]
        return BatchSource(self.showers, self.incident_energy, self.conditions,
                           batch_size or self.batch_size, self.generator, index)

    def next(self, batch_size: int | None = None) -> Batch:
        """The next random batch (this rank's share of ``batch_size`` global rows)."""
        n_global = batch_size or self.batch_size
        idx = torch.randint(len(self), (n_global,), generator=self.generator)
        if self.index is not None:
            idx = self.index[idx]
        world, r = distributed.world_size(), distributed.rank()
        if world > 1:
            per = n_global // world
            idx = idx[r * per:(r + 1) * per]
        idx = idx.to(self.showers.device)
        return Batch(self.showers[idx], self.incident_energy[idx], {k: v[idx] for k, v in self.conditions.items()})

    def take(self, index: np.ndarray | Tensor) -> Batch:
        """Rows ``index`` (positions 0 … len − 1 of this source), e.g. for a fit over training showers.

        Families that need many training showers at once (a latent density, a statistic)
        read them in chunks through this, never through ``showers``: a streamed source
        (:class:`caloforge.streaming.StreamingBatchSource`) has no showers in memory.
        """
        idx = torch.as_tensor(index, dtype=torch.long).cpu()
        if self.index is not None:
            idx = self.index[idx]
        idx = idx.to(self.showers.device)
        return Batch(self.showers[idx], self.incident_energy[idx], {k: v[idx] for k, v in self.conditions.items()})

    def state(self) -> dict[str, Any]:
        """What a checkpoint must store beside the data generator to resume the same batches (none here)."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` (nothing for in-memory showers)."""


def as_conditions(conditions: Any) -> dict[str, Tensor]:
    """A mapping with ``incident_energy`` (or a bare array of energies) → dict of float64 tensors."""
    if isinstance(conditions, Mapping):
        out = {k: torch.as_tensor(np.asarray(v, dtype=np.float64) if not isinstance(v, Tensor) else v,
                                  dtype=torch.float64).reshape(-1) for k, v in conditions.items()}
    else:
        out = {"incident_energy": torch.as_tensor(np.asarray(conditions, dtype=np.float64)).reshape(-1)}
    if "incident_energy" not in out:
        raise ConfigError("conditions must include incident_energy")
    return out


class ShowerModel(nn.Module):
    """Base class of every family; see the module docstring.

    Subclasses set ``Config`` (their dataclass) and ``loss_names`` and implement
    :meth:`configure_optimizers`, :meth:`training_step`, :meth:`decode` and
    :attr:`noise_dim`; they may extend :meth:`fit_state` with fitted preprocessing.
    """

    family: ClassVar[str] = ""
    Config: ClassVar[type] = ModelConfig
    loss_names: ClassVar[tuple[str, ...]] = ("loss",)

    def __init__(self, config: ModelConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.geometry = geometry
        self.fitted = dict(state)
        self.condition_encoder = ConditionEncoder.from_state(state["conditions"])
        self.model_loader: ModelLoader | None = None  # set by fit / build: how to load another trained model

    # --- construction ---------------------------------------------------------------
    @classmethod
    def from_training_data(cls, config: ModelConfig, showers: Tensor, incident_energy: Tensor,
                           conditions: Mapping[str, Tensor], geometry, source: str,
                           model_loader: "ModelLoader | None" = None) -> "ShowerModel":
        """The model with its preprocessing fitted on training data (:meth:`fit_state`).

        ``model_loader`` loads other trained models the family builds on (none by default)."""
        model = cls(config, geometry, cls.fit_state(config, showers, incident_energy, conditions, geometry, source))
        model.model_loader = model_loader
        return model

    @classmethod
    def fit_state(cls, config: ModelConfig, showers: Tensor, incident_energy: Tensor,
                  conditions: Mapping[str, Tensor], geometry, source: str) -> dict[str, Any]:
        """JSON-able state fitted on the training data: the condition encoder (families add theirs)."""
        enc = ConditionEncoder.fit(config.conditions, incident_energy, conditions,
                                   energy_condition=config.energy_condition, particle=config.particle,
                                   energy_range=config.energy_range, source=source)
        return {"conditions": enc.state()}

    def state(self) -> dict[str, Any]:
        """What :meth:`fit_state` fitted, to be saved with the weights."""
        return self.fitted

    @property
    def n_voxels(self) -> int:
        return self.geometry.n_voxels

    @property
    def decode_rows(self) -> int:
        """Showers per :meth:`decode` call in :meth:`sample` on a CPU (a GPU decodes the whole batch):
        ~1.5 MB of float32 voxels (1068 DS1-photon showers).  At batch 10 000 on one core this took
        the flow student from 3.1× to 1.8× the CaloShowerGAN photon generator's cost; the GANs
        themselves do not measurably change (``benchmarks/bench_one_step.py --whole-batch``)."""
        return max(64, 393_216 // self.n_voxels)

    @property
    def condition_names(self) -> list[str]:
        """Physical conditions the model needs, ``incident_energy`` first."""
        return self.condition_encoder.names

    @property
    def energy_limits(self) -> tuple[float, float]:
        """The incident-energy range (MeV) the model was fitted on."""
        spec = self.condition_encoder.specs[0]
        m = self.condition_encoder.mass
        return spec.lo + m, spec.hi + m

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def encode_conditions(self, incident_energy: Tensor, conditions: Mapping[str, Tensor]) -> Tensor:
        """The network's condition vector (N, ``condition_encoder.dim``), on the model's device."""
        return self.condition_encoder.encode(incident_energy, conditions).to(self.device)

    # --- training ---------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers; their states are checkpointed under these names."""
        raise NotImplementedError

    def training_step(self, data: BatchSource, optimizers: Mapping[str, torch.optim.Optimizer],
                      generator: torch.Generator) -> dict[str, float]:
        """One training iteration: draw batches from ``data``, step ``optimizers`` (those of
        :meth:`configure_optimizers`) with :meth:`optimize`, return the losses named in
        :attr:`loss_names`; all noise comes from ``generator``."""
        raise NotImplementedError

    def optimize(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
        """zero_grad → backward → gradients averaged over ranks → step; nothing for an optimiser whose
        parameters are all frozen (``training.fine_tune.freeze``)."""
        optimizer.zero_grad(set_to_none=True)
        if not any(p.requires_grad for g in optimizer.param_groups for p in g["params"]):
            return
        loss.backward()
        distributed.all_reduce_gradients(p for g in optimizer.param_groups for p in g["params"])
        optimizer.step()

    def validation_metrics(self, batch: Batch) -> dict[str, float]:
        """Extra checkpoint scores on validation showers (e.g. ``val_nll``); none by default."""
        return {}

    def before_checkpoint(self, data: "BatchSource") -> None:
        """Refit what depends on the current weights but is no part of the training (e.g. the student's
        marginal map) before a checkpoint is scored and written; ``data``: the training rows.
        Nothing by default; it must be deterministic and draw from no shared generator, so a
        resumed run stays bit-identical."""

    @property
    def complete(self) -> bool:
        """Whether the model is in its final form (a multi-stage family is not before its last stage):
        once a run has a complete checkpoint, ``best`` is chosen among complete ones only."""
        return True

    # --- sampling -----------------------------------------------------------------------
    def default_sampling(self) -> dict[str, Any]:
        """Generation options this family understands and their defaults (none by default).

        An ODE-based family returns e.g. ``{"steps": 16, "solver": "euler"}``; the values'
        types are the options' types.
        """
        return {}

    @property
    def eager_is_faster(self) -> bool:
        """True where this model's exported graph is known to be slower than PyTorch (a
        data-dependent loop the export replaces with a costlier fixed form): ``generate``'s
        ``auto`` engine then stays in PyTorch for large requests too."""
        return False

    @property
    def sampling_options(self) -> dict[str, Any]:
        """The generation options in force: the defaults updated by :meth:`set_sampling`."""
        return {**self.default_sampling(), **self.__dict__.get("_sampling", {})}

    def set_sampling(self, **options: Any) -> None:
        """Set generation options (``steps=16``); strings are converted to the option's type.

        Unknown options and values of the wrong type raise :class:`ConfigError`; families
        validate values in :meth:`check_sampling`.
        """
        defaults = self.default_sampling()
        merged = dict(self.__dict__.get("_sampling", {}))
        for key, value in options.items():
            if key not in defaults:
                known = ", ".join(defaults) or "none"
                raise ConfigError(f"sampling option {key!r} is not known to {self.family or 'this model'} "
                                  f"(known: {known})")
            kind = type(defaults[key])
            try:
                merged[key] = value if type(value) is kind else _coerce(value, kind)
            except (TypeError, ValueError):
                raise ConfigError(f"sampling option {key}: expected {kind.__name__}, got {value!r}") from None
        self.check_sampling({**defaults, **merged})
        self.__dict__["_sampling"] = merged

    def check_sampling(self, options: Mapping[str, Any]) -> None:
        """Validate a full set of generation options (ConfigError); nothing to check by default."""

    @property
    def noise_dim(self) -> int:
        raise NotImplementedError

    def sample_noise(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | None = None) -> Tensor:
        """The random input of :meth:`decode` for ``n`` showers (standard normal by default)."""
        return torch.randn(n, self.noise_dim, generator=generator, device=device or self.device)

    def noise_spec(self) -> dict[str, Any]:
        """How :meth:`sample_noise` draws each noise column, for deployments that draw it themselves.

        ``{"distribution": "normal", "mean": [...], "std": [...]}`` (one entry per
        column; std 0 = a constant column) or ``"uniform"`` with ``"low"``/``"high"``.
        Families that override :meth:`sample_noise` override this too; the export
        tests check the two agree.
        """
        return {"distribution": "normal", "mean": [0.0] * self.noise_dim, "std": [1.0] * self.noise_dim}

    def decode(self, noise: Tensor, incident_energy: Tensor, conditions: Mapping[str, Tensor]) -> Tensor:
        """Deterministic map noise + physical conditions → showers in MeV (N, V)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, conditions: Any, generator: torch.Generator | None = None) -> Tensor:
        """Showers in MeV (float32, finite, ≥ 0) for ``conditions`` ({'incident_energy': …, …} or energies)."""
        cond = as_conditions(conditions)
        dev = self.device
        energy = cond.pop("incident_energy").to(dev)
        cond = {k: v.to(dev) for k, v in cond.items()}
        self.condition_encoder.check(list(cond), "sample()")
        noise = self.sample_noise(len(energy), generator, dev)
        # on a CPU the same noise is decoded a cache-sized block of showers at a time: every element-wise
        # step of a decoder then reads its block from the core's cache, not the whole batch from memory
        rows = self.decode_rows if torch.device(dev).type == "cpu" else max(len(energy), 1)
        if len(energy) > rows:
            out = torch.cat([self.decode(noise[i:i + rows], energy[i:i + rows],
                                         {k: v[i:i + rows] for k, v in cond.items()})
                             for i in range(0, len(energy), rows)])
        else:
            out = self.decode(noise, energy, cond)
        out = out.to(torch.float32)
        return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).clamp_min_(0.0)

    def export_module(self) -> nn.Module:
        """``forward(noise (N, noise_dim), conditions (N, len(condition_names)))`` → showers in MeV.

        Conditions are physical (MeV, rad, mm) in :attr:`condition_names` order; the
        encoding and the inverse preprocessing are part of the exported graph.
        """
        return _Exported(self)


class _Exported(nn.Module):
    def __init__(self, model: ShowerModel) -> None:
        super().__init__()
        self.model = model
        self.names = model.condition_names

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        extra = {name: conditions[:, i] for i, name in enumerate(self.names) if i > 0}
        out = self.model.decode(noise, conditions[:, 0], extra)
        return out.to(torch.float32).clamp_min(0.0)


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool:
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return kind(value)


class ModelLoader(Protocol):
    """Loads a trained model (eval mode, CPU) from a checkpoint or run directory; :class:`DataError`
    with one line otherwise (:func:`caloforge.checkpoint.model_loader`)."""

    def __call__(self, path: str | Path) -> ShowerModel: ...


@runtime_checkable
class Teacher(Protocol):
    """A model whose deterministic noise → representation map another model learns (the student's teacher).

    Besides :meth:`transport`, a teacher is a :class:`ShowerModel` whose ``fitted`` state has a
    ``representation`` (:class:`~caloforge.models.parts.representation.ShowerRepresentation`)
    and whose :attr:`~ShowerModel.noise_dim` equals that representation's L + V columns;
    ``caloflow`` and ``flow_matching`` are teachers
    (:class:`~caloforge.models.parts.two_stage.TwoStageFamily`).
    """

    family: str
    geometry: Any
    fitted: dict[str, Any]
    condition_encoder: ConditionEncoder

    @property
    def noise_dim(self) -> int: ...

    def transport(self, noise: Tensor, incident_energy: Tensor,
                  conditions: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Noise (N, noise_dim) → (y₁, y₂): the layer and voxel vectors before the inverse preprocessing."""
        ...

    def default_sampling(self) -> dict[str, Any]: ...

    def set_sampling(self, **options: Any) -> None: ...


def register(name: str) -> Callable[[type[ShowerModel]], type[ShowerModel]]:
    """Class decorator: make a family available as ``model.name: NAME``."""

    def deco(cls: type[ShowerModel]) -> type[ShowerModel]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model family {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.family = name
        _REGISTRY[name] = cls
        return cls

    return deco


_PLUGINS_LOADED = False


def _load_plugins() -> None:
    """Import families from other packages (the shipped ones register when :mod:`caloforge.models` is imported).

    Other packages register a family with an entry point in the group
    ``caloforge.models`` (``name = "package.module"``), or a user lists modules in
    ``CALOFORGE_MODELS`` (comma-separated, importable from ``sys.path``): either way
    ``caloforge train`` / ``generate`` and torchrun's worker processes find them.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    import importlib
    import os
    from importlib.metadata import entry_points

    # the shipped families are registered already: importing this module runs caloforge/models/__init__.py
    names = [ep.value for ep in entry_points(group="caloforge.models")]
    names += [m.strip() for m in os.environ.get("CALOFORGE_MODELS", "").split(",") if m.strip()]
    for module in names:
        try:
            importlib.import_module(module.split(":")[0])
        except ImportError as exc:
            raise ConfigError(f"CALOFORGE_MODELS / entry point: cannot import model module {module!r} ({exc})") from None


def families() -> list[str]:
    """Registered family names."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_family(name: str, source: str = "config") -> type[ShowerModel]:
    """The class registered as ``name``; ConfigError with did-you-mean otherwise."""
    _load_plugins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(_REGISTRY))}"
        raise ConfigError(f"{source}: model.name {name!r} is unknown ({hint})")
    return _REGISTRY[name]


def model_config(section: Mapping[str, Any], source: str = "config") -> ModelConfig:
    """The validated config dataclass of a ``model:`` mapping; ``model.name`` picks the family
    (default ``caloshowergan``), which checks its own keys."""
    family = get_family(section.get("name", "caloshowergan"), source)
    config = from_dict(family.Config, section, "model.", source)
    config.check(requirement(source), source)
    return config


def load_config(path_or_dict: str | Path | Mapping | RunConfig) -> RunConfig:
    """Read and validate a training config (YAML file, shipped config name, mapping, or RunConfig):
    :func:`caloforge.config.parse_run_config` with the family registry for the ``model:`` section."""
    return parse_run_config(path_or_dict, model_config)


def build(config: ModelConfig, state: Mapping[str, Any], model_loader: ModelLoader | None = None) -> ShowerModel:
    """Instantiate the family of ``config`` with a fitted ``state`` (no data needed).

    ``model_loader`` loads the trained models the family builds on (the student's teacher)."""
    from caloforge.geometry import load_geometry

    cls = get_family(config.name)
    model = cls(config, load_geometry(config.geometry), state)
    model.model_loader = model_loader
    return model


def fit(config: ModelConfig, showers: Tensor, incident_energy: Tensor, conditions: Mapping[str, Tensor],
        source: str = "training data", model_loader: ModelLoader | None = None) -> ShowerModel:
    """Fit the family's preprocessing on training data and build the model (see :func:`build`)."""
    from caloforge.geometry import load_geometry

    cls = get_family(config.name)
    geo = load_geometry(config.geometry)
    return cls.from_training_data(config, showers, incident_energy, conditions, geo, source, model_loader)


def layer_sizes(geometry) -> Sequence[int]:
    """Voxels per read-out layer, in voxel order (for per-layer preprocessing)."""
    return [layer.n_voxels for layer in geometry.layers if layer.n_voxels]

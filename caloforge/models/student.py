"""A one-step student distilled from a flow teacher (``model.name: student``).

The teacher (a trained ``flow_matching`` or ``caloflow`` checkpoint, named by
``model.teacher``) defines a deterministic map from Gaussian noise to showers: the
ODE integrated with ``teacher_steps`` steps, or the flow's one-pass inverse.  The
student is a plain MLP, noise + condition vector → the teacher's representation
(layer vector y₁ and voxel vector y₂), trained to reproduce that map by regression
on fresh (noise, teacher output) pairs every iteration — knowledge distillation of the
probability-flow ODE (Luhman & Luhman 2021; with a rectified-flow teacher, whose paths
are nearly straight, the map is smooth and a small MLP can follow it).  A
per-coordinate gain carries each noise coordinate to the output (the ODE moves every
coordinate away from its noise value), so the MLP, narrower than the noise, learns the
correction.  The teacher's outputs are clamped to the box outside which its decoding no
longer changes (a coupling flow's inverse throws rare tail noise to ±10¹³, which would
otherwise swamp the mean squared error).  :meth:`Student.decode` is that one MLP forward pass plus the teacher's
inverse preprocessing, i.e. the cost of a GAN generator.

The student copies the teacher's fitted state (condition encoding, preprocessing) into
its own checkpoint: generation needs only the student's directory.  The teacher is
loaded when training starts or resumes, by the :class:`~caloforge.models.base.ModelLoader` that
the code building the student hands to :func:`~caloforge.models.base.fit` /
:func:`~caloforge.models.base.build` (:func:`caloforge.checkpoint.model_loader`); any model
with a :meth:`~caloforge.models.base.Teacher.transport` map is a teacher.  ``val_distill`` is the regression loss on held-out conditions at
fixed noise.

With ``calibration_bins`` > 0 the student's outputs pass through a
:class:`~caloforge.models.parts.marginal_map.MarginalMap`
before decoding: per incident-energy bin and output coordinate, the monotone map that carries the
student's marginal onto the teacher's.  A regression student is under-dispersed where its MLP cannot
follow the teacher (every coordinate's spread ~5 % short, the empty-voxel mode of the sparse layers
smeared); the map restores the marginals without touching the noise → shower ordering.  It is refitted
before every checkpoint (:meth:`Student.before_checkpoint`) on a fixed set of ``calibration_size``
teacher pairs, so each checkpoint carries the map of its own weights; the regression itself never sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from caloforge.conditions import ConditionEncoder
from caloforge.errors import ConfigError, DataError
from caloforge.models.base import Batch, BatchSource, ModelConfig, ModelLoader, ShowerModel, Teacher, register
from caloforge.models.parts.energy_bins import energy_bin_edges
from caloforge.models.parts.marginal_map import MarginalMap
from caloforge.models.parts.mlp import ACTIVATIONS, MLP
from caloforge.models.parts.representation import ShowerRepresentation
from caloforge.models.parts.schedules import ScheduleKeys, check_schedule_keys, optimizer_steps, scheduled_step

__all__ = ["StudentConfig", "Student", "load_teacher"]


@dataclass
class StudentConfig(ScheduleKeys, ModelConfig):
    """The ``model:`` section of a student config; the default MLP is ≈ 0.25 M parameters on DS1 photons."""

    name: str = "student"
    teacher: str = ""  # a checkpoint or run directory of a flow_matching / caloflow model
    teacher_steps: int = 16  # ODE steps of the teacher's targets
    teacher_solver: str = "midpoint"
    pool_size: int = 16384  # teacher pairs computed at once and reused (0: fresh pairs every iteration)
    pool_refresh: int = 100  # iterations between pool refreshes
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "silu"
    # weight of each layer coordinate (y₁) against one voxel coordinate (y₂) in the regression: with 1
    # the few layer coordinates are ~1 % of the loss and the student averages the total-energy spread
    layer_weight: float = 1.0
    # the marginal map of the outputs onto the teacher's, per incident-energy bin (0: off, the raw regression)
    calibration_bins: int = 0
    calibration_knots: int = 33  # uniform knots of each coordinate's piecewise-linear map
    calibration_size: int = 32768  # teacher pairs it is fitted on (drawn once, refitted at every checkpoint)

    def check(self, require, source: str) -> None:
        super().check(require, source)
        require(bool(self.teacher), "model.teacher", "the teacher's checkpoint directory (e.g. runs/fm/best)",
                self.teacher)
        require(self.teacher_steps > 0, "model.teacher_steps", "a positive integer", self.teacher_steps)
        require(self.teacher_solver in ("euler", "midpoint", "rk4"), "model.teacher_solver",
                "euler, midpoint or rk4", self.teacher_solver)
        require(self.pool_size >= 0, "model.pool_size", "≥ 0", self.pool_size)
        require(self.pool_refresh > 0, "model.pool_refresh", "a positive integer", self.pool_refresh)
        require(self.layer_weight > 0, "model.layer_weight", "a positive number", self.layer_weight)
        require(self.calibration_bins >= 0, "model.calibration_bins", "an integer ≥ 0 (0: no marginal map)",
                self.calibration_bins)
        require(self.calibration_knots >= 2, "model.calibration_knots", "an integer ≥ 2", self.calibration_knots)
        require(self.calibration_size >= 2, "model.calibration_size", "an integer ≥ 2", self.calibration_size)
        require(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), "model.hidden",
                "a non-empty list of positive integers", self.hidden)
        require(self.activation in ACTIVATIONS, "model.activation", f"one of {', '.join(ACTIVATIONS)}",
                self.activation)
        check_schedule_keys(self, require)


def load_teacher(cfg: StudentConfig, geometry_name: str, model_loader: ModelLoader | None,
                 source: str = "config") -> Teacher:
    """The teacher model (eval mode, CPU) named by ``model.teacher``, loaded with ``model_loader``;
    one-line errors."""
    path = Path(cfg.teacher)
    if model_loader is None:
        raise ConfigError(f"{source}: model.teacher: the student was built without a model loader, so it cannot "
                          "load its teacher (build or fit it with model_loader=caloforge.checkpoint.model_loader)")
    try:
        teacher = model_loader(path)
    except DataError as exc:
        raise ConfigError(f"{source}: model.teacher: {exc}") from None
    if not isinstance(teacher, Teacher):
        raise ConfigError(f"{source}: model.teacher {path} is a {teacher.family} model; the student distils "
                          "flow_matching or caloflow models")
    if teacher.geometry.name != geometry_name:
        raise ConfigError(f"{source}: model.teacher {path} was trained on {teacher.geometry.name}, "
                          f"the student is configured for {geometry_name}")
    if "steps" in teacher.default_sampling():
        teacher.set_sampling(steps=cfg.teacher_steps, solver=cfg.teacher_solver)
    teacher.requires_grad_(False)
    return teacher


@register("student")
class Student(ShowerModel):
    """One MLP: noise + conditions → the teacher's representation; see the module docstring."""

    Config = StudentConfig
    loss_names = ("distill",)

    def __init__(self, config: StudentConfig, geometry, state: Mapping[str, Any]) -> None:
        super().__init__(config, geometry, state)
        self.representation = ShowerRepresentation.from_state(state["representation"])
        self.target_box = self.representation.bounds()  # fixed with the representation: computed once
        n_out = self.representation.n_layers + self.representation.n_features
        self.generator_net = MLP(int(state["noise_dim"]) + self.condition_encoder.dim, config.hidden, n_out,
                                 config.activation)
        # a per-coordinate gain from the noise to the output, 1 at the start: the ODE moves each
        # coordinate from its noise value, so the MLP (narrower than the noise) learns the correction
        self.noise_gain = nn.Parameter(torch.ones(n_out)) if int(state["noise_dim"]) == n_out else None
        calibration = state.get("calibration")  # absent in students trained before the marginal map existed
        self.calibration = MarginalMap(torch.tensor(calibration["log_energy_edges"], dtype=torch.float64), n_out,
                                       config.calibration_knots, *self.target_box) if calibration else None

    @classmethod
    def from_training_data(cls, config, showers, incident_energy, conditions, geometry, source,
                           model_loader=None) -> "Student":
        teacher = load_teacher(config, geometry.name, model_loader, source)
        state = cls.fit_state(config, showers, incident_energy, conditions, geometry, source, teacher=teacher)
        model = cls(config, geometry, state)
        model.model_loader = model_loader  # the teacher itself is loaded again when training needs it
        return model

    @classmethod
    def fit_state(cls, config, showers, incident_energy, conditions, geometry, source, teacher: Teacher | None = None):
        """The teacher's fitted state (conditions, representation), with the student's own marginal-map bins."""
        if teacher is None:
            raise ConfigError(f"{source}: a student is fitted with its teacher (caloforge.models.fit with a model loader)")
        want = ConditionEncoder.fit(config.conditions, incident_energy, conditions,
                                    energy_condition=config.energy_condition, particle=config.particle,
                                    energy_range=config.energy_range, source=source)
        if want.names != teacher.condition_encoder.names:
            raise ConfigError(f"{source}: model.conditions {', '.join(want.names)} differ from the teacher's "
                              f"{', '.join(teacher.condition_encoder.names)}")
        state = {"conditions": teacher.fitted["conditions"], "representation": teacher.fitted["representation"],
                 "noise_dim": teacher.noise_dim,
                 "teacher": {"path": str(config.teacher), "family": teacher.family}}
        if config.calibration_bins > 0:
            state["calibration"] = {"log_energy_edges": energy_bin_edges(incident_energy,
                                                                         config.calibration_bins).tolist()}
        return state

    # the teacher is not a submodule: its weights stay out of the student's checkpoint
    @property
    def teacher(self) -> Teacher:
        t = self.__dict__.get("_teacher")
        if t is None:
            t = load_teacher(self.config, self.geometry.name, self.model_loader)
            self.__dict__["_teacher"] = t.to(self.device)
        return t

    @property
    def noise_dim(self) -> int:
        return int(self.fitted["noise_dim"])

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        self.teacher  # noqa: B018  (load it now: a missing teacher fails before the first step)
        return {"model": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def _context(self, incident_energy: Tensor, conditions: Mapping[str, Tensor]) -> Tensor:
        return self.condition_encoder.encode(incident_energy, conditions).to(self.device)

    def _raw(self, noise: Tensor, incident_energy: Tensor, conditions: Mapping[str, Tensor]) -> Tensor:
        """One MLP pass: (y₁ ‖ y₂) as regressed onto the teacher, before the marginal map."""
        noise = noise.to(torch.float32)
        y = self.generator_net(torch.cat([noise, self._context(incident_energy, conditions)], 1))
        if self.noise_gain is not None:
            y = y + self.noise_gain * noise
        return y

    def forward_representation(self, noise: Tensor, incident_energy: Tensor,
                               conditions: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(y₁, y₂) of one MLP pass, raw (what the regression trains); :meth:`decode` adds the marginal map."""
        y = self._raw(noise, incident_energy, conditions)
        L = self.representation.n_layers
        return y[:, :L], y[:, L:]

    @property
    def eager_is_faster(self) -> bool:
        # the envelope's exact water-filling loops in PyTorch; the exported sorted form costs ~2× the
        # whole eager generation (benchmarks/bench_one_step.py --engine onnxruntime)
        return self.representation.envelope is not None

    def decode(self, noise, incident_energy, conditions):
        y = self._raw(noise, incident_energy, conditions)
        if self.calibration is not None:
            y = self.calibration(y, incident_energy)
        L = self.representation.n_layers
        return self.representation.decode(y[:, :L], y[:, L:], incident_energy, dtype=torch.float32)

    def _teacher_targets(self, noise: Tensor, incident_energy: Tensor,
                         conditions: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(the teacher's (y₁ ‖ y₂) clamped to the decode box, rows that are finite).

        Clamping changes no teacher shower (:meth:`ShowerRepresentation.bounds`) but keeps the
        rare ±10¹³ outputs of a flow's inverse out of the mean squared error; the few rows with
        NaN are left out.
        """
        with torch.no_grad():
            t1, t2 = self.teacher.transport(noise, incident_energy, conditions)
            target = torch.cat([t1, t2], 1).to(torch.float32)
            keep = ~torch.isnan(target).any(1)
            lo, hi = (b.to(target.device) for b in self.target_box)
            target = torch.maximum(torch.minimum(torch.nan_to_num(target, nan=0.0), hi), lo)
        return target, keep

    def _regression(self, s1: Tensor, s2: Tensor, target: Tensor) -> Tensor:
        """Mean squared error over (y₁ ‖ y₂), each layer coordinate counting ``layer_weight``
        voxel coordinates (with 1: the plain mean)."""
        L, w = s1.shape[1], float(self.config.layer_weight)
        layers = (s1 - target[:, :L]).square().sum(1)
        voxels = (s2 - target[:, L:]).square().sum(1)
        return (w * layers + voxels).mean() / (w * L + s2.shape[1])

    def _distill_loss(self, batch: Batch, generator: torch.Generator | None) -> Tensor:
        noise = self.sample_noise(len(batch), generator)
        target, keep = self._teacher_targets(noise, batch.incident_energy, batch.conditions)
        s1, s2 = self.forward_representation(noise, batch.incident_energy, batch.conditions)
        return self._regression(s1[keep], s2[keep], target[keep])

    def _pool(self, data: BatchSource, cycle: int) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
        """(noise, energies, conditions, teacher representation) of refresh cycle ``cycle``.

        Each cycle's pool comes from its own seeded generator, so a resumed run rebuilds the
        very pool it was using.
        """
        cached = self.__dict__.get("_pool_cache")
        if cached is not None and cached[0] == cycle:
            return cached[1]
        pool = self._teacher_pairs(data, self.config.pool_size, 1_000_003 * (cycle + 1))
        self.__dict__["_pool_cache"] = (cycle, pool)
        return pool

    def _teacher_pairs(self, data: BatchSource, n: int, seed: int) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
        """(noise, energies, conditions, teacher representation) of ``n`` training rows drawn with ``seed``
        (rows whose teacher output has a NaN left out)."""
        dev = self.device
        g = torch.Generator(device=dev).manual_seed(seed)
        rows = torch.randint(len(data), (n,), generator=g, device=dev)
        if data.index is not None:
            rows = data.index.to(dev)[rows]
        rows = rows.to(data.incident_energy.device)
        energy = data.incident_energy[rows]
        cond = {k: v[rows] for k, v in data.conditions.items()}
        noise = self.sample_noise(len(rows), g, dev)
        targets, keeps = [], []
        for lo in range(0, len(rows), 4096):
            sl = slice(lo, lo + 4096)
            target, keep = self._teacher_targets(noise[sl], energy[sl], {k: v[sl] for k, v in cond.items()})
            targets.append(target)
            keeps.append(keep)
        keep = torch.cat(keeps)
        return noise[keep], energy[keep], {k: v[keep] for k, v in cond.items()}, torch.cat(targets)[keep]

    @torch.no_grad()
    def before_checkpoint(self, data: BatchSource) -> None:
        """Refit the marginal map to the current weights on the fixed calibration pairs."""
        if self.calibration is None:
            return
        cached = self.__dict__.get("_calibration_pairs")
        if cached is None:  # drawn once per process from a fixed seed: a resumed run redraws the same pairs
            noise, energy, cond, target = self._teacher_pairs(data, self.config.calibration_size, 2_718_281)
            # the teacher's side never changes: its quantiles are computed once, not at every refit
            cached = (noise, energy, cond, self.calibration.quantiles(target, energy))
            self.__dict__["_calibration_pairs"] = cached
        noise, energy, cond, target_quantiles = cached
        raw = torch.cat([self._raw(noise[lo:lo + 4096], energy[lo:lo + 4096],
                                   {k: v[lo:lo + 4096] for k, v in cond.items()})
                         for lo in range(0, len(energy), 4096)])
        self.calibration.fit_quantiles_(self.calibration.quantiles(raw, energy), target_quantiles)

    def training_step(self, data: BatchSource, optimizers, generator) -> dict[str, float]:
        cfg = self.config
        if cfg.pool_size == 0:
            loss = self._distill_loss(data.next(), generator)
        else:
            noise, energy, cond, target = self._pool(data, optimizer_steps(optimizers["model"]) // cfg.pool_refresh)
            pick = torch.randint(len(energy), (data.batch_size,), generator=generator, device=self.device)
            s1, s2 = self.forward_representation(noise[pick], energy[pick], {k: v[pick] for k, v in cond.items()})
            loss = self._regression(s1, s2, target[pick])
        scheduled_step(self, optimizers["model"], loss, cfg)
        return {"distill": loss.item()}

    def validation_metrics(self, batch: Batch) -> dict[str, float]:
        g = torch.Generator(device=self.device).manual_seed(0)
        with torch.no_grad():
            return {"val_distill": self._distill_loss(batch, g).item()}

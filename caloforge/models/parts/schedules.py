"""The optimiser step of the flow families and the student: cosine learning-rate decay and
gradient-norm clipping, driven by the optimiser's own step count so a resumed run continues exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ScheduleKeys", "check_schedule_keys", "scheduled_step", "optimizer_steps"]


@dataclass
class ScheduleKeys:
    """The ``model:`` keys :func:`scheduled_step` reads (a mixin of the families' config dataclasses)."""

    lr: float = 1e-3
    lr_min: float = 1e-5  # cosine decay from lr to lr_min over lr_decay_iterations (0: constant lr)
    lr_decay_iterations: int = 0
    grad_clip: float = 10.0


def check_schedule_keys(cfg: Any, require) -> None:
    """The keys :func:`scheduled_step` reads: ``lr``, ``lr_min``, ``lr_decay_iterations``, ``grad_clip``."""
    require(cfg.lr > 0, "model.lr", "positive", cfg.lr)
    require(0 <= cfg.lr_min <= cfg.lr, "model.lr_min", "in [0, lr]", cfg.lr_min)
    require(cfg.lr_decay_iterations >= 0, "model.lr_decay_iterations", "≥ 0", cfg.lr_decay_iterations)
    require(cfg.grad_clip >= 0, "model.grad_clip", "≥ 0 (0: no clipping)", cfg.grad_clip)


def scheduled_step(model, optimizer: torch.optim.Optimizer, loss: Tensor, cfg: Any) -> None:
    """One optimiser step of ``model`` (:meth:`ShowerModel.optimize`) with the family's cosine
    learning-rate decay (``cfg.lr`` → ``cfg.lr_min`` over ``cfg.lr_decay_iterations`` of the
    optimiser's own steps, so it resumes exactly) and gradient-norm clipping (``cfg.grad_clip``)."""
    if cfg.lr_decay_iterations > 0:
        done = min(optimizer_steps(optimizer) / cfg.lr_decay_iterations, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * done))
    model.optimize(_ClipThenStep(optimizer, cfg.grad_clip) if cfg.grad_clip > 0 else optimizer, loss)


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """Steps the optimiser has taken (Adam's own counter: restored on resume, so schedules resume exactly)."""
    return next((int(st["step"]) for st in optimizer.state.values() if "step" in st), 0)


class _ClipThenStep:
    """An optimiser view whose ``step`` clips the gradient norm first (after the rank averaging)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        self.optimizer, self.max_norm = optimizer, max_norm
        self.param_groups = optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], self.max_norm)
        self.optimizer.step()

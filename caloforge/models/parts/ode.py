"""What the flow-matching families share: the conditional flow-matching loss on the
rectified-flow path and the fixed-step ODE sampler with its generation options
(``steps``, ``solver``).

>>> import math, torch
>>> x = integrate(lambda t, x: -x, torch.ones(1, 1), steps=64, solver="rk4")
>>> round(x.item(), 6) == round(math.exp(-1), 6)
True
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from caloforge.errors import ConfigError
from caloforge.models.parts.flows import flow_log_prob

__all__ = ["SOLVERS", "integrate", "cfm_loss", "staged_objective", "check_sampling_options"]

SOLVERS = ("euler", "midpoint", "rk4")


def integrate(velocity, x0: Tensor, steps: int, solver: str = "euler") -> Tensor:
    """Integrate dx/dt = velocity(t, x) from t = 0 to 1 in ``steps`` fixed steps (torchdiffeq)."""
    from torchdiffeq import odeint

    t = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
    return odeint(velocity, x0, t, method=solver, options={"step_size": 1.0 / steps})[-1]


def cfm_loss(velocity: nn.Module, x1: Tensor, context: Tensor, generator: torch.Generator | None) -> Tensor:
    """Mean squared error of ``velocity(x_t, t, context)`` against x₁ − x₀ on ``x_t = (1 − t) x₀ + t x₁``
    (Lipman et al. 2023, optimal-transport path), x₀ Gaussian noise and t uniform from ``generator``."""
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
    t = torch.rand(len(x1), 1, generator=generator, device=x1.device)
    xt = (1 - t) * x0 + t * x1
    return (velocity(xt, t, context) - (x1 - x0)).square().mean()


def staged_objective(velocity: nn.Module, layer_flow: nn.Module | None, c: Tensor, y1: Tensor, y2: Tensor,
                     generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """The flow-matching families' training objective and its two terms: ``cfm + nll_layers / L``.

    With a ``layer_flow`` (CaloDREAM's split) the velocity field transports the voxel vector ``y2``
    given the conditions ``c`` and the layer vector ``y1``, and the flow's NLL of ``y1`` is the
    second term; without one the field transports ``[y1, y2]`` given ``c`` and the term is zero.
    """
    if layer_flow is None:
        cfm = cfm_loss(velocity, torch.cat([y1, y2], 1), c, generator)
        nll_layers = cfm * 0
    else:
        cfm = cfm_loss(velocity, y2, torch.cat([c, y1], 1), generator)
        nll_layers = -flow_log_prob(layer_flow, y1, c).mean()
    return cfm + nll_layers / y1.shape[1], cfm, nll_layers


def check_sampling_options(options: Mapping[str, Any]) -> None:
    """One-line ConfigError for a non-positive ``steps`` or an unknown ``solver``."""
    if options["steps"] <= 0:
        raise ConfigError(f"sampling option steps must be a positive integer, got {options['steps']}")
    if options["solver"] not in SOLVERS:
        raise ConfigError(f"sampling option solver must be one of {', '.join(SOLVERS)}, got {options['solver']!r}")

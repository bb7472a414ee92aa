"""Polyak averaging of network weights (``model.ema_decay``)."""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["WeightAverage", "check_average_key"]


def check_average_key(cfg: Any, require) -> None:
    """``ema_decay``: 0 (off) or the decay of :class:`WeightAverage` in [0.9, 1)."""
    require(cfg.ema_decay == 0 or 0.9 <= cfg.ema_decay < 1, "model.ema_decay",
            "0 (off) or in [0.9, 1) (e.g. 0.999)", cfg.ema_decay)


class WeightAverage(nn.Module):
    """An exponential moving average of some networks' weights (Polyak averaging): the
    weights a flow family samples and validates with when ``model.ema_decay`` > 0.

    Averaging the last few thousand optimiser steps removes the step-to-step noise of
    stochastic training, which a likelihood or flow-matching model otherwise carries into
    every sample (the diffusion and flow-matching literature samples from such an average
    as a rule).  The averaged copies are ordinary submodules, so checkpoints save them and
    a resumed run continues the same average.  The decay ramps up as (1 + k) / (10 + k)
    over the first steps k so the average forgets its random initialisation.

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Linear(2, 1)
    >>> avg = WeightAverage({"net": net}, decay=0.9)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(1.0)
    >>> avg.update({"net": net}, step=100)
    >>> bool(torch.allclose(avg["net"].weight, net.weight - 0.9, atol=1e-6))
    True
    """

    def __init__(self, networks: Mapping[str, nn.Module | None], decay: float) -> None:
        super().__init__()
        self.decay = float(decay)
        self.networks = nn.ModuleDict({name: copy.deepcopy(net).requires_grad_(False)
                                       for name, net in networks.items() if net is not None})

    def __getitem__(self, name: str) -> nn.Module:
        return self.networks[name]

    @torch.no_grad()
    def update(self, networks: Mapping[str, nn.Module | None], step: int) -> None:
        """Move the average towards ``networks`` after optimiser step number ``step`` (from 1)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, average in self.networks.items():
            for a, p in zip(average.parameters(), networks[name].parameters()):
                a.lerp_(p, 1.0 - decay)
            for a, b in zip(average.buffers(), networks[name].buffers()):
                a.copy_(b)

"""Pieces of the adversarial families: Adam settings from a config, and the WGAN-GP gradient penalty.

The penalty (Gulrajani et al. 2017) is (‖∇ₓ D(x̂)‖ − 1)² at random interpolates x̂ of real and
generated showers.  :func:`gradient_penalty` takes a critic of x̂ alone (any tensor shape: the
3D critics of ``bibae`` see images); :func:`critic_terms` scores real, generated and x̂ rows in one
critic pass (batch-norm-free dense critics: ``caloshowergan``, ``atlas_gan``), the faster layout.
Both draw the same interpolation weights and give the same penalty:

>>> import torch
>>> critic = torch.nn.Sequential(torch.nn.Linear(4 + 1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
>>> score = lambda x, c: critic(torch.cat([x, c], 1)).reshape(-1)
>>> real, fake, c = torch.rand(16, 4), torch.rand(16, 4), torch.rand(16, 1)
>>> joint = critic_terms(score, real, fake, c, torch.Generator().manual_seed(1))
>>> alone = gradient_penalty(lambda x: score(x, c), real, fake, torch.Generator().manual_seed(1))
>>> bool(torch.allclose(joint.penalty, alone))
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["AdamConfig", "CriticTerms", "interpolates", "gradient_penalty", "critic_terms"]


@dataclass
class AdamConfig:
    """Adam hyperparameters."""

    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def check(self, require, key: str) -> None:
        require(self.lr > 0, f"{key}.lr", "positive", self.lr)
        require(0 <= self.beta1 < 1, f"{key}.beta1", "in [0, 1)", self.beta1)
        require(0 <= self.beta2 < 1, f"{key}.beta2", "in [0, 1)", self.beta2)

    def build(self, module: nn.Module) -> torch.optim.Adam:
        """An Adam optimiser over ``module``'s parameters with these settings."""
        return torch.optim.Adam(module.parameters(), lr=self.lr, betas=(self.beta1, self.beta2))


class CriticTerms(NamedTuple):
    """A critic's mean score on real and on generated showers, and its gradient penalty."""

    real: Tensor
    fake: Tensor
    penalty: Tensor


def interpolates(real: Tensor, fake: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """x̂ = ε·real + (1 − ε)·fake, one ε ~ U(0, 1) per shower, with gradients enabled."""
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator, device=real.device)
    return (eps * real + (1.0 - eps) * fake).requires_grad_(True)


def _penalty(scores: Tensor, mix: Tensor) -> Tensor:
    """(‖∂ Σ scores / ∂ mix‖ − 1)², averaged over the showers (kept in the graph for the critic's step)."""
    (grad,) = torch.autograd.grad(scores.sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    """WGAN-GP of ``critic`` (a function of x̂ alone; bind conditions in a closure) at interpolates."""
    mix = interpolates(real, fake, generator)
    return _penalty(critic(mix), mix)


def critic_terms(critic: Callable[[Tensor, Tensor], Tensor], real: Tensor, fake: Tensor, condition: Tensor,
                 generator: torch.Generator | None = None) -> CriticTerms:
    """Mean scores on ``real`` and ``fake`` and the WGAN-GP, from one pass of ``critic(x, condition)``
    over [real, fake, x̂] (batch-norm-free critics only: the rows must not see each other)."""
    n = len(real)
    mix = interpolates(real, fake, generator)
    scores = critic(torch.cat([real, fake, mix]), torch.cat([condition, condition, condition]))
    return CriticTerms(scores[:n].mean(), scores[n:2 * n].mean(), _penalty(scores[2 * n:], mix))

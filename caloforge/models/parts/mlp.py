"""A plain multilayer perceptron and the activations a config may name."""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU,
                                           "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}



class MLP(nn.Sequential):
    """Dense layers with an activation between them (none after the last)."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str = "silu") -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_in, width), ACTIVATIONS[activation]()]
            n_in = width
        layers.append(nn.Linear(n_in, n_out))
        super().__init__(*layers)

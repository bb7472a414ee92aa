"""Conditional normalising flows built with zuko: coupling flows (two-pass masked transforms)
with affine (RealNVP-like) or rational-quadratic spline transforms."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["FlowConfig", "conditional_flow", "flow_forward", "flow_inverse", "flow_log_prob"]


@dataclass
class FlowConfig:
    """One conditional coupling flow: ``transform`` affine (RealNVP-like) or spline (neural spline)."""

    transform: str = "affine"
    transforms: int = 6
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    bins: int = 8
    randperm: bool = True

    def check(self, require, key: str) -> None:
        require(self.transform in ("affine", "spline"), f"{key}.transform", "affine or spline", self.transform)
        require(self.transforms > 0, f"{key}.transforms", "a positive integer", self.transforms)
        require(len(self.hidden) > 0 and all(h > 0 for h in self.hidden), f"{key}.hidden",
                "a non-empty list of positive integers", self.hidden)
        require(self.bins > 1, f"{key}.bins", "an integer > 1", self.bins)


def conditional_flow(features: int, context: int, cfg: FlowConfig, seed: int = 0) -> nn.Module:
    """A zuko coupling flow over ``features`` given ``context`` (two-pass masked transforms = coupling).

    Random feature permutations between the coupling layers come from ``seed``, so a flow
    is rebuilt identically when a checkpoint is loaded.

    >>> f = conditional_flow(3, 2, FlowConfig(transforms=2, hidden=[8]))
    >>> y, c = torch.randn(5, 3), torch.randn(5, 2)
    >>> torch.allclose(flow_inverse(f, flow_forward(f, y, c), c), y, atol=1e-5)
    True
    """
    import zuko

    passes = 2 if features > 1 else None
    kwargs = dict(features=features, context=context, transforms=cfg.transforms, passes=passes,
                  hidden_features=list(cfg.hidden), randperm=cfg.randperm and features > 2)
    ambient = torch.empty(0).device  # e.g. "meta" while a checkpoint's shapes are checked
    # zuko builds its masks with torch.unique, which the meta device lacks: build on the CPU, then move
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)  # zuko draws its permutations from the global RNG
        flow = zuko.flows.NSF(bins=cfg.bins, **kwargs) if cfg.transform == "spline" else zuko.flows.MAF(**kwargs)
    return flow.to(ambient)


def flow_forward(flow: nn.Module, y: Tensor, context: Tensor) -> Tensor:
    """Data → latent."""
    return flow(context).transform(y)


def flow_inverse(flow: nn.Module, z: Tensor, context: Tensor) -> Tensor:
    """Latent → data: one pass through the coupling layers."""
    return flow(context).transform.inv(z)


def flow_log_prob(flow: nn.Module, y: Tensor, context: Tensor) -> Tensor:
    """Exact log-density of ``y`` given ``context`` (N,)."""
    return flow(context).log_prob(y)

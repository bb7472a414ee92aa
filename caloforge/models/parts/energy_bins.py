"""Incident-energy bins: one per distinct energy of a discrete training set, else quantile bins of log E_inc."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["energy_bin_edges", "energy_bin_index"]


def energy_bin_edges(incident_energy: Tensor, bins: int) -> Tensor:
    """Inner edges in log E_inc (float64) of at most ``bins`` bins: one bin per distinct energy when
    the training set has at most ``bins`` of them (the CaloChallenge DS1 energies), otherwise quantile
    bins of log E_inc.

    >>> energy_bin_edges(torch.tensor([256.0, 256.0, 1024.0]), bins=8).exp().round().tolist()
    [512.0]
    """
    log_e = incident_energy.to(torch.float64).reshape(-1).log()
    distinct = torch.unique(log_e)
    if len(distinct) <= bins:  # midpoints between the distinct energies
        return (distinct[1:] + distinct[:-1]) / 2
    return torch.unique(torch.quantile(log_e, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]))


def energy_bin_index(incident_energy: Tensor, log_energy_edges: Tensor) -> Tensor:
    """The bin of each incident energy (N,) under :func:`energy_bin_edges`; energies outside the
    fitted range fall in the first or last bin."""
    # a comparison count rather than bucketize: the same numbers, and it exports to ONNX
    edges = log_energy_edges.to(incident_energy.device)
    return (incident_energy.to(torch.float64).reshape(-1).log()[:, None] > edges[None, :]).sum(1)

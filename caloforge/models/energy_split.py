"""Several GANs for incident-energy ranges behind one object.

CaloShowerGAN can be trained as separate GANs for low and high energies (e.g. split
at 4.1 GeV, or at 4.1 and 262 GeV): each range gets its own conditioning range
E_min…E_max, so the condition keeps its full [0, 1] resolution.  :class:`EnergySplitGAN`
routes each requested energy to the GAN of its range; with no boundaries it is a
single GAN.  Range ``k`` covers ``boundaries[k-1] <= E < boundaries[k]``.

>>> from caloforge.models.caloshowergan import CaloShowerGANConfig, Preprocessing
>>> cfg = CaloShowerGANConfig(latent_dim=4, generator_hidden=[8], critic_hidden=[8])
>>> parts = [Preprocessing(256.0, 4096.0, 368, "ds1-photons"), Preprocessing(8192.0, 4194304.0, 368, "ds1-photons")]
>>> model = EnergySplitGAN(cfg, parts, boundaries=[4100.0])
>>> model.route([256.0, 4096.0, 4100.0, 65536.0]).tolist()
[0, 0, 1, 1]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.models.caloshowergan import CaloShowerGAN, CaloShowerGANConfig, Preprocessing

__all__ = ["EnergySplitGAN", "range_index"]


def range_index(boundaries: Sequence[float], incident_energy) -> np.ndarray:
    """Index of the energy range of each energy (MeV): range ``k`` is ``boundaries[k-1] <= E < boundaries[k]``.

    The one place that convention lives, for training (which showers a GAN sees) and sampling alike.

    >>> range_index([4100.0], [256.0, 4100.0, 65536.0]).tolist()
    [0, 1, 1]
    """
    e = np.asarray(incident_energy, dtype=np.float64).reshape(-1)
    return np.searchsorted(np.asarray(boundaries, dtype=np.float64), e, side="right")


class EnergySplitGAN(nn.Module):
    """One :class:`CaloShowerGAN` per incident-energy range, sampled through one call."""

    def __init__(
        self, cfg: CaloShowerGANConfig, preprocessing: Sequence[Preprocessing], boundaries: Sequence[float] = ()
    ) -> None:
        super().__init__()
        boundaries = [float(b) for b in boundaries]
        if len(preprocessing) != len(boundaries) + 1:
            raise ValueError(f"{len(boundaries)} boundaries need {len(boundaries) + 1} preprocessings, got {len(preprocessing)}")
        if any(b <= a for a, b in zip(boundaries, boundaries[1:])):
            raise ValueError(f"energy boundaries must increase, got {boundaries}")
        self.cfg = cfg
        self.boundaries = boundaries
        self.gans = nn.ModuleList(CaloShowerGAN(cfg, p) for p in preprocessing)

    @property
    def n_voxels(self) -> int:
        return self.gans[0].preprocessing.n_voxels

    @property
    def e_min(self) -> float:
        return min(g.preprocessing.e_min for g in self.gans)

    @property
    def e_max(self) -> float:
        return max(g.preprocessing.e_max for g in self.gans)

    def route(self, incident_energy) -> np.ndarray:
        """Index of the GAN responsible for each energy (MeV)."""
        return range_index(self.boundaries, incident_energy)

    @torch.no_grad()
    def sample(self, incident_energy, rng: torch.Generator | None = None) -> Tensor:
        """Showers in MeV (float32, ≥ 0), each drawn from the GAN of its energy range."""
        e = np.asarray(incident_energy, dtype=np.float64).reshape(-1)
        device = next(self.parameters()).device
        out = torch.empty(len(e), self.n_voxels, dtype=torch.float32, device=device)
        route = self.route(e)
        for k, gan in enumerate(self.gans):
            idx = np.flatnonzero(route == k)
            if len(idx):
                out[torch.as_tensor(idx, device=device)] = gan.sample(torch.as_tensor(e[idx]), rng)
        return out

"""Conditional generative models, by name.

``MODELS`` maps a model name (the ``model.name`` key of a training config) to its
config dataclass and builder.  A builder takes the config and one
:class:`~caloforge.models.caloshowergan.Preprocessing` per energy range and returns
a module with ``gans`` (generator/critic pairs), ``route(energy)`` and
``sample(energy, rng)``.

>>> from caloforge.models import build_model, Preprocessing
>>> cfg = MODELS["caloshowergan"].config(latent_dim=8, generator_hidden=[16], critic_hidden=[16])
>>> model = build_model(cfg, [Preprocessing(256.0, 4194304.0, 368, "ds1-photons")])
>>> tuple(model.sample([1000.0, 65536.0]).shape)
(2, 368)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from caloforge.errors import ConfigError
from caloforge.models.caloshowergan import (
    CaloShowerGAN,
    CaloShowerGANConfig,
    Critic,
    Generator,
    Preprocessing,
    count_parameters,
)
from caloforge.models.energy_split import EnergySplitGAN

__all__ = [
    "MODELS",
    "ModelEntry",
    "build_model",
    "CaloShowerGAN",
    "CaloShowerGANConfig",
    "EnergySplitGAN",
    "Generator",
    "Critic",
    "Preprocessing",
    "count_parameters",
]


@dataclass(frozen=True)
class ModelEntry:
    config: type
    build: Callable[[Any, Sequence[Preprocessing]], nn.Module]


def _build_caloshowergan(cfg: CaloShowerGANConfig, preprocessing: Sequence[Preprocessing]) -> EnergySplitGAN:
    return EnergySplitGAN(cfg, preprocessing, cfg.energy_split)


MODELS: dict[str, ModelEntry] = {
    "caloshowergan": ModelEntry(CaloShowerGANConfig, _build_caloshowergan),
}


def build_model(config, preprocessing: Sequence[Preprocessing] | Preprocessing) -> nn.Module:
    """Build the model named by ``config.name`` (one preprocessing per energy range)."""
    if config.name not in MODELS:
        raise ConfigError(f"unknown model {config.name!r}; known: {', '.join(MODELS)}")
    if isinstance(preprocessing, Preprocessing):
        preprocessing = [preprocessing]
    return MODELS[config.name].build(config, list(preprocessing))

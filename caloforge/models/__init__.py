"""Conditional generative models: one family per file, registered by name.

A training config's ``model.name`` picks the family (:func:`get_family`); the
interface every family implements is :class:`~caloforge.models.base.ShowerModel`.

=================  ==========================================================
``model.name``     family
=================  ==========================================================
caloshowergan      CaloShowerGAN, a conditional WGAN-GP MLP (CaloChallenge 2022)
energy_split       any family, one sub-model per incident-energy range
caloflow           CaloFlow-style conditional coupling normalising flows (zuko)
flow_matching      conditional flow matching, ODE sampling (torchdiffeq)
student            one-step MLP distilled from a flow_matching / caloflow teacher
=================  ==========================================================

Adding a family is one new file here (a config dataclass + a ``ShowerModel``
subclass decorated with ``@register("name")``), its import below, and a config.

>>> from caloforge.models import families
>>> "caloshowergan" in families() and "energy_split" in families()
True
"""

from caloforge.models.base import (
    Batch,
    BatchSource,
    ModelConfig,
    ShowerModel,
    build,
    families,
    fit,
    get_family,
    register,
)
from caloforge.models import caloshowergan, energy_split  # noqa: F401,E402  (registers the shipped families)
from caloforge.models import caloflow, flow_matching, student  # noqa: F401,E402
from caloforge.models.caloshowergan import CaloShowerGAN, CaloShowerGANConfig, count_parameters  # noqa: E402
from caloforge.models.energy_split import EnergySplit, EnergySplitConfig  # noqa: E402

__all__ = ["Batch", "BatchSource", "ModelConfig", "ShowerModel", "build", "families", "fit", "get_family",
           "register", "CaloShowerGAN", "CaloShowerGANConfig", "count_parameters", "EnergySplit",
           "EnergySplitConfig"]

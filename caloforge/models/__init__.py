"""Conditional generative models: one family per file, registered by name.

A training config's ``model.name`` picks the family (:func:`get_family`); the
interface every family implements is :class:`~caloforge.models.base.ShowerModel`.

==================  ==========================================================
``model.name``      family
==================  ==========================================================
caloshowergan       CaloShowerGAN, a conditional WGAN-GP MLP (CaloChallenge 2022)
gan3d               3DGAN, 3D-convolutional GAN with auxiliary regression (ACAT 2019)
bibae               BIB-AE with post-processor and latent KDE (McKeown et al. 2023)
calogan             CaloGAN, per-layer locally connected GAN with attention (PRL 2018)
atlas_gan           ATLAS two-critic WGAN-GP, energy + impact-η conditioned (2019)
energy_split        any family, one sub-model per incident-energy range
caloflow            CaloFlow-style conditional coupling normalising flows (zuko)
flow_matching       conditional flow matching, ODE sampling (torchdiffeq)
shower_transformer  flow matching with a transformer over 3D voxel patches (regular grids)
student             one-step MLP distilled from a flow_matching / caloflow teacher
==================  ==========================================================

Adding a family is one new file here (a config dataclass + a ``ShowerModel``
subclass decorated with ``@register("name")``), its import below, and a config.  A family
file imports :mod:`caloforge.models.base`, the shared pieces in :mod:`caloforge.models.parts`
and modules outside ``caloforge.models``, never another family.

:func:`load_config` reads a whole training config, the ``model:`` section validated by its family.

>>> from caloforge.models import families
>>> "caloshowergan" in families() and "energy_split" in families()
True
"""

from caloforge.models.base import (
    Batch,
    BatchSource,
    ModelConfig,
    ModelLoader,
    ShowerModel,
    Teacher,
    build,
    families,
    fit,
    get_family,
    load_config,
    model_config,
    register,
)
from caloforge.models import atlas_gan, calogan, caloshowergan, energy_split  # noqa: F401,E402  (registers the shipped families)
from caloforge.models import caloflow, flow_matching, shower_transformer, student  # noqa: F401,E402
from caloforge.models.caloshowergan import CaloShowerGAN, CaloShowerGANConfig, count_parameters  # noqa: E402
from caloforge.models.energy_split import EnergySplit, EnergySplitConfig  # noqa: E402
from caloforge.models import bibae, gan3d  # noqa: F401,E402  (3D-convolutional families on Cartesian grids)

__all__ = ["Batch", "BatchSource", "ModelConfig", "ModelLoader", "ShowerModel", "Teacher", "build", "families", "fit",
           "get_family", "load_config", "model_config", "register", "CaloShowerGAN", "CaloShowerGANConfig",
           "count_parameters", "EnergySplit", "EnergySplitConfig"]

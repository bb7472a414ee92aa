"""The Cartesian-grid pieces under their earlier name: :mod:`caloforge.models.parts.grid`."""

from caloforge.models.parts.grid import *  # noqa: F401,F403
from caloforge.models.parts.grid import __all__  # noqa: F401

"""Geant4 as a simulation engine: the ``caloforge-g4`` application (``app/``) and its builder.

Importing this package is cheap: it neither imports Geant4 nor compiles anything.
"""

from caloforge.geant4.build import Build, Geant4Install, ensure_built, find_geant4, geant4_available, require_geant4

__all__ = ["Build", "Geant4Install", "ensure_built", "find_geant4", "geant4_available", "require_geant4"]

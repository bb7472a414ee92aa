"""Effective (homogenised) materials of calorimeter layers, by name.

These are what the parametrised engines see of a layer (GFlash's Z, X0, λ_I, Molière
radius, critical energy); the Geant4 engine uses the layer's :class:`Sampling` slabs instead.
"""

from __future__ import annotations

from caloforge.geometry.model import Material

__all__ = ["MATERIALS"]

# Effective mixtures.  Pure-element values from the PDG tables; mixtures are
# thickness-weighted harmonic means of X0 / λ_I (what a shower actually sees).
MATERIALS: dict[str, Material] = {
    m.name: m
    for m in [
        # ATLAS barrel EM accordion (Pb/steel absorber, LAr gaps), ~22 X0 in 470 mm
        Material("atlas-lar-pb", Z=62.0, X0=19.5, lambda_I=280.0, moliere_radius=40.0, critical_energy=9.5),
        # ATLAS presampler: LAr behind ~2 X0 of cryostat/solenoid
        Material("atlas-presampler", Z=26.0, X0=45.0, lambda_I=400.0, moliere_radius=45.0, critical_energy=20.0),
        # ATLAS Tile: steel / scintillator 4.7:1
        Material("atlas-tile-fe-scint", Z=25.0, X0=21.0, lambda_I=207.0, moliere_radius=20.0, critical_energy=22.0),
        # CaloChallenge DS2/DS3 readout layer: 2 × (1.4 mm W + 0.3 mm Si)
        Material("w-si-calochallenge", Z=72.0, X0=4.22, lambda_I=121.0, moliere_radius=11.3, critical_energy=8.6),
        # CaloGAN: Pb 2 mm / LAr 4 mm
        Material("calogan-pb-lar", Z=68.0, X0=15.6, lambda_I=470.0, moliere_radius=40.0, critical_energy=9.6),
        # CLIC ECAL-like Si-W (W 3.5 mm + Si/PCB per layer)
        Material("clic-w-si", Z=70.0, X0=5.0, lambda_I=142.0, moliere_radius=13.5, critical_energy=8.6),
        # ILD ECAL Si-W (2.1 mm W + 1.8 mm Si/PCB/air); the back part has 4.2 mm W
        Material("ild-w-si-front", Z=70.0, X0=6.3, lambda_I=180.0, moliere_radius=17.0, critical_energy=8.6),
        Material("ild-w-si-back", Z=72.0, X0=4.9, lambda_I=140.0, moliere_radius=13.0, critical_energy=8.3),
    ]
}


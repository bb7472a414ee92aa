"""Pieces the model families share; a family imports these and :mod:`caloforge.models.base`, never another family.

=====================  ===================================================================
module                 what
=====================  ===================================================================
``gan``                Adam settings, the WGAN-GP gradient penalty
``two_stage``          the config keys and model skeleton of ``caloflow`` / ``flow_matching``
``representation``     showers ↔ (layer vector y₁, voxel vector y₂)
``envelope``           the per-voxel fraction cap of the representation (water-filling)
``layers``             per-layer sums and broadcasts of flat shower vectors
``energy_bins``        incident-energy bins (envelope, marginal map)
``flows``              conditional coupling flows (zuko)
``ode``                the flow-matching loss and the fixed-step ODE sampler
``mlp``                a plain MLP and the named activations
``schedules``          cosine learning-rate decay and gradient clipping
``averaging``          Polyak averaging of weights (``model.ema_decay``)
``marginal_map``       monotone per-coordinate maps of one distribution onto another
``grid``               Cartesian 3D grids of the granular calorimeters
=====================  ===================================================================
"""

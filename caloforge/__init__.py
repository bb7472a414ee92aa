"""caloforge: generative fast calorimeter simulation.

Rooms of the house (one concept each):

* :mod:`caloforge.geometry` – voxel layouts and material stacks
* :mod:`caloforge.io` – CaloChallenge / CaloGAN HDF5 files
* :mod:`caloforge.simulate` – the parametrised reference shower simulator
* :mod:`caloforge.models` – conditional generative models, one file per family
* :mod:`caloforge.config`, :mod:`caloforge.conditions`, :mod:`caloforge.preprocessing`,
  :mod:`caloforge.checkpoint` – the model core
* :mod:`caloforge.train` / :mod:`caloforge.generate` – training loop and generation
* :mod:`caloforge.evaluate` – physics validation
* :mod:`caloforge.cli` – the ``caloforge`` command, a thin layer over the above
"""

__version__ = "0.2.0"

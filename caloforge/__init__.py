"""caloforge: generative fast calorimeter simulation.

Rooms of the house (one concept each):

* :mod:`caloforge.geometry` – voxel layouts and material stacks
* :mod:`caloforge.io` – CaloChallenge / CaloGAN HDF5 files
* :mod:`caloforge.simulate` – the parametrised reference shower simulator
* :mod:`caloforge.models` – conditional generative models
* :mod:`caloforge.train` / :mod:`caloforge.generate` – training loop and generation
* :mod:`caloforge.evaluate` – physics validation
* :mod:`caloforge.cli` – the ``caloforge`` command, a thin layer over the above
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: `import caloforge; caloforge.simulate(...)` imports the (callable) simulator
    # module on first use, without slowing down `import caloforge`
    if name == "simulate":
        import importlib

        return importlib.import_module("caloforge.simulate")
    raise AttributeError(f"module 'caloforge' has no attribute {name!r}")

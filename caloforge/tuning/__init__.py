"""Hyperparameter search on Optuna (``caloforge tune``): search spaces, storages, workers, reports.

Optuna is the search engine (TPE, CMA-ES, random and grid samplers, median/Hyperband
pruning, SQLite/PostgreSQL/journal storages that let any number of workers on any
number of machines form one study); caloforge adds the search space over its configs,
seed averaging, pruning from the checkpoint scores of each training run (trained through
the Python API in a process of its own), and study directories of ordinary run directories.
"""

from caloforge.tuning.space import SearchSpace, load_space
from caloforge.tuning.study import TuneOptions, WorkerSummary, run_worker

__all__ = ["SearchSpace", "load_space", "TuneOptions", "WorkerSummary", "run_worker"]

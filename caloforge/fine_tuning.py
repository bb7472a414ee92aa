"""Starting a run from a trained model: carry its weights over, freeze parts, scale and warm up the
learning rate (``caloforge train --init-from RUN_DIR/best``, ``train(..., init_from=...)``).

Nothing here knows an architecture: weights carry over by their ``state_dict`` names and shapes,
parts are frozen by parameter name over ``model.named_parameters()``, and the learning rate is
scaled inside each optimiser step (a step hook), so a family's own schedule still applies.

* The source is a checkpoint directory (or a run directory: its ``best``) read through
  :func:`caloforge.checkpoint.read_weights`: safetensors + JSON, never a pickle.
* Same family and the same tensor names and shapes: every tensor carries over.  Same family,
  another geometry or width: only with ``partial`` (``--init-partial``) do the tensors whose
  names and shapes match carry over, the others keep their fresh, seeded initialisation.
  Another family, or no tensor in common: refused with one :class:`ConfigError` line.
* What carried over is recorded under ``init_from`` in the run's ``run.json`` and said in one line.

>>> summarize(["generator.a", "generator.b", "critic.w"], ["generator.a", "generator.b"])
'generator'
>>> summarize(["generator.a", "generator.b", "critic.w"], ["generator.a", "critic.w"])
'critic, generator.a'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from caloforge.config import FineTuneConfig
from caloforge.errors import ConfigError

__all__ = ["InitSource", "Carried", "read_source", "check_family", "keeps_preprocessing", "carry_weights",
           "freeze", "exclude_frozen", "LearningRateScale", "summarize"]


@dataclass(frozen=True)
class InitSource:
    """A trained model's checkpoint as a new run reads it: where, its config.json, its weights."""

    path: Path  # the checkpoint directory itself (a run directory's ``best`` resolved)
    meta: dict
    tensors: dict[str, torch.Tensor]
    sha256: str  # of model.safetensors: a resumed run checks it re-reads the same weights

    @property
    def family(self) -> str:
        return str(self.meta.get("family") or self.meta["model"].get("name", ""))

    @property
    def geometry(self) -> str:
        return str(self.meta["model"].get("geometry", self.meta.get("geometry", "")))

    def describe(self) -> str:
        """How messages name the source: path (family, geometry)."""
        return f"{self.path} ({self.family}, {self.geometry})"


@dataclass(frozen=True)
class Carried:
    """Which tensors of the new model came from the source and which were initialised fresh."""

    carried: list[str]
    fresh: list[str]
    differing: list[str] = field(default_factory=list)  # fresh because the source's shape differs

    def line(self, source: InitSource) -> str:
        """The training log's line about it."""
        names = self.carried + self.fresh
        fresh = f"; initialised fresh: {summarize(names, self.fresh)}" if self.fresh else ""
        return (f"init-from {source.describe()}: carried {len(self.carried)} of {len(names)} tensors "
                f"({summarize(names, self.carried)}){fresh}")


def read_source(path: str | Path) -> InitSource:
    """The checkpoint a run starts from; one :class:`DataError` line if it is missing or not a
    caloforge checkpoint (a pickle, a garbage or truncated file)."""
    from caloforge.checkpoint import read_weights

    mdir, meta, tensors = read_weights(path)
    digest = hashlib.sha256((mdir / "model.safetensors").read_bytes()).hexdigest()
    return InitSource(mdir.resolve(), meta, tensors, digest)


def _target(config) -> str:
    return f"this run's {config.name} model on {config.geometry}"


def check_family(source: InitSource, config) -> None:
    """Refuse a source of another family than the run's ``model:`` config (one line)."""
    if source.family != config.name:
        raise ConfigError(f"--init-from {source.describe()} cannot initialise {_target(config)}: another "
                          f"model family ({source.family}, not {config.name})")


def keeps_preprocessing(source: InitSource, config, fine_tune: FineTuneConfig) -> bool:
    """Whether the new run takes the source's fitted preprocessing (``training.fine_tune.preprocessing``:
    ``keep``, ``refit``, or ``auto``: keep it for the same geometry and conditions)."""
    model = source.meta["model"]
    differs = ("another geometry" if source.geometry != config.geometry else
               "other conditions" if (model.get("conditions"), model.get("energy_condition")) !=
               (config.conditions, config.energy_condition) else None)
    if fine_tune.preprocessing == "keep" and differs:
        raise ConfigError(f"--init-from {source.describe()} cannot lend its preprocessing to {_target(config)}: "
                          f"it was fitted for {differs}; set training.fine_tune.preprocessing: refit")
    return fine_tune.preprocessing == "keep" or (fine_tune.preprocessing == "auto" and differs is None)


def carry_weights(model: torch.nn.Module, source: InitSource, partial: bool = False) -> Carried:
    """Copy the source's tensors into ``model`` by name; see the module docstring.

    Every tensor must match by name and shape unless ``partial``; then the matching ones carry
    over and the rest keep the model's own initialisation.  At least one must match.
    """
    config = model.config
    target = model.state_dict()
    carried = [k for k, v in target.items() if k in source.tensors and tuple(source.tensors[k].shape) == tuple(v.shape)]
    differing = [k for k in target if k in source.tensors and k not in carried]
    fresh = [k for k in target if k not in carried]
    unused = [k for k in source.tensors if k not in target]
    if not carried:
        raise ConfigError(f"--init-from {source.describe()} cannot initialise {_target(config)}: no tensor "
                          "matches by name and shape")
    if (fresh or unused) and not partial:
        if differing:
            k = differing[0]
            why = f"{k} is {tuple(source.tensors[k].shape)} there, {tuple(target[k].shape)} here"
        elif fresh:
            why = f"{fresh[0]} is not in the source"
        else:
            why = f"the source's {unused[0]} has no place here"
        raise ConfigError(f"--init-from {source.describe()} cannot initialise {_target(config)}: "
                          f"{len(fresh) + len(unused)} tensors differ ({why}); pass --init-partial to carry "
                          f"over the {len(carried)} that match")
    with torch.no_grad():
        for k in carried:
            target[k].copy_(source.tensors[k].to(target[k].dtype))
    return Carried(carried, fresh, differing)


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".")


def freeze(model: torch.nn.Module, names: Iterable[str]) -> list[str]:
    """Turn off the gradients of the parameters named by (or under) ``names``; the frozen names.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> freeze(net, ["0"])
    ['0.weight', '0.bias']
    >>> [p.requires_grad for p in net.parameters()]
    [False, False, True, True]
    """
    names = list(names)
    params = dict(model.named_parameters())
    for pattern in names:
        if not any(_matches(n, pattern) for n in params):
            tops = sorted({n.split(".")[0] for n in params})
            raise ConfigError(f"training.fine_tune.freeze: {pattern!r} names no parameter of the "
                              f"{getattr(getattr(model, 'config', None), 'name', 'model')} model "
                              f"(its modules: {', '.join(tops)})")
    frozen = [n for n in params if any(_matches(n, p) for p in names)]
    if names and len(frozen) == len(params):
        raise ConfigError("training.fine_tune.freeze: it freezes every parameter; nothing would train")
    for n in frozen:
        params[n].requires_grad_(False)
    return frozen


def exclude_frozen(optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
    """Take parameters without gradients out of the optimisers' groups (before any step, so no state
    refers to them): an optimiser that weight-decays would otherwise still move them."""
    for opt in optimizers.values():
        if opt.state:
            raise RuntimeError("exclude_frozen must run before the first optimiser step")
        for group in opt.param_groups:
            group["params"] = [p for p in group["params"] if p.requires_grad]


class LearningRateScale:
    """Scales every optimiser's learning rate by ``scale`` × the linear warm-up factor during its step.

    The factor is applied by a step pre-hook and undone by a post-hook, so whatever the family sets
    (a cosine schedule writes ``group["lr"]`` before each step) is scaled, and checkpoints hold the
    family's own values: a resumed run continues exactly.  Set :attr:`iteration` (the run's
    iterations done) before each training step.

    >>> w = torch.nn.Parameter(torch.ones(1))
    >>> opt = torch.optim.SGD([w], lr=1.0)
    >>> lr = LearningRateScale({"sgd": opt}, scale=0.5, warmup_iterations=4)
    >>> w.grad = torch.ones(1); opt.step(); round(float(w.detach()), 4), opt.param_groups[0]["lr"]
    (0.875, 1.0)
    >>> lr.factor(0), lr.factor(3), lr.factor(10)
    (0.125, 0.5, 0.5)
    """

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer], scale: float = 1.0,
                 warmup_iterations: int = 0) -> None:
        self.scale, self.warmup_iterations, self.iteration = float(scale), int(warmup_iterations), 0
        self._saved: dict[int, list[Any]] = {}
        self.handles = []
        if self.scale == 1.0 and self.warmup_iterations == 0:
            return  # nothing to scale: the steps are untouched
        for opt in optimizers.values():
            self.handles.append(opt.register_step_pre_hook(self._before))
            self.handles.append(opt.register_step_post_hook(self._after))

    def factor(self, iteration: int) -> float:
        """The multiplier during iteration ``iteration`` (0-based): ramps (i + 1)/N up to 1 over N, then 1."""
        warm = min(1.0, (iteration + 1) / self.warmup_iterations) if self.warmup_iterations else 1.0
        return self.scale * warm

    def _before(self, opt: torch.optim.Optimizer, args, kwargs) -> None:
        f = self.factor(self.iteration)
        self._saved[id(opt)] = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = g["lr"] * f

    def _after(self, opt: torch.optim.Optimizer, args, kwargs) -> None:
        for g, lr in zip(opt.param_groups, self._saved.pop(id(opt))):
            g["lr"] = lr


def summarize(names: list[str], chosen: list[str]) -> str:
    """``chosen`` in few words: the outermost modules whose tensors are all chosen, by their names.

    >>> summarize(["g.net.0.w", "g.net.0.b", "g.net.1.w", "c.w"], ["g.net.0.w", "g.net.0.b", "c.w"])
    'c, g.net.0'
    """
    chosen_set = set(chosen)

    def under(prefix: str) -> list[str]:
        return [n for n in names if n == prefix or n.startswith(prefix + ".")]

    def walk(prefix: str) -> list[str]:
        members = under(prefix) if prefix else names
        picked = [n for n in members if n in chosen_set]
        if not picked:
            return []
        if prefix and len(picked) == len(members):
            return [prefix]
        depth = prefix.count(".") + 1 if prefix else 0
        children = sorted({".".join(n.split(".")[:depth + 1]) for n in members if n != prefix})
        return [part for child in children for part in walk(child)]

    return ", ".join(walk("")) or "none"

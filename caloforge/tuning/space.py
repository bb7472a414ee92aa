"""The search space of ``caloforge tune``: SPACE.yaml → Optuna suggestions → a training config.

SPACE.yaml maps dotted config keys (any key of the base config, as ``caloforge train``
reads it) to a distribution::

    model.generator_optimizer.lr: {type: log, low: 1.0e-4, high: 2.0e-3}   # log-uniform float
    model.gp_lambda:              {type: float, low: 1.0, high: 10.0}
    model.critic_steps:           {type: int, low: 1, high: 5}           # (step: 2, log: true also work)
    model.latent_dim:             {type: int, low: 16, high: 256, log: true}
    model.generator_hidden:       {type: categorical, choices: [[64, 128, 256], [128, 256, 512]]}
    training.batch_size:          [64, 128, 256]                         # a bare list is categorical

``log`` is a float drawn uniformly in log; ``float``/``int`` take ``log: true`` and
``step``.  Every key, type, range and choice is checked before any trial runs: an
unknown key gets a did-you-mean, and the base config with each range end (each
choice) put in must itself be a valid config, so a range the model would refuse fails
here, in one line, rather than in trial 17.

>>> from caloforge.models import load_config
>>> space = SearchSpace.from_mapping({"model.critic_steps": {"type": "int", "low": 1, "high": 4},
...                                   "model.generator_hidden": [[8], [16, 16]]}, load_config("demo"))
>>> cfg = space.apply(load_config("demo"), {"model.critic_steps": 2, "model.generator_hidden": "[16, 16]"})
>>> cfg.model.critic_steps, cfg.model.generator_hidden
(2, [16, 16])
>>> SearchSpace.from_mapping({"model.critic_step": [1, 2]}, load_config("demo"))
Traceback (most recent call last):
...
caloforge.errors.ConfigError: space: unknown config key model.critic_step (did you mean model.critic_steps?)
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from caloforge.config import RunConfig, flatten
from caloforge.models import load_config
from caloforge.errors import CaloforgeError, ConfigError

__all__ = ["Parameter", "SearchSpace", "load_space", "FIXED_KEYS"]

TYPES = ("float", "int", "log", "categorical")
_FIELDS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
           "log": {"type", "low", "high"}, "categorical": {"type", "choices"}}
# keys a search may not change: they define what is being tuned, or are set per seed by --seeds
FIXED_KEYS = {"model.name": "it picks the family", "model.geometry": "the data fix the geometry",
              "training.seed": "--seeds sets it for every trial", "training.select_by": "--metric decides the objective",
              "description": "it is free text"}


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


@dataclass(frozen=True)
class Parameter:
    """One searched key: ``kind`` float/int/categorical, range or choices."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    encoded: bool = False  # categorical choices that are lists: Optuna stores their JSON text

    def suggest(self, trial) -> Any:
        """Draw this parameter from an Optuna trial (the value Optuna stores)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))

    def decode(self, value: Any) -> Any:
        """The config value of a stored Optuna value."""
        return json.loads(value) if self.encoded else value

    def encode(self, value: Any) -> Any:
        """The Optuna value of a config value (for enqueuing the base config)."""
        return json.dumps(value) if self.encoded else value

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return self.encode(value) in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high and (self.kind == "float" or float(value).is_integer())

    def grid(self) -> list:
        """Every value, for the grid sampler; ConfigError for a continuous range."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.kind == "float" and self.step is not None and not self.log:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9))
            return [self.low + i * self.step for i in range(n + 1)]
        raise ConfigError(f"--sampler grid needs every parameter categorical, int or float with step: "
                          f"{self.key} is {'log-' if self.log else ''}continuous")

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        return f"{self.kind} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "") + (
            f" step {self.step:g}" if self.step is not None else "")


def _number(value: Any, what: str, integer: bool) -> float | int:
    if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    if integer:
        if not float(value).is_integer():
            raise ConfigError(f"{what} must be an integer for type int, got {value!r}")
        return int(value)
    return float(value)


def _parameter(key: str, spec: Any, source: str) -> Parameter:
    where = f"{source}: {key}"
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected {{type: float|int|log|categorical, ...}} or a list of choices, "
                          f"got {spec!r}")
    kind = spec.get("type")
    if kind not in TYPES:
        close = difflib.get_close_matches(str(kind), TYPES, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(TYPES)}"
        raise ConfigError(f"{where}: unknown type {kind!r} ({hint})")
    for name in spec:
        if name not in _FIELDS[kind]:
            close = difflib.get_close_matches(str(name), sorted(_FIELDS[kind]), n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(_FIELDS[kind]))}"
            raise ConfigError(f"{where}: unknown field {name!r} for type {kind} ({hint})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        encoded = not all(_primitive(c) for c in choices)
        stored = tuple(json.dumps(c) for c in choices) if encoded else tuple(choices)
        if len(set(stored)) != len(stored):
            raise ConfigError(f"{where}: choices {choices!r} repeat a value")
        return Parameter(key, "categorical", choices=stored, encoded=encoded)
    for name in ("low", "high"):
        if name not in spec:
            raise ConfigError(f"{where}: type {kind} needs low and high")
    integer = kind == "int"
    low, high = (_number(spec[n], f"{where}: {n}", integer) for n in ("low", "high"))
    log = kind == "log" or bool(spec.get("log", False))
    if not isinstance(spec.get("log", False), bool):
        raise ConfigError(f"{where}: log must be true or false, got {spec['log']!r}")
    step = _number(spec["step"], f"{where}: step", integer) if spec.get("step") is not None else None
    if not low < high:
        raise ConfigError(f"{where}: invalid range, low {low!r} must be below high {high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: invalid range for a log scale, low must be > 0, got {low!r}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: step must be > 0 and cannot be combined with a log scale, got {step!r}")
    if step is not None and step > high - low:
        raise ConfigError(f"{where}: step {step!r} is larger than the range {low!r}…{high!r}")
    return Parameter(key, "int" if integer else "float", low=low, high=high, log=log, step=step)


def _set(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


@dataclass
class SearchSpace:
    """The searched parameters, in file order."""

    parameters: list[Parameter]
    source: str = "space"
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Any, base: RunConfig, source: str = "space") -> "SearchSpace":
        """Parse and check a space against the base config (keys, ranges, and valid configs at the ends)."""
        if not isinstance(data, Mapping) or not data:
            raise ConfigError(f"{source}: a search space is a mapping of config keys to distributions, "
                              f"e.g. model.gp_lambda: {{type: float, low: 1, high: 10}}")
        known = flatten(base.to_dict())
        params = []
        for key, spec in data.items():
            key = str(key)
            if key in FIXED_KEYS:
                raise ConfigError(f"{source}: {key} cannot be searched ({FIXED_KEYS[key]})")
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else " (see the keys of caloforge train's config)"
                raise ConfigError(f"{source}: unknown config key {key}{hint}")
            params.append(_parameter(key, spec, source))
        space = cls(params, source, json.loads(json.dumps(dict(data), default=str)))
        for p in params:  # each end of each range must make a valid config on its own
            ends = [p.decode(c) for c in p.choices] if p.kind == "categorical" else [p.low, p.high]
            for value in ends:
                try:
                    space.apply(base, {p.key: p.encode(value)})
                except CaloforgeError as exc:
                    why = str(exc).split(": ", 1)[-1]
                    raise ConfigError(f"{source}: {p.key} = {value!r} gives an invalid config ({why})") from None
        return space

    @property
    def names(self) -> list[str]:
        return [p.key for p in self.parameters]

    def suggest(self, trial) -> dict[str, Any]:
        """Optuna values of every parameter for ``trial``."""
        return {p.key: p.suggest(trial) for p in self.parameters}

    def apply(self, base: RunConfig, values: Mapping[str, Any]) -> RunConfig:
        """The base config with Optuna ``values`` put in (validated like any config)."""
        tree = copy.deepcopy(base.to_dict())
        by_key = {p.key: p for p in self.parameters}
        for key, value in values.items():
            _set(tree, key, by_key[key].decode(value))
        return load_config(tree)

    def base_values(self, base: RunConfig) -> tuple[dict[str, Any], list[str]]:
        """(Optuna values of the base config's settings inside the space, keys whose setting lies outside)."""
        flat = flatten(base.to_dict())
        inside, outside = {}, []
        for p in self.parameters:
            value = flat[p.key]
            if p.contains(value):
                inside[p.key] = p.encode(value)
            else:
                outside.append(p.key)
        return inside, outside

    def grid(self) -> dict[str, list]:
        return {p.key: p.grid() for p in self.parameters}


def load_space(path: str | Path, base: RunConfig) -> SearchSpace:
    """Read SPACE.yaml (see the module docstring) and check it against ``base``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such search-space file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{path}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({type(exc).__name__})") from None
    return SearchSpace.from_mapping(data, base, str(path))

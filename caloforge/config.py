"""Training configs as plain, typed data.

A config file has three top-level keys::

    description: free text
    model:       the family's own dataclass (``model.name`` picks the family, see
                 :mod:`caloforge.models`): architecture, preprocessing, conditions,
                 losses and optimisers — everything only that family knows about
    training:    :class:`TrainingConfig`, the generic keys every family shares:
                 batch size, budgets, checkpointing, validation split, seed

This module knows no model family: :func:`parse_run_config` reads the file and the
``training:`` section and hands the ``model:`` section to a parser it is given.
:func:`caloforge.models.load_config` is that parser put together with the family registry.

Values are checked against the dataclass field types; unknown keys get a
did-you-mean, bad values one line naming the key.

>>> from_dict(TrainingConfig, {"batch_size": 64}).batch_size
64
>>> parse_run_config({"training": {"batchsize": 64}}, lambda model, source: model)
Traceback (most recent call last):
...
caloforge.errors.ConfigError: config: unknown key training.batchsize (did you mean training.batch_size?)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from caloforge.errors import ConfigError

__all__ = ["TrainingConfig", "FineTuneConfig", "PREPROCESSING_CHOICES", "RunConfig", "parse_run_config", "from_dict", "requirement", "parse_duration", "flatten",
           "SHIPPED_CONFIGS", "shipped_config_names"]

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"

# keys of caloforge 0.1's training: section that are now the model's own
_MOVED_TO_MODEL = ("critic_steps", "gp_lambda", "generator_optimizer", "critic_optimizer")


PREPROCESSING_CHOICES = ("auto", "keep", "refit")


@dataclass
class FineTuneConfig:
    """The ``training.fine_tune`` section: how a run started from a trained model (``--init-from``) trains.

    ``freeze`` names parameters or modules (``generator``, ``generator.net.0``, a full parameter
    name): their parameters keep the source's values, bit for bit, and leave the optimisers.
    ``learning_rate_scale`` multiplies every optimiser's learning rate (the family's own schedule
    included); ``warmup_iterations`` ramps it linearly from 1/N of that to all of it over the
    first N iterations.  ``preprocessing``: ``keep`` the source's fitted preprocessing (normalisers,
    condition ranges), ``refit`` it on the new showers, or ``auto`` (keep for the same geometry,
    refit otherwise).

    >>> from_dict(FineTuneConfig, {"freeze": ["generator"], "learning_rate_scale": 0.1}).freeze
    ['generator']
    """

    freeze: list[str] = field(default_factory=list)
    learning_rate_scale: float = 1.0
    warmup_iterations: int = 0
    preprocessing: str = "auto"


@dataclass
class TrainingConfig:
    """The ``training:`` section: what every family shares.

    ``batch_size`` is the global batch (split over processes under torchrun).
    ``select_by`` names the checkpoint score that picks ``best``: ``chi2_etot`` (the
    E_tot χ² over incident energies, lower is better) or a validation metric the
    model reports (e.g. ``val_nll`` for likelihood models).
    ``budget_clock: cpu`` makes ``max_time`` count the CPU seconds of the training
    process (all its threads) instead of wall seconds: the fair budget for runs
    compared side by side on a shared machine.
    ``stream`` (``auto``/``true``/``false``) trains from a shower file through a shuffle pool
    of ``stream_pool_mb`` MiB (:mod:`caloforge.streaming`) instead of reading it into memory;
    ``auto`` streams when the training showers would take more than 4 × ``stream_pool_mb``.
    ``fine_tune`` (:class:`FineTuneConfig`) applies to a run started with ``--init-from``.
    """

    batch_size: int = 1024
    max_iterations: int = 100_000
    max_time: str | None = None
    budget_clock: str = "wall"  # what max_time counts: "wall" seconds, or "cpu" seconds of this process
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    validation_fraction: float = 0.2
    score_max_showers: int = 50_000
    select_by: str = "chi2_etot"
    # stream the training showers from the file through a shuffle pool (caloforge.streaming):
    # auto (when they would take more than 4 × stream_pool_mb as float32), true or false
    stream: Any = "auto"
    stream_pool_mb: float = 512.0
    log_every: int = 50
    tensorboard: bool = True
    seed: int = 0
    fine_tune: FineTuneConfig = field(default_factory=FineTuneConfig)


@dataclass
class RunConfig:
    """A whole training config: ``model`` (the family's dataclass), ``training``, ``description``."""

    model: Any
    training: TrainingConfig = field(default_factory=TrainingConfig)
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(d|h|min|m|sec|s)?", re.IGNORECASE)
_UNIT_S = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


BUDGET_CLOCKS = ("wall", "cpu")
STREAM_MODES = ("auto", "true", "false")


def parse_duration(value: str | float | int, key: str = "max-time") -> float:
    """'10m' → 600.0; accepts s, m/min, h, d, combinations ('1h30m') and plain seconds.

    >>> parse_duration("10m"), parse_duration("1h30m"), parse_duration(45), parse_duration("2.5s")
    (600.0, 5400.0, 45.0, 2.5)
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 90s, 10m or 2h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().replace(" ", "")
        if not text:
            raise ConfigError(f"{key}: expected a duration like 90s, 10m or 2h, got an empty value")
        pos, seconds = 0, 0.0
        while pos < len(text):
            m = _DURATION.match(text, pos)
            if not m or m.end() == pos:
                raise ConfigError(f"{key}: expected a duration like 90s, 10m or 2h, got {value!r}")
            seconds += float(m.group(1)) * _UNIT_S[m.group(2).lower() if m.group(2) else None]
            pos = m.end()
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{key}: duration must be positive, got {value!r}")
    return seconds


def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    """Coerce/validate one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".", source)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_type(value, args[0], key, source)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_check_type(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return {_check_type(k, k_tp, key, source): _check_type(v, v_tp, f"{key}.{k}", source)
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 1e-4 as a string
            except ValueError:
                raise ConfigError(f"{source}: {key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, prefix: str = "", source: str = "config"):
    """Build dataclass ``cls`` from a mapping, checking keys (did-you-mean) and value types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            if prefix == "training." and key in _MOVED_TO_MODEL:
                raise ConfigError(f"{source}: training.{key} is a model setting since caloforge 0.2: "
                                  f"move it to model.{key}")
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{source}: unknown key {prefix}{key}{hint}")
    kwargs = {k: _check_type(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**kwargs)


def requirement(source: str) -> Callable[[bool, str, str, Any], None]:
    """``require(ok, key, what, value)`` raising ConfigError('{source}: {key} must be {what}, got …')."""

    def require(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{source}: {key} must be {what}, got {value!r}")

    return require


def _check_training(t: TrainingConfig, source: str) -> None:
    require = requirement(source)
    for key in ("batch_size", "max_iterations", "checkpoint_every", "keep_checkpoints", "score_max_showers",
                "log_every"):
        v = getattr(t, key)
        require(v > 0, f"training.{key}", "a positive integer", v)
    require(0 < t.validation_fraction < 1, "training.validation_fraction", "in (0, 1)", t.validation_fraction)
    require(t.seed >= 0, "training.seed", "a non-negative integer", t.seed)
    require(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t.select_by)), "training.select_by",
            "a score name such as chi2_etot or val_nll", t.select_by)
    if t.max_time is not None:
        parse_duration(t.max_time, key=f"{source}: training.max_time")
    stream = ("true" if t.stream else "false") if isinstance(t.stream, bool) else t.stream  # YAML reads true as bool
    if stream not in STREAM_MODES:
        raise ConfigError(f"{source}: training.stream must be auto, true or false, got {t.stream!r}")
    t.stream = stream
    require(t.stream_pool_mb > 0, "training.stream_pool_mb", "a positive number of MiB", t.stream_pool_mb)
    if t.budget_clock not in BUDGET_CLOCKS:
        raise ConfigError(f"{source}: training.budget_clock must be one of {', '.join(BUDGET_CLOCKS)}, "
                          f"got {t.budget_clock!r}")
    _check_fine_tune(t.fine_tune, source)


def _check_fine_tune(f: FineTuneConfig, source: str) -> None:
    require = requirement(source)
    for i, name in enumerate(f.freeze):
        require(bool(re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", name)), f"training.fine_tune.freeze[{i}]",
                "a parameter or module name such as generator or critic.net.0", name)
    require(0 < f.learning_rate_scale <= 1e3, "training.fine_tune.learning_rate_scale", "in (0, 1000]",
            f.learning_rate_scale)
    require(f.warmup_iterations >= 0, "training.fine_tune.warmup_iterations", "a non-negative integer",
            f.warmup_iterations)
    require(f.preprocessing in PREPROCESSING_CHOICES, "training.fine_tune.preprocessing", "auto, keep or refit",
            f.preprocessing)


def shipped_config_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def _read_yaml(path_or_name: str | Path) -> tuple[Any, str]:
    import yaml

    path = Path(path_or_name)
    shipped = SHIPPED_CONFIGS / f"{path_or_name}.yaml"
    if not path.is_file() and path.suffix == "" and shipped.is_file():
        path = shipped  # a shipped config by name: "demo", "caloshowergan-photons"
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (shipped configs: {', '.join(shipped_config_names())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({type(exc).__name__})") from None
    return data, str(path)


def parse_run_config(path_or_dict: str | Path | Mapping | RunConfig,
                     model_section: Callable[[Mapping[str, Any], str], Any]) -> RunConfig:
    """Read and validate a config (YAML file, shipped config name, mapping, or RunConfig).

    ``model_section(mapping, source)`` turns the ``model:`` mapping into the family's validated
    config (:func:`caloforge.models.base.model_config`); unknown keys and bad values raise
    :class:`ConfigError` naming the key.
    """
    if isinstance(path_or_dict, RunConfig):
        return path_or_dict
    if isinstance(path_or_dict, Mapping):
        data, source = dict(path_or_dict), "config"
    else:
        data, source = _read_yaml(path_or_dict)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a config must be a mapping with model: and training: sections")
    for key in data:
        if key not in ("model", "training", "description"):
            close = difflib.get_close_matches(str(key), ["model", "training", "description"], n=1)
            hint = f"did you mean {close[0]}?" if close else "known: model, training, description"
            raise ConfigError(f"{source}: unknown key {key} ({hint})")
    model = data.get("model") or {}
    if not isinstance(model, Mapping):
        raise ConfigError(f"{source}: model must be a mapping, got {model!r}")
    model_cfg = model_section(model, source)
    training = from_dict(TrainingConfig, data.get("training"), "training.", source)
    _check_training(training, source)
    return RunConfig(model_cfg, training, _check_type(data.get("description", ""), str, "description", source))


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

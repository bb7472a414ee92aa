"""The checkpoint format: the only code that reads or writes it.

A checkpoint is a directory, written to a temporary name and renamed into place::

    CKPT/
      config.json            format, version, family config, fitted state (preprocessing,
                             condition encodings), geometry, iteration, scores, RNG states
      model.safetensors      the weights
      optimizer.safetensors  optimiser moments (training checkpoints; absent in exports)

Nothing is ever unpickled.  ``version`` 2 is written; version 1 (caloforge 0.1,
CaloShowerGAN only) is upgraded on load; a newer or unknown version is refused with
one line.  Before any weights are allocated the model is built on PyTorch's ``meta``
device and its tensor shapes are checked against the safetensors header, so a
config that disagrees with its weights, or asks for absurd sizes, costs nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from caloforge.errors import DataError

__all__ = ["FORMAT", "VERSION", "REFUSED_SUFFIXES", "write_checkpoint", "read_config", "restore_model",
           "model_loader", "read_weights", "load_training_state", "model_dir", "list_checkpoints", "latest_checkpoint", "point_best",
           "checkpoint_name", "rng_state", "set_rng_state", "MAX_PARAMETERS"]

FORMAT = "caloforge-checkpoint"
VERSION = 2
REFUSED_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32: far beyond any calorimeter model


# ----------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _optimizer_tensors(optimizers: Mapping[str, torch.optim.Optimizer]) -> tuple[dict, dict]:
    tensors, groups = {}, {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"{name}.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
        groups[name] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def write_checkpoint(path: str | Path, model, *, optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
                     meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (and optimiser states, and ``meta`` keys) to the directory ``path`` atomically."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    from caloforge import __version__

    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  tmp / "model.safetensors")
        config = {"format": FORMAT, "version": VERSION, "caloforge_version": __version__,
                  "family": model.family, "model": asdict(model.config), "state": model.state(),
                  "geometry": model.geometry.name, "n_voxels": model.n_voxels,
                  "condition_names": model.condition_names, "energy_limits": list(model.energy_limits),
                  "noise_dim": model.noise_dim, "torch_version": torch.__version__, **dict(meta or {})}
        if optimizers:
            tensors, groups = _optimizer_tensors(optimizers)
            save_file(tensors, tmp / "optimizer.safetensors")
            config["optimizer_param_groups"] = groups
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if path.exists():  # the same iteration written again after a resume
            shutil.rmtree(path)
        os.rename(tmp, path)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def checkpoint_name(iteration: int) -> str:
    return f"iter-{iteration:07d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(iteration, directory) of every complete checkpoint of a run, oldest first."""
    found = []
    for p in (Path(run_dir) / "checkpoints").glob("iter-*"):
        m = re.fullmatch(r"iter-(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def point_best(run_dir: str | Path, checkpoint: str | Path) -> None:
    """Atomically make RUN_DIR/best a relative symlink to ``checkpoint``."""
    run_dir = Path(run_dir)
    link = run_dir / "best"
    tmp = run_dir / f".best-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(checkpoint, run_dir), tmp)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)


def rng_state(gen: torch.Generator) -> str:
    return gen.get_state().numpy().tobytes().hex()


def set_rng_state(gen: torch.Generator, state: str) -> None:
    gen.set_state(torch.frombuffer(bytearray(bytes.fromhex(state)), dtype=torch.uint8))


# ----------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------
def model_dir(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint, a run directory (its ``best``) or one of its files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such model directory")
    if path.is_file():
        if path.suffix.lower() in REFUSED_SUFFIXES:
            raise DataError(f"{path}: refusing to load a pickled model; caloforge models are a directory with "
                            "config.json + model.safetensors")
        if path.name in ("model.safetensors", "config.json"):
            return path.parent
        raise DataError(f"{path}: not a model directory (expected config.json + model.safetensors)")
    if not (path / "config.json").exists() and (path / "best").exists():
        return path / "best"  # a run directory: use its best checkpoint
    if (path / "run.json").exists() and not (path / "config.json").exists():
        raise DataError(f"{path}: this training run has no checkpoint yet (no {path / 'best'})")
    return path


def _upgrade_v1(meta: dict) -> tuple[dict, dict[str, str]]:
    """caloforge 0.1 (CaloShowerGAN only) → version 2, and the weight-key renames."""
    old = dict(meta["model"])
    training = meta.get("training", {})
    split = list(old.pop("energy_split", []) or [])
    old.pop("energy_range", None)
    for key in ("critic_steps", "gp_lambda", "generator_optimizer", "critic_optimizer"):
        if key in training:
            old[key] = training[key]
    parts = []
    for p in meta["preprocessing"]:
        parts.append({"conditions": {"specs": [{"name": "incident_energy", "encoding": "log",
                                                "lo": float(p["e_min"]), "hi": float(p["e_max"])}],
                                     "energy_condition": "incident", "mass": 0.0},
                      "preprocessing": {"name": "scale_by_energy", "scale": float(p.get("voxel_scale", 1.0))}})
    lo, hi = min(p["e_min"] for p in meta["preprocessing"]), max(p["e_max"] for p in meta["preprocessing"])
    whole = {"specs": [{"name": "incident_energy", "encoding": "log", "lo": float(lo), "hi": float(hi)}],
             "energy_condition": "incident", "mass": 0.0}
    new = {k: v for k, v in meta.items() if k not in ("model", "preprocessing", "training", "format", "version")}
    new.update(format=FORMAT, version=VERSION, upgraded_from=1)
    if split:
        common = {k: v for k, v in old.items() if k not in ("name", "geometry")}
        new["family"] = "energy_split"
        new["model"] = {"name": "energy_split", "geometry": old.get("geometry", meta.get("geometry")),
                        "family": "caloshowergan", "boundaries": split, "common": common, "ranges": []}
        new["state"] = {"conditions": whole, "parts": parts}
        renames = {"gans.": "parts."}
    else:
        new["family"] = "caloshowergan"
        new["model"] = old
        new["state"] = parts[0]
        renames = {"gans.0.": ""}
    return new, renames


def read_config(path: str | Path) -> tuple[dict, dict[str, str]]:
    """(config.json of a checkpoint directory upgraded to the current version, weight-key renames)."""
    mdir = model_dir(path)
    cfg_file = mdir / "config.json"
    if not (mdir / "model.safetensors").exists():
        pickled = [p.name for p in mdir.iterdir() if p.suffix.lower() in REFUSED_SUFFIXES] if mdir.is_dir() else []
        extra = f"; found {', '.join(pickled)}, but pickled models are never loaded" if pickled else ""
        raise DataError(f"{mdir}: model.safetensors not found{extra}")
    if not cfg_file.exists():
        raise DataError(f"{mdir}: config.json not found")
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{cfg_file}: not a caloforge model config ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{cfg_file}: not a caloforge model config (not a JSON object)")
    version = meta.get("version")
    if meta.get("format") != FORMAT or not isinstance(version, int):
        raise DataError(f"{cfg_file}: not a caloforge checkpoint (format {meta.get('format')!r})")
    if version > VERSION:
        raise DataError(f"{cfg_file}: checkpoint format version {version} is newer than this caloforge "
                        f"understands ({VERSION}); upgrade caloforge")
    if version < 1:
        raise DataError(f"{cfg_file}: unknown checkpoint format version {version}")
    try:
        if version == 1:
            return _upgrade_v1(meta)
        for key in ("model", "state"):
            if not isinstance(meta.get(key), dict):
                raise KeyError(key)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{cfg_file}: not a caloforge model config (missing or bad {exc})") from None
    return meta, {}


def _rename(key: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def restore_model(path: str | Path, device: str | torch.device = "cpu"):
    """(the :class:`~caloforge.models.base.ShowerModel` in eval mode on ``device``, upgraded config.json)
    from a checkpoint or run directory.  :func:`caloforge.generate.load_model` wraps it for generation.

    The model gets :func:`model_loader` to load the trained models it builds on (a student's
    teacher).  Every problem is one :class:`DataError` line naming the file: a missing, corrupt
    or truncated file, a config that the family rejects, weights that do not match the
    config (checked before any weights are allocated), a pickled file.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from caloforge.errors import CaloforgeError
    from caloforge.models.base import build, model_config
    from caloforge.runtime import resolve_device

    mdir = model_dir(path)
    meta, renames = read_config(mdir)
    cfg_file, weights = mdir / "config.json", mdir / "model.safetensors"
    try:
        config = model_config({"name": meta.get("family", ""), **meta["model"]}, str(cfg_file))
        with torch.device("meta"):
            skeleton = build(config, meta["state"], model_loader)
    except CaloforgeError as exc:
        raise DataError(str(exc)) from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{cfg_file}: not a caloforge model config ({type(exc).__name__}: {exc})") from None
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {_rename(k, renames): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{weights}: corrupt or truncated safetensors file ({str(exc).splitlines()[0]})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    n_params = sum(v.numel() for v in skeleton.state_dict().values())
    if n_params > MAX_PARAMETERS:
        raise DataError(f"{cfg_file}: the config asks for {n_params:,} parameters; refusing to allocate them")
    if shapes != expected:
        missing = sorted(set(expected) - set(shapes))
        extra = sorted(set(shapes) - set(expected))
        wrong = sorted(k for k in set(shapes) & set(expected) if shapes[k] != expected[k])
        why = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
               f"{wrong[0]} is {shapes[wrong[0]]} in the file, {expected[wrong[0]]} by the config")
        raise DataError(f"{weights}: weights do not match config.json ({why})")
    dev = resolve_device(device)
    model = build(config, meta["state"], model_loader)
    try:
        state = {_rename(k, renames): v for k, v in load_file(weights, device="cpu").items()}
        model.load_state_dict(state)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"{weights}: corrupt or truncated safetensors file ({str(exc).splitlines()[0]})") from None
    model.to(dev).eval()
    return model, meta


def model_loader(path: str | Path):
    """The model alone of :func:`restore_model` (eval mode, CPU): the
    :class:`~caloforge.models.base.ModelLoader` handed to the families through
    :func:`~caloforge.models.base.fit` and :func:`~caloforge.models.base.build`."""
    return restore_model(path)[0]


def read_weights(path: str | Path) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """(checkpoint directory, upgraded config.json, weights on the CPU by their current names) of a
    checkpoint or run directory, without building the model: what a new run starts from
    (:mod:`caloforge.fine_tuning`).  Every problem is one :class:`DataError` line naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    mdir = model_dir(path)
    meta, renames = read_config(mdir)
    weights = mdir / "model.safetensors"
    try:
        tensors = {_rename(k, renames): v for k, v in load_file(weights, device="cpu").items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"{weights}: corrupt or truncated safetensors file ({str(exc).splitlines()[0]})") from None
    if sum(v.numel() for v in tensors.values()) > MAX_PARAMETERS:
        raise DataError(f"{weights}: more than {MAX_PARAMETERS:,} weights; refusing to load them")
    return mdir, meta, tensors


def load_training_state(path: str | Path, model, optimizers: Mapping[str, torch.optim.Optimizer],
                        device: torch.device) -> dict:
    """Load weights and optimiser states of a training checkpoint into ``model``/``optimizers``; its config."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta, renames = read_config(path)
        if renames or meta.get("upgraded_from"):
            raise DataError(f"{path}: written by caloforge 0.1; it generates, but cannot be resumed by this "
                            "version: start a new run (caloforge train … -o NEW_DIR)")
        model.load_state_dict(load_file(path / "model.safetensors", device=str(device)))
        tensors = load_file(path / "optimizer.safetensors")  # Adam keeps its step counts on the CPU
        groups = meta["optimizer_param_groups"]
        for name, opt in optimizers.items():
            state: dict[int, dict] = {}
            for key, v in tensors.items():
                head, pid, k = key.rsplit(".", 2)
                if head == name:
                    state.setdefault(int(pid), {})[k] = v
            param_groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups[name]]
            opt.load_state_dict({"state": state, "param_groups": param_groups})
    except DataError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DataError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return meta

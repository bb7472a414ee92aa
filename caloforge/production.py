"""Large-scale production: sharded generation for batch jobs, and merging the shards.

``caloforge generate ... --shard K/N`` writes shard K (1-based) of N of a request (the
energies of ``--energies``/``--n`` or of ``--like REF.h5``), so that N independent jobs
of a batch array produce disjoint parts; ``caloforge merge PART... -o OUT.h5`` joins
them.  The merged file holds exactly the showers of the unsharded run with the same
seed and batch size, because:

* generation draws each batch of ``batch_size`` rows from its own generator, seeded
  by :func:`caloforge.generate.batch_seed` (base seed, global batch index);
* a shard is a contiguous range of whole batches: with B = ⌈rows / batch_size⌉
  batches, shard K gets batches ⌊(K−1)·B/N⌋ … ⌊K·B/N⌋ − 1.

So the seed of every shower derives from the base seed and its batch, i.e. from the
base seed and K.  Each file carries its provenance in HDF5 attributes: the model
(path, SHA-256 of its weights and config, iteration), geometry, base seed, batch
size, the size and SHA-256 of the whole request (energies and conditions), and for a
shard ``shard_index``/``shard_count``/``first_row``.  :func:`merge_shards` refuses
parts of other models, geometries, seeds or requests, and missing or repeated shards.

>>> shard_rows(10, 3, Shard(1, 2)), shard_rows(10, 3, Shard(2, 2))  # 4 batches: 3+3 | 3+1 rows
((0, 6, 0), (6, 10, 2))
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from caloforge.errors import ConfigError, DataError

__all__ = ["Shard", "shard_rows", "request_digest", "model_digest", "generate_production", "merge_shards",
           "PROVENANCE_KEYS", "EmptyShardWarning", "Request", "check_request_options", "request_like",
           "request_energies"]

# attributes that every part of one production must share (checked by merge_shards)
PROVENANCE_KEYS = ("model_sha256", "geometry", "seed", "batch_size", "n_total", "request_sha256", "shard_count")
# the same for shards of a simulation (caloforge simulate --shard K/N)
SIMULATION_PROVENANCE_KEYS = ("plan_sha256", "engine", "geometry", "seed", "energy_scale", "n_total", "shard_count")
_SHARD_KEYS = ("shard_index", "shard_count", "first_row")


class EmptyShardWarning(UserWarning):
    """A shard holds no batch: there are fewer batches than shards."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``.

    >>> Shard.parse("3/8")
    Shard(index=3, count=8)
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 1 <= self.index <= self.count):
            raise ConfigError(f"--shard {self.index}/{self.count}: K must be 1 … N (shards are numbered from 1)")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ConfigError(f"--shard {text!r}: expected K/N, e.g. 3/10 (shard 3 of 10, numbered from 1)")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_rows(n_rows: int, batch_size: int, shard: Shard) -> tuple[int, int, int]:
    """(first row, end row, first batch index) of ``shard`` among ``n_rows`` rows in batches."""
    n_batches = math.ceil(n_rows / batch_size)
    b0 = (shard.index - 1) * n_batches // shard.count
    b1 = shard.index * n_batches // shard.count
    return min(b0 * batch_size, n_rows), min(b1 * batch_size, n_rows), b0


class _Digest:
    """SHA-256 of a request's columns (energies, then each condition), fed in row blocks."""

    def __init__(self, condition_names: Sequence[str]) -> None:
        self.names = sorted(condition_names)
        self.columns = {name: hashlib.sha256() for name in ["incident_energy", *self.names]}

    def update(self, energy: np.ndarray, conditions: Mapping[str, np.ndarray]) -> None:
        self.columns["incident_energy"].update(np.ascontiguousarray(energy, dtype="<f8").tobytes())
        for name in self.names:
            self.columns[name].update(np.ascontiguousarray(conditions[name], dtype="<f8").tobytes())

    def hexdigest(self) -> str:
        whole = hashlib.sha256()
        for name, h in self.columns.items():
            whole.update(name.encode() + b"\0" + h.digest())
        return whole.hexdigest()


def request_digest(energy: np.ndarray, conditions: Mapping[str, np.ndarray] | None = None) -> str:
    """SHA-256 identifying a whole request: its incident energies and conditions, row by row."""
    conditions = dict(conditions or {})
    d = _Digest(list(conditions))
    d.update(np.asarray(energy).reshape(-1), {k: np.asarray(v).reshape(-1) for k, v in conditions.items()})
    return d.hexdigest()


def model_digest(path: str | Path) -> str:
    """SHA-256 of a checkpoint's ``model.safetensors`` and ``config.json`` (16 MiB blocks)."""
    from caloforge.checkpoint import model_dir

    h = hashlib.sha256()
    mdir = model_dir(path)
    for name in ("config.json", "model.safetensors"):
        with open(mdir / name, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Request:
    """The showers a production asks for: one row per shower, and what to tell the user about it.

    ``warnings`` and ``notes`` are one-line messages (a reference file whose voxel count
    differs, conditions the model does not use); nothing in them stops the production."""

    incident_energy: np.ndarray
    conditions: dict[str, np.ndarray]
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def check_request_options(energies: str | None, n: int | None, like: str | Path | None,
                          theta: str | None, phi: str | None) -> None:
    """The request options of ``caloforge generate`` fit together (before a model is loaded)."""
    if (energies is None) == (like is None):
        raise ConfigError("give either --energies with --n, or --like REF.h5")
    if energies is not None and (n is None or n <= 0):
        raise ConfigError("--energies needs --n N (showers per energy, N > 0)")
    if like is not None and (n is not None or theta or phi):
        raise ConfigError("--like takes energies and conditions from the reference file: drop --n/--theta/--phi")


def request_like(generator, reference: str | Path) -> Request:
    """One shower per reference shower, with its incident energy and conditions (``--like``).

    Raises :class:`ConfigError` when the model is conditioned on something the file lacks."""
    from caloforge.generate import reference_energies

    incident, conditions, ref_voxels = reference_energies(reference)
    warned, notes = [], []
    if ref_voxels not in (None, generator.n_voxels):
        warned.append(f"{reference} has {ref_voxels} voxels, the model {generator.n_voxels}; "
                      "only its energies and conditions are used")
    missing = [c for c in generator.condition_names[1:] if c not in conditions]
    if missing:
        raise ConfigError(f"{reference}: the model is conditioned on {missing[0]}, but the file has no "
                          f"{missing[0]!r} dataset")
    unused = [c for c in conditions if c not in generator.condition_names]
    if unused:
        notes.append(f"the model does not use {', '.join(unused)}; copied to the output")
    return Request(incident, conditions, tuple(warned), tuple(notes))


def _angles(text: str, n: int, rng: np.random.Generator, polar: bool, option: str) -> np.ndarray:
    """Degrees (a value or LOW:HIGH, drawn uniformly) → ``n`` angles in rad."""
    from caloforge.simulate.units import parse_angle, parse_range

    def azimuth(v: str) -> float:
        try:
            return float(np.deg2rad(float(v.strip().lower().removesuffix("deg"))))
        except ValueError:
            raise ConfigError(f"bad {option} {text!r}: expected degrees or LOW:HIGH") from None

    parse = parse_angle if polar else azimuth
    if ":" in text:
        lo, hi = parse_range(text, parse)
        return rng.uniform(lo, hi, n)
    return np.full(n, parse(text))


def request_energies(energies: str, n: int, theta: str | None = None, phi: str | None = None,
                     seed: int = 0) -> Request:
    """``n`` showers at each of ``energies`` ('1GeV,65GeV'), with angles in degrees (a value, or
    LOW:HIGH drawn uniformly from ``seed``) for models conditioned on them."""
    from caloforge.generate import parse_energies

    incident = np.repeat(parse_energies(energies), n)
    rng = np.random.default_rng(seed)
    conditions: dict[str, np.ndarray] = {}
    if theta:
        conditions["incident_theta"] = _angles(theta, len(incident), rng, True, "--theta")
    if phi:
        conditions["incident_phi"] = _angles(phi, len(incident), rng, False, "--phi")
    return Request(incident, conditions)


def generate_production(model, path: str | Path, incident_energy, *,
                        conditions: Mapping[str, np.ndarray] | None = None, batch_size: int | None = None,
                        seed: int = 0, shard: Shard | None = None, device: str | None = None,
                        progress: bool = False, engine: str = "auto",
                        sampling: Mapping[str, object] | None = None) -> tuple[Path, int]:
    """Generate the whole request, or only ``shard`` of it, into ``path``; (path, showers written).

    ``incident_energy``/``conditions`` are always the *whole* request (every shard
    computes the same list and takes its rows), so its digest goes into the file.
    ``batch_size`` None: the memory-aware default block of the whole request
    (:func:`caloforge.blocks.default_block_size`), the same in every shard; the file's
    ``batch_size`` attribute records the block used.
    """
    from caloforge.generate import _batches, _prepare
    from caloforge.io import ShowerWriter
    from caloforge.runtime import Progress

    gen, energy, conditions, batch_size = _prepare(model, incident_energy, conditions, batch_size, device, sampling)
    lo, hi, first_batch = (0, len(energy), 0) if shard is None else shard_rows(len(energy), batch_size, shard)
    if shard is not None and hi == lo:
        warnings.warn(f"shard {shard} holds no showers: {len(energy)} showers make only "
                      f"{math.ceil(len(energy) / batch_size)} batches of {batch_size}; use fewer shards or a "
                      "smaller --batch-size", EmptyShardWarning, stacklevel=2)
    attrs = {"generator": "caloforge", "model": str(gen.path), "model_iteration": gen.iteration,
             "model_sha256": model_digest(gen.path), "geometry": gen.geometry, "seed": int(seed),
             "batch_size": int(batch_size), "n_total": int(len(energy)),
             "request_sha256": request_digest(energy, conditions)}
    # the generation options (ODE steps…) change the showers: merge checks them like the seed
    attrs.update({f"sampling_{k}": v for k, v in gen.model.sampling_options.items()})
    if shard is not None:
        attrs.update(shard_index=shard.index, shard_count=shard.count, first_row=int(lo))
    part_e = energy[lo:hi]
    part_c = {k: v[lo:hi] for k, v in conditions.items()}
    with Progress("generate", len(part_e), enabled=progress, unit="showers", interval=10.0) as bar:
        with ShowerWriter(path, gen.n_voxels, conditions=tuple(conditions), attrs=attrs) as w:
            for start, e, showers in _batches(gen, part_e, part_c, batch_size, seed, engine, first_batch=first_batch,
                                              request_size=len(energy)):
                w.append(e, showers, {k: v[start:start + len(e)] for k, v in part_c.items()})
                bar.update(start + len(e))
    return Path(path), hi - lo


def simulation_shard(tasks: Sequence, shard: Shard, plan_sha256: str) -> tuple[list, dict]:
    """Shard ``shard`` of a simulation plan's blocks: ``(its blocks, file attributes)``.

    A shard is a contiguous range of whole blocks (shard K of B blocks: ⌊(K−1)·B/N⌋ …
    ⌊K·B/N⌋ − 1); each block has its own random stream, so the merged shards are the
    unsharded file, row for row."""
    n_blocks = len(tasks)
    b0, b1 = (shard.index - 1) * n_blocks // shard.count, shard.index * n_blocks // shard.count
    sizes = [t.n for t in tasks]
    first, end = sum(sizes[:b0]), sum(sizes[:b1])
    if b1 == b0:
        warnings.warn(f"shard {shard} holds no showers: the plan has only {n_blocks} blocks; use fewer shards",
                      EmptyShardWarning, stacklevel=3)
    attrs = {"shard_index": shard.index, "shard_count": shard.count, "first_row": int(first), "end_row": int(end),
             "n_total": int(sum(sizes)), "plan_sha256": plan_sha256}
    return list(tasks[b0:b1]), attrs


# ----------------------------------------------------------------------------------
# Merging
# ----------------------------------------------------------------------------------
def _read_part(path: Path) -> dict:
    import h5py

    from caloforge.io import detect_format

    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if detect_format(path) != "calochallenge":
        raise DataError(f"{path}: not a CaloChallenge shower file written by caloforge generate --shard")
    with h5py.File(path, "r") as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        rows, n_voxels = f["showers"].shape
        names = sorted(k for k in f.keys() if k not in ("incident_energies", "showers"))
    simulated = attrs.get("generator") == "caloforge.simulate"
    keys = SIMULATION_PROVENANCE_KEYS if simulated else PROVENANCE_KEYS
    missing = [k for k in (*keys, *_SHARD_KEYS) if k not in attrs]
    if missing:
        what = "not a shard (no shard_index attribute)" if "shard_index" in missing else f"no {missing[0]} attribute"
        raise DataError(f"{path}: {what}; shards are written by caloforge generate/simulate ... --shard K/N")
    return {"path": path, "attrs": attrs, "rows": int(rows), "n_voxels": int(n_voxels), "conditions": names,
            "keys": keys, "simulated": simulated}


def merge_shards(parts: Sequence[str | Path], output: str | Path, *, progress: bool = False) -> tuple[Path, int]:
    """Join shard files into ``output`` (atomic); (path, showers).  Checks first, writes after.

    All parts must come from the same model, geometry, seed, batch size and request;
    every shard 1 … N must be there exactly once with the rows it should hold.  The
    output's attributes are those of the unsharded run (no ``shard_*``).
    """
    import h5py

    from caloforge.io import ShowerWriter, iter_showers
    from caloforge.runtime import Progress

    if not parts:
        raise ConfigError("merge: give the shard files to join")
    output = Path(output)
    infos = [_read_part(Path(p)) for p in parts]
    for info in infos:
        if info["path"].resolve() == output.resolve():
            raise ConfigError(f"{output}: the output is one of the shards; choose another file")
    first = infos[0]
    for info in infos[1:]:
        if info["simulated"] != first["simulated"]:
            raise DataError(f"{info['path']}: a {'simulated' if info['simulated'] else 'generated'} shard cannot "
                            f"join the {'simulated' if first['simulated'] else 'generated'} {first['path']}")
        for key in first["keys"]:
            a, b = first["attrs"][key], info["attrs"][key]
            if a != b:
                what = {"model_sha256": "a different model", "request_sha256": "a different request (energies "
                        "or conditions)", "seed": "another --seed", "batch_size": "another --batch-size",
                        "n_total": "a request of another size", "shard_count": "another number of shards",
                        "geometry": "another geometry", "engine": "another engine",
                        "energy_scale": "another energy scale", "plan_sha256": "a different plan (geometry, "
                        "particles, energies, angles, engine build or calibration)"}[key]
                raise DataError(f"{info['path']}: made with {what} than {first['path']} ({key} {b} ≠ {a})")
        for key in ("n_voxels", "conditions"):
            if info[key] != first[key]:
                raise DataError(f"{info['path']}: {key} {info[key]} ≠ {first[key]} of {first['path']}")
    count, n_total = int(first["attrs"]["shard_count"]), int(first["attrs"]["n_total"])
    by_index: dict[int, dict] = {}
    for info in infos:
        k = int(info["attrs"]["shard_index"])
        if k in by_index:
            raise DataError(f"shard {k}/{count} given twice: {by_index[k]['path']} and {info['path']}")
        by_index[k] = info
    missing = [k for k in range(1, count + 1) if k not in by_index]
    if missing:
        raise DataError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(f'{k}/{count}' for k in missing)} "
                        f"missing (given {len(infos)} of {count})")
    if first["simulated"]:  # a simulation's shards: whole blocks that must tile 0 … n_total
        end = 0
        for k in range(1, count + 1):
            info = by_index[k]
            lo, hi = int(info["attrs"]["first_row"]), int(info["attrs"].get("end_row", -1))
            if lo != end or info["rows"] != hi - lo:
                raise DataError(f"{info['path']}: shard {k}/{count} should hold rows {end}…{hi - 1}, it holds "
                                f"{info['rows']} from row {lo} (incomplete file?)")
            end = hi
        if end != n_total:
            raise DataError(f"the shards hold {end} of the plan's {n_total} showers")
    digest = _Digest(first["conditions"])
    for k in range(1, count + 1) if not first["simulated"] else ():
        info = by_index[k]
        lo, hi, _ = shard_rows(n_total, int(first["attrs"]["batch_size"]), Shard(k, count))
        if info["rows"] != hi - lo or int(info["attrs"]["first_row"]) != lo:
            raise DataError(f"{info['path']}: shard {k}/{count} should hold rows {lo}…{hi - 1} ({hi - lo} showers), "
                            f"it holds {info['rows']} from row {info['attrs']['first_row']} (incomplete file?)")
        with h5py.File(info["path"], "r") as f:  # energies and conditions only, never the voxels
            digest.update(f["incident_energies"][:].reshape(-1),
                          {name: f[name][:].reshape(-1) for name in first["conditions"]})
    if not first["simulated"] and digest.hexdigest() != first["attrs"]["request_sha256"]:
        raise DataError("the shards' energies/conditions do not make up the request they were generated for "
                        "(request_sha256 differs); a shard file was altered")
    attrs = {k: v for k, v in first["attrs"].items() if k not in (*_SHARD_KEYS, "end_row")}
    with Progress("merge", n_total, enabled=progress, unit="showers", interval=10.0) as bar:
        with ShowerWriter(output, first["n_voxels"], conditions=tuple(first["conditions"]), attrs=attrs) as w:
            for k in range(1, count + 1):
                for chunk in iter_showers(by_index[k]["path"]):
                    w.append(chunk.incident_energy, chunk.showers.astype(np.float32, copy=False), chunk.conditions)
                    bar.update(w.n)
    return output, n_total

"""Export a trained model for deployment: ONNX, TorchScript and AOTInductor, with metadata and a parity check.

The exported network is the model's :meth:`~caloforge.models.base.ShowerModel.export_module`::

    showers (N, n_voxels) float32 MeV = f(noise (N, noise_dim) float32, conditions (N, C) float32)

with the conditions physical (incident energy in MeV, angles in rad, impact point in
mm) in the order of ``condition_names``; the condition encoding, the inverse
preprocessing and the final clamp at 0 are inside the graph, and the batch size is
dynamic.  The noise is drawn as ``noise_spec`` says (per-column normal mean/std for
every shipped family), the same way :meth:`ShowerModel.sample_noise` draws it.

=============  ==========  ===============================================================
format         file        read by
=============  ==========  ===============================================================
onnx           ``.onnx``   ONNX Runtime (Python, C++), ROOT's SOFIE, any opset-17 runtime;
                           metadata in ``metadata_props``
torchscript    ``.pt``     LibTorch C++ (``torch::jit::load``, ``examples/cpp/``);
                           metadata in the extra files ``caloforge.json`` / ``caloforge.txt``
aoti           ``.pt2``    LibTorch C++ (``torch::inductor::AOTIModelPackageLoader``,
                           ``examples/cpp/``), Python ``torch._inductor.aoti_load_package``:
                           the graph compiled ahead of time to a shared library for this CPU;
                           metadata in the package (``get_metadata()``, the same keys)
=============  ==========  ===============================================================

Every export is checked before it is kept: the written file is run (ONNX Runtime, or
the TorchScript interpreter on the file just written) on the same noise and
conditions as PyTorch, and the largest voxel deviation relative to the shower's
energy must stay below ``tolerance`` (1e-5 in fp32).  The file is written to a
temporary name and renamed only then, so a failed export leaves nothing behind.

AOTInductor (``aoti``) goes through ``torch.export`` with a dynamic batch dimension and
``torch._inductor.aoti_compile_and_package``: Inductor writes C++ kernels for the graph and
compiles them with the system C++ compiler (tens of CPU seconds even for a small MLP, every
time: Inductor's graph cache is bypassed in AOT mode).  The package is tied to the torch
version and the CPU instruction set it was compiled for (``-march=native``); TorchScript is
the portable LibTorch format.  A family whose network ``torch.export`` cannot trace fails
with one line naming the family and torch's reason, and nothing is written.

ONNX uses the TorchScript-based exporter at opset 17: it exports a small MLP in
well under a second and writes plain standard operators that ROOT's SOFIE parses;
the dynamo exporter (``exporter="dynamo"``, needs ``onnxscript``) is the fallback.

>>> import tempfile, torch
>>> from caloforge.models.base import fit
>>> from caloforge.models import CaloShowerGANConfig
>>> cfg = CaloShowerGANConfig(latent_dim=4, generator_hidden=[8], critic_hidden=[8])
>>> model = fit(cfg, torch.zeros(2, 368), torch.tensor([256.0, 4194304.0], dtype=torch.float64), {}).eval()
>>> out = export_model(model, "onnx", tempfile.mkdtemp() + "/gan.onnx")
>>> out.max_deviation < 1e-5, out.metadata["n_voxels"], out.metadata["condition_names"]
(True, 368, ['incident_energy'])
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from caloforge.errors import ConfigError, DataError

__all__ = ["FORMATS", "EXPORT_FORMAT", "TOLERANCE", "ExportResult", "export_model", "export_metadata",
           "flat_metadata", "example_inputs", "max_relative_deviation", "onnx_session", "read_onnx_metadata",
           "check_output_path", "read_aoti_metadata"]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "aoti": ".pt2"}
EXPORT_FORMAT = "caloforge-export"
TOLERANCE = 1e-5  # max |Δvoxel| / E_shower, fp32
OPSET = 17
CONDITION_UNITS = {"incident_energy": "MeV", "incident_theta": "rad", "incident_phi": "rad", "impact_x": "mm",
                   "impact_y": "mm"}


@dataclass
class ExportResult:
    """Where the export went, what it carries, and how closely it reproduces PyTorch."""

    path: Path
    format: str
    metadata: dict[str, Any]
    max_deviation: float  # max over showers of max|Δvoxel| / E_shower
    n_checked: int


# ----------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------
def export_metadata(model, checkpoint_meta: Mapping[str, Any] | None = None, source: str = "") -> dict[str, Any]:
    """Everything a deployment needs besides the graph: geometry, shapes, noise, conditions, energies."""
    from caloforge import __version__

    meta = dict(checkpoint_meta or {})
    e_lo, e_hi = model.energy_limits
    names = list(model.condition_names)
    return {
        "format": EXPORT_FORMAT, "version": 1, "caloforge_version": __version__,
        "family": model.family, "geometry": model.geometry.name, "n_voxels": int(model.n_voxels),
        "noise_dim": int(model.noise_dim), "noise": model.noise_spec(),
        "condition_names": names, "condition_units": [CONDITION_UNITS.get(n, "") for n in names],
        "condition_encoding": model.condition_encoder.state(),
        "energy_range_mev": [float(e_lo), float(e_hi)],
        "inputs": {"noise": ["N", int(model.noise_dim), "float32"], "conditions": ["N", len(names), "float32"]},
        "output": {"showers": ["N", int(model.n_voxels), "float32", "MeV"]},
        "source": source, "iteration": int(meta.get("iteration", 0) or 0), "torch_version": torch.__version__,
    }


def flat_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """String key → string value, easy to read from C++: lists space-separated, the rest JSON.

    >>> flat_metadata({"n_voxels": 368, "noise": {"distribution": "normal", "mean": [0.5], "std": [0.5]},
    ...                "condition_names": ["incident_energy"], "energy_range_mev": [256.0, 4194304.0]})["noise_mean"]
    '0.5'
    """
    out = {"caloforge_metadata": json.dumps(dict(metadata), separators=(",", ":"))}
    for key, value in metadata.items():
        if key == "noise":
            out["noise_distribution"] = str(value["distribution"])
            for k, v in value.items():
                if k != "distribution":
                    out[f"noise_{k}"] = " ".join(repr(float(x)) for x in v)
        elif key == "energy_range_mev":
            out["energy_min_mev"], out["energy_max_mev"] = repr(float(value[0])), repr(float(value[1]))
        elif isinstance(value, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in value):
            out[key] = " ".join(str(x) for x in value)
        elif isinstance(value, str):
            out[key] = value
        else:
            out[key] = json.dumps(value, separators=(",", ":"))
    return out


# ----------------------------------------------------------------------------------
# Inputs and parity
# ----------------------------------------------------------------------------------
def example_inputs(model, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, physical conditions) float32 for ``n`` showers spread over the model's fitted ranges.

    Energies are log-uniform over the fitted energy range (every range of an
    ``energy_split`` model); other conditions uniform over their fitted range
    (mean ± 2σ for ``standard`` encodings).
    """
    gen = torch.Generator().manual_seed(int(seed))
    noise = model.sample_noise(n, gen, torch.device("cpu")).to(torch.float32)
    lo, hi = model.energy_limits
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    cols = [torch.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))]
    for spec in model.condition_encoder.specs[1:]:
        a, b = (spec.lo - 2 * spec.hi, spec.lo + 2 * spec.hi) if spec.encoding == "standard" else (spec.lo, spec.hi)
        cols.append(a + (b - a) * torch.rand(n, generator=gen, dtype=torch.float64))
    return noise, torch.stack(cols, dim=1).to(torch.float32)


def max_relative_deviation(reference, other) -> float:
    """max over showers of max_v |Δ_v| / E_shower (E_shower = Σ_v reference); showers of zero energy count
    their absolute deviation.

    >>> round(max_relative_deviation(np.array([[1.0, 3.0]]), np.array([[1.0, 3.0002]])), 9)
    5e-05
    """
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.abs(np.asarray(other, dtype=np.float64) - ref).max(axis=1) if ref.size else np.zeros(len(ref))
    e = ref.sum(axis=1)
    rel = np.where(e > 0, diff / np.where(e > 0, e, 1.0), diff)
    return float(rel.max()) if rel.size else 0.0


def onnx_session(path: str | Path | bytes, threads: int = 1):
    """An ONNX Runtime CPU session (a file, or the model's bytes) with all graph optimisations and ``threads``
    intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The caloforge metadata of an exported ONNX file (DataError when it is not one)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        meta = json.loads(props["caloforge_metadata"])
    except Exception as exc:  # protobuf DecodeError, KeyError, JSONDecodeError, OSError
        raise DataError(f"{path}: not a caloforge ONNX export ({type(exc).__name__})") from None
    return meta


# ----------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------
def check_output_path(output: str | Path, fmt: str) -> Path:
    """The output path, after checking the format and that the file can be written (nothing is written)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(output)
    if out.is_dir():
        raise ConfigError(f"{out}: is a directory; give a file name, e.g. {out / ('model' + FORMATS[fmt])}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{out}: cannot be written: {parent} is not an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"{out}: cannot be written (permission denied)")
    if fmt == "aoti" and out.suffix != ".pt2":  # LibTorch's convention; examples/cpp picks the loader by it
        raise ConfigError(f"{out}: an AOTInductor package must be named *.pt2, e.g. {out.with_suffix('.pt2')}")
    return out


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and deprecation notes; a CLI export shows one line instead."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)


def _write_onnx(module, args, tmp: Path, metadata: Mapping[str, Any], exporter: str) -> None:
    import onnx

    kwargs: dict[str, Any] = dict(input_names=["noise", "conditions"], output_names=["showers"])
    with _quiet():
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET,
                              dynamic_axes={"noise": {0: "N"}, "conditions": {0: "N"}, "showers": {0: "N"}},
                              **kwargs)
        else:
            batch = torch.export.Dim("N")
            torch.onnx.export(module, args, str(tmp), dynamo=True, dynamic_shapes=({0: batch}, {0: batch}),
                              external_data=False, **kwargs)
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    for key, value in flat_metadata(metadata).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.doc_string = "caloforge", (
        f"caloforge {metadata['family']} shower generator for {metadata['geometry']}: noise (N, "
        f"{metadata['noise_dim']}) + conditions (N, {len(metadata['condition_names'])}: "
        f"{', '.join(metadata['condition_names'])}) -> showers (N, {metadata['n_voxels']}) in MeV")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))


def _write_torchscript(module, args, tmp: Path, metadata: Mapping[str, Any]) -> None:
    text = "".join(f"{k} {v}\n" for k, v in flat_metadata(metadata).items() if k != "caloforge_metadata")
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(module, args, check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={"caloforge.json": json.dumps(dict(metadata), indent=1),
                                                       "caloforge.txt": text})


def _write_aoti(module, args, tmp: Path, metadata: Mapping[str, Any]) -> None:
    """torch.export with a dynamic batch, then AOTInductor into a .pt2 package carrying the flat metadata."""
    from torch._inductor import aoti_compile_and_package

    batch = torch.export.Dim("N", min=1)
    with _quiet(), torch.no_grad():
        program = torch.export.export(module, args, dynamic_shapes=({0: batch}, {0: batch}), strict=False)
        aoti_compile_and_package(program, package_path=str(tmp),
                                 inductor_configs={"aot_inductor.metadata": flat_metadata(metadata)})


def read_aoti_metadata(path: str | Path) -> dict[str, Any]:
    """The caloforge metadata of an AOTInductor package, read without loading its library (DataError when it is
    not one)."""
    try:
        props = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(str(path), "model")
        meta = json.loads(props["caloforge_metadata"])
    except Exception as exc:  # RuntimeError (not a zip / no model), KeyError, JSONDecodeError
        raise DataError(f"{path}: not a caloforge AOTInductor package ({type(exc).__name__})") from None
    return meta


def _runner(fmt: str, path: Path) -> Callable[[torch.Tensor, torch.Tensor], np.ndarray]:
    if fmt == "onnx":
        session = onnx_session(path)
        return lambda z, c: session.run(None, {"noise": z.numpy(), "conditions": c.numpy()})[0]
    # below: the file this process has just written (never a user's file)
    if fmt == "aoti":
        from torch._inductor import aoti_load_package

        compiled = aoti_load_package(str(path))

        def run_aoti(z, c):
            with torch.no_grad():
                return compiled(z, c).numpy()

        return run_aoti
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(z, c):
        with torch.no_grad():
            return loaded(z, c).numpy()

    return run


def export_model(model, fmt: str, output: str | Path, *, tolerance: float = TOLERANCE, n_check: int = 256,
                 seed: int = 0, exporter: str = "auto", checkpoint_meta: Mapping[str, Any] | None = None,
                 source: str = "") -> ExportResult:
    """Export ``model`` (a :class:`ShowerModel`, a ShowerGenerator, or a checkpoint/run directory) to ``output``.

    The file appears only after it passed the parity check at batch sizes ``n_check``
    and 1 (:data:`TOLERANCE`); otherwise :class:`DataError` and nothing is written.
    """
    out = check_output_path(output, fmt)
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ConfigError(f"exporter {exporter!r} is not one of auto, torchscript, dynamo")
    if isinstance(model, (str, Path)):
        from caloforge import checkpoint

        source = source or str(checkpoint.model_dir(model))
        model, checkpoint_meta = checkpoint.restore_model(model, device="cpu")
    elif hasattr(model, "model") and hasattr(model, "path"):  # a ShowerGenerator
        source = source or str(model.path)
        checkpoint_meta = checkpoint_meta or {"iteration": model.iteration}
        model = model.model
    model = model.to("cpu").eval()
    metadata = export_metadata(model, checkpoint_meta, source)
    module = model.export_module().eval()
    trace_args = example_inputs(model, 8, seed + 1)
    noise, cond = example_inputs(model, n_check, seed)
    with torch.no_grad():
        reference = module(noise, cond).numpy()

    # the suffix: AOTInductor insists on *.pt2
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}{FORMATS[fmt]}"
    try:
        exporters = [exporter] if exporter != "auto" else ["torchscript", "dynamo"]
        for i, how in enumerate(exporters if fmt == "onnx" else ["trace"]):
            try:
                if fmt == "onnx":
                    _write_onnx(module, trace_args, tmp, metadata, how)
                elif fmt == "aoti":
                    _write_aoti(module, trace_args, tmp, metadata)
                else:
                    _write_torchscript(module, trace_args, tmp, metadata)
                break
            except Exception as exc:  # an operator one exporter lacks: try the next one
                if i == len(exporters) - 1 or fmt != "onnx":
                    raise DataError(f"{out}: {model.family} could not be exported to {fmt} "
                                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        run = _runner(fmt, tmp)
        deviation = max(max_relative_deviation(reference, run(noise, cond)),
                        max_relative_deviation(reference[:1], run(noise[:1], cond[:1])))
        if not deviation <= tolerance:
            raise DataError(f"{out}: the exported {fmt} model deviates from PyTorch by {deviation:.3g} of the shower "
                            f"energy (tolerance {tolerance:g}); nothing written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(out, fmt, metadata, deviation, n_check)

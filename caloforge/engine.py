"""The fastest CPU generation paths that pass their check: ONNX Runtime in fp32, and bf16 dense layers.

``caloforge bench`` and ``benchmarks/bench_deploy.py levers`` on the CaloShowerGAN photon
generator (``docs/benchmarks-log.md``) put ONNX Runtime ahead of eager PyTorch at every batch
size on one CPU core (batch norm folded into the dense layers, fused element-wise tails, a
fraction of PyTorch's per-call overhead), and **bf16** dense layers (oneDNN, prepacked
weights, activation fused into the matrix product, AVX-512 BF16) ahead of every fp32 path
at large batch.  Inside a large request the rows are run in blocks (:data:`BLOCK`,
:data:`BF16_BLOCK` showers), so that a block's activations stay in the core's caches.

Two precisions, each with its own acceptance check, run when the sampler is built:

``fp32`` (:class:`OnnxSampler`)
    the exported graph with batch norm folded into the dense layers (:func:`fold_batchnorm`)
    in ONNX Runtime; max |Δvoxel| / E_shower ≤ 1e-5 against PyTorch on the same noise (the
    export parity check).
``bf16`` (:class:`BF16Sampler`)
    the exported module with batch norm folded and every ``nn.Sequential`` of dense layers
    and activations (:func:`bf16_module`) run in bf16 with fp32 accumulation; the condition
    encoding, the inverse preprocessing and the clamp stay in fp32/fp64.  It cannot pass a
    1e-5 parity check (~1e-4 of the shower energy), so its check is physics-level
    (:func:`physics_check`): :data:`CHECK_SHOWERS` showers from the same noise and conditions
    in fp32 (PyTorch) and bf16 are each compared with an independent fp32 sample (χ²/ndf of
    E_tot/E_inc, of the number of hit voxels and of each layer's energy fraction), and bf16
    may move none of these metrics by more than its statistical error (√(2/ndf)).
    ``docs/benchmarks-log.md`` shows the E_tot χ² and the classifier AUC against the reference
    of fp32, bf16 and int8 samples on the same noise (int8, ONNX Runtime's dynamic
    quantisation, is faster still but fails this check: it is measured, not offered).

Both apply when the model is on the CPU and the family samples by ``decode(sample_noise(n))``
-- the base :meth:`ShowerModel.sample` -- so that the exported graph on the same noise *is*
the model's sampler (``energy_split`` draws noise per energy range and keeps PyTorch); fp32
needs ``onnxruntime``, bf16 a CPU with native bf16 (AVX-512 BF16 or AMX) and a network of
dense layers only (every weight layer inside an ``nn.Sequential`` of Linear + activations).
:func:`fast_sampler` builds the requested precision, or for ``"auto"`` bf16 where it applies
and passes its check, else fp32 (never chosen by timing, so that every shard of a request
runs the same path).
The noise is drawn by the model from the caller's generator either way, so a seed gives the
same showers on every path (to float32 rounding for fp32, within the check for bf16).

>>> import torch
>>> from caloforge.models.base import fit
>>> from caloforge.models import CaloShowerGANConfig
>>> cfg = CaloShowerGANConfig(latent_dim=4, generator_hidden=[8], critic_hidden=[8])
>>> model = fit(cfg, torch.zeros(2, 368), torch.tensor([256.0, 4194304.0], dtype=torch.float64), {}).eval()
>>> sampler = OnnxSampler.build(model)
>>> fast = sampler.sample({"incident_energy": [1e3, 1e5]}, torch.Generator().manual_seed(0))
>>> slow = model.sample([1e3, 1e5], torch.Generator().manual_seed(0)).numpy()
>>> bool(abs(fast - slow).max() <= 1e-5 * slow.sum(1).max())
True
"""

from __future__ import annotations

import copy
import io
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["BLOCK", "BF16_BLOCK", "PRECISIONS", "CHECK_SHOWERS", "MAX_SHIFT", "OnnxSampler", "BF16Sampler",
           "fast_sampler", "fold_batchnorm", "bf16_module", "bf16_supported", "physics_check"]

BLOCK = 512  # showers per ONNX Runtime call inside a request: activations of a block stay in L2
BF16_BLOCK = 2048  # showers per bf16 call (measured best of 256 … 2048, docs/benchmarks-log.md)
PRECISIONS = ("fp32", "bf16")
CHECK_SHOWERS = 2048  # showers of the physics-level check of a reduced-precision path
MAX_SHIFT = 1.0  # its tolerance: no physics metric moves by more than its statistical error
CHECK_BINS = 20


def _samples_by_decode(model) -> bool:
    from caloforge.models.base import ShowerModel

    return type(model).sample is ShowerModel.sample


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` (eval mode) with every Linear → BatchNorm1d pair of an ``nn.Sequential`` folded
    into one Linear (the batch norm becomes Identity); the function is unchanged to float32 rounding.

    >>> seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU()).eval()
    >>> folded = fold_batchnorm(seq)
    >>> [type(m).__name__ for m in folded], bool(torch.allclose(seq(torch.ones(2, 3)), folded(torch.ones(2, 3))))
    (['Linear', 'Identity', 'ReLU'], True)
    """
    from torch.nn.utils.fusion import fuse_linear_bn_eval

    out = copy.deepcopy(module).eval()
    for seq in [m for m in out.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            lin, bn = seq[i], seq[i + 1]
            if (isinstance(lin, torch.nn.Linear) and isinstance(bn, torch.nn.BatchNorm1d) and bn.track_running_stats
                    and bn.running_mean is not None):
                seq[i] = fuse_linear_bn_eval(lin, bn)
                seq[i + 1] = torch.nn.Identity()
    return out


def _onnx_bytes(module: torch.nn.Module, model) -> bytes:
    from caloforge.export import _quiet, example_inputs

    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(module, example_inputs(model, 8, 1), buffer, dynamo=False, opset_version=17,
                          input_names=["noise", "conditions"], output_names=["showers"],
                          dynamic_axes={"noise": {0: "N"}, "conditions": {0: "N"}, "showers": {0: "N"}})
    return buffer.getvalue()


_FUSED_ACTIVATIONS = {torch.nn.SiLU: "swish", torch.nn.ReLU: "relu", torch.nn.Sigmoid: "sigmoid", torch.nn.Tanh: "tanh"}


def bf16_supported() -> bool:
    """oneDNN can run bf16 matrix products natively on this CPU (AVX-512 BF16 or AMX; oneDNN would emulate bf16
    on plain AVX-512, slower than fp32)."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:  # not Linux: trust oneDNN
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


class _PackedBF16MLP(torch.nn.Module):
    """An ``nn.Sequential`` of Linear (+ activation) layers as oneDNN bf16 products with the activation fused in;
    fp32 in, fp32 out, bf16 in between (fp32 accumulation inside each product)."""

    def __init__(self, seq: torch.nn.Sequential, block: int) -> None:
        super().__init__()
        layers = [m for m in seq if not isinstance(m, torch.nn.Identity)]
        self.steps: list[tuple[torch.Tensor, torch.Tensor | None, str]] = []
        for i, layer in enumerate(layers):
            if isinstance(layer, torch.nn.Linear):
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                act = _FUSED_ACTIVATIONS.get(type(nxt), "none")
                w = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach().to(torch.bfloat16), block)
                b = None if layer.bias is None else layer.bias.detach().to(torch.bfloat16)
                self.steps.append((w, b, act))

    @staticmethod
    def eligible(seq: torch.nn.Sequential) -> bool:
        kinds = [type(m) for m in seq]
        if torch.nn.Linear not in kinds or not all(k is torch.nn.Linear or k is torch.nn.Identity
                                                   or k in _FUSED_ACTIVATIONS for k in kinds):
            return False
        layers = [m for m in seq if not isinstance(m, torch.nn.Identity)]
        # every activation must directly follow a dense layer (it is fused into it)
        return all(isinstance(m, torch.nn.Linear) or (i > 0 and isinstance(layers[i - 1], torch.nn.Linear))
                   for i, m in enumerate(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.bfloat16)
        for w, b, act in self.steps:
            y = torch.ops.mkldnn._linear_pointwise(y, w, b, act, [None] if act != "none" else [], "")
        return y.to(torch.float32)


_WEIGHT_LAYERS = (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.RNNBase)


def bf16_module(module: torch.nn.Module, block: int = 2048) -> tuple[torch.nn.Module, int, int]:
    """A copy of ``module`` with batch norm folded and every dense ``nn.Sequential`` (Linear + SiLU/ReLU/Sigmoid/
    Tanh only) replaced by prepacked oneDNN bf16 products; returns (module, Sequentials replaced, weight layers
    left in fp32)."""
    out = fold_batchnorm(module)
    replaced = 0
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Sequential) and _PackedBF16MLP.eligible(child):
                setattr(parent, name, _PackedBF16MLP(child, block))
                replaced += 1
    return out, replaced, sum(isinstance(m, _WEIGHT_LAYERS) for m in out.modules())


def _observables(showers: np.ndarray, energy: np.ndarray, geometry) -> dict[str, np.ndarray]:
    e_tot = showers.sum(axis=1)
    out = {"E_tot/E_inc": e_tot / energy, "hit voxels": (showers > 0).sum(axis=1).astype(np.float64)}
    if len(geometry.layer_slices) > 1:
        layers = geometry.layer_energy(showers) / np.where(e_tot > 0, e_tot, 1.0)[:, None]
        for k in range(layers.shape[1]):
            out[f"layer {k} fraction"] = layers[:, k]
    return out


def physics_check(reference: np.ndarray, fp32: np.ndarray, candidate: np.ndarray, incident_energy: np.ndarray,
                  geometry, bins: int = CHECK_BINS) -> dict[str, float]:
    """How far a reduced-precision sample moves the physics metrics of the fp32 sample, in statistical errors.

    ``fp32`` and ``candidate`` come from the same noise and conditions, ``reference`` from
    independent noise with the same conditions (fp32).  For E_tot/E_inc, the number of hit
    voxels and each layer's energy fraction, the metric is the χ²/ndf against
    ``reference`` in ``bins`` equal-population bins; the result per observable is
    |χ²/ndf(candidate) − χ²/ndf(fp32)| / σ, with σ = √(2/ndf) the statistical error of a
    χ²/ndf.  ≤ 1 everywhere: the precision changes no metric by more than its statistical error.

    >>> import numpy as np
    >>> from caloforge.geometry import load_geometry
    >>> rng = np.random.default_rng(0)
    >>> ref, fp32 = rng.gamma(2.0, 1.0, (2, 2000, 368))
    >>> e, geo = np.full(2000, 800.0), load_geometry("ds1-photons")
    >>> max(physics_check(ref, fp32, fp32 * (1 + 1e-4), e, geo).values()) <= MAX_SHIFT
    True
    >>> physics_check(ref, fp32, fp32 * 1.05, e, geo)["E_tot/E_inc"] > MAX_SHIFT
    True
    """
    from caloforge.evaluate.metrics import histogram_chi2

    obs = [_observables(np.asarray(x, dtype=np.float64), incident_energy, geometry) for x in (reference, fp32, candidate)]
    out = {}
    for name, r in obs[0].items():
        edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)))
        if len(edges) < 3:  # a constant observable (an empty layer): it must stay what it is
            out[name] = 0.0 if np.allclose(obs[2][name], obs[1][name], rtol=1e-3, atol=1e-12) else float("inf")
            continue
        (c_fp32, ndf), (c_cand, _) = histogram_chi2(r, obs[1][name], edges), histogram_chi2(r, obs[2][name], edges)
        ndf = max(ndf, 1)
        out[name] = float(abs(c_cand - c_fp32) / ndf / np.sqrt(2.0 / ndf))
    return out


def _physics_acceptance(model, run, label: str, check_showers: int) -> dict[str, float]:
    """The reduced-precision check (module docstring); ValueError naming the worst observable when it fails."""
    from caloforge.export import example_inputs

    module = model.export_module().eval()
    noise, cond = example_inputs(model, int(check_showers), 0)
    other = model.sample_noise(len(noise), torch.Generator().manual_seed(1), torch.device("cpu")).to(torch.float32)

    def fp32(z):
        with torch.no_grad():
            return np.concatenate([module(z[i:i + BLOCK], cond[i:i + BLOCK]).numpy() for i in range(0, len(z), BLOCK)])

    out = run(noise.numpy(), cond.numpy())
    if not np.all(np.isfinite(out)):
        raise ValueError(f"the {label} path gives non-finite voxel energies")
    check = physics_check(fp32(other), fp32(noise), np.maximum(out, 0.0), cond[:, 0].numpy().astype(np.float64),
                          model.geometry)
    worst = max(check, key=check.get)
    if not check[worst] <= MAX_SHIFT:
        raise ValueError(f"{label} fails the physics check: it moves the {worst} χ²/ndf by {check[worst]:.3g} "
                         f"statistical errors (tolerance {MAX_SHIFT:g})")
    return check


class OnnxSampler:
    """``model.sample`` through an ONNX Runtime session on the model's exported graph (fp32, batch norm folded)."""

    precision = "fp32"
    block = BLOCK

    def __init__(self, model, session, threads: int, check: Mapping[str, float] | None = None) -> None:
        self.model, self.session, self.threads = model, session, threads
        self.names = list(model.condition_names)
        self.check = dict(check or {})  # fp32: {"max_deviation": …}; bf16: statistical errors per observable

    @classmethod
    def build(cls, model, threads: int | None = None, tolerance: float = 1e-5) -> "OnnxSampler":
        """Export in memory, open a session, check parity; ValueError when it does not reproduce PyTorch."""
        from caloforge.export import example_inputs, max_relative_deviation, onnx_session

        threads = int(threads or torch.get_num_threads())
        module = model.export_module().eval()
        # batch norm folded into the dense layers before export: fewer graph nodes, same function
        sampler = cls(model, onnx_session(_onnx_bytes(fold_batchnorm(module), model), threads), threads)
        noise, cond = example_inputs(model, 64, 0)
        with torch.no_grad():
            ref = module(noise, cond).numpy()
        deviation = max_relative_deviation(ref, sampler.run(noise.numpy(), cond.numpy()))
        if not deviation <= tolerance:
            raise ValueError(f"ONNX Runtime deviates from PyTorch by {deviation:.3g} of the shower energy")
        sampler.check = {"max_deviation": deviation}
        return sampler

    def _call(self, noise: np.ndarray, conditions: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"noise": noise, "conditions": conditions})[0]

    def run(self, noise: np.ndarray, conditions: np.ndarray) -> np.ndarray:
        """Showers (N, V) float32 for float32 noise and physical conditions, in blocks of :attr:`block`."""
        n, block = len(noise), self.block
        if n <= block:
            return self._call(noise, conditions)
        out = np.empty((n, self.model.n_voxels), dtype=np.float32)
        for lo in range(0, n, block):
            out[lo:lo + block] = self._call(noise[lo:lo + block], conditions[lo:lo + block])
        return out

    def sample(self, conditions: Mapping[str, Any], generator: torch.Generator | None = None) -> np.ndarray:
        """What ``model.sample(conditions, generator)`` returns, as a numpy array."""
        energy = np.asarray(conditions["incident_energy"], dtype=np.float64).reshape(-1)
        cols = [energy] + [np.asarray(conditions[k], dtype=np.float64).reshape(-1) for k in self.names[1:]]
        cond = np.ascontiguousarray(np.stack(cols, axis=1), dtype=np.float32)
        noise = self.model.sample_noise(len(energy), generator, torch.device("cpu")).to(torch.float32)
        out = self.run(np.ascontiguousarray(noise.numpy()), cond)
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return np.maximum(out, 0.0, out=out)


class BF16Sampler(OnnxSampler):
    """``model.sample`` with the dense layers in bf16 (:func:`bf16_module`), accepted by the physics check."""

    precision = "bf16"
    block = BF16_BLOCK

    def __init__(self, model, module: torch.nn.Module, threads: int, check: Mapping[str, float] | None = None) -> None:
        super().__init__(model, None, threads, check)
        self.module = module

    @classmethod
    def build(cls, model, threads: int | None = None, check_showers: int | None = None) -> "BF16Sampler":
        """Fold, pack, run the physics check; ValueError when bf16 is unsupported, inapplicable or fails it."""
        if not bf16_supported():
            raise ValueError("this CPU has no native bf16 matrix products in oneDNN")
        module, replaced, left = bf16_module(model.export_module().eval(), BF16_BLOCK)
        if not replaced or left:  # a half-bf16 network in eager PyTorch is no faster than fp32 ONNX Runtime
            raise ValueError(f"{model.family}: the bf16 path needs a network of dense layers only "
                             f"({left} other weight layers)")
        sampler = cls(model, module.eval(), int(threads or torch.get_num_threads()))
        sampler.check = _physics_acceptance(model, sampler.run, "bf16", check_showers or CHECK_SHOWERS)
        return sampler

    def _call(self, noise: np.ndarray, conditions: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(noise), torch.from_numpy(conditions)).numpy()

    def run(self, noise: np.ndarray, conditions: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return super().run(noise, conditions)
        finally:
            torch.set_num_threads(previous)


def _available(model) -> bool:
    return model.device.type == "cpu" and _samples_by_decode(model)


def fast_sampler(model, threads: int | None = None, precision: str = "fp32") -> OnnxSampler | None:
    """A sampler of ``precision`` (fp32, bf16) for ``model`` when one applies and passes its check, else None.

    ``precision="auto"``: bf16 when it applies and passes its physics check, else fp32.  The
    choice never depends on timings, so every shard of a request makes the same one; bf16
    applies only to networks of dense layers on a CPU with native bf16, where it is the
    faster (module docstring).
    """
    if not _available(model):
        return None
    builders = {"fp32": OnnxSampler.build, "bf16": BF16Sampler.build}
    for p in (("bf16", "fp32") if precision == "auto" else (precision,)):
        try:
            return builders[p](model, threads)
        except Exception:  # onnxruntime missing, an operator the exporter lacks, no bf16, or a failed check
            continue
    return None

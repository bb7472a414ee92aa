"""The fastest CPU generation path that reproduces PyTorch: ONNX Runtime on the exported graph.

``caloforge bench`` on the CaloShowerGAN photon generator (``docs/benchmarks.md``) puts
ONNX Runtime ahead of eager PyTorch at every batch size on one CPU core: it fuses
batch norm into the dense layers and the element-wise tails, and its per-call overhead
is a fraction of PyTorch's.  Inside a large request the rows are run in blocks of
:data:`BLOCK` showers, so that a block's activations stay in the core's caches.

:class:`OnnxSampler` is used by :mod:`caloforge.generate` when

* the model is on the CPU and ``onnxruntime`` is installed;
* the family samples by ``decode(sample_noise(n))`` -- the base
  :meth:`ShowerModel.sample` -- so that the exported graph on the same noise *is* the
  model's sampler (``energy_split`` draws noise per energy range and keeps PyTorch);
* the in-memory export passes the parity check (max |Δvoxel| / E_shower ≤ 1e-5 on
  the same noise) when the sampler is built.

Otherwise generation stays on PyTorch.  The noise is drawn by the model from the
caller's generator either way, so a seed gives the same showers on both paths (to
float32 rounding).

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

import io
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["BLOCK", "OnnxSampler", "fast_sampler"]

BLOCK = 512  # showers per ONNX Runtime call inside a request: activations of a block stay in L2


def _samples_by_decode(model) -> bool:
    from caloforge.models.base import ShowerModel

    return type(model).sample is ShowerModel.sample


class OnnxSampler:
    """``model.sample`` through an ONNX Runtime session on the model's exported graph."""

    def __init__(self, model, session, threads: int) -> None:
        self.model, self.session, self.threads = model, session, threads
        self.names = list(model.condition_names)

    @classmethod
    def build(cls, model, threads: int | None = None, tolerance: float = 1e-5) -> "OnnxSampler":
        """Export in memory, open a session, check parity; ValueError when it does not reproduce PyTorch."""
        from caloforge.export import _quiet, example_inputs, max_relative_deviation, onnx_session

        threads = int(threads or torch.get_num_threads())
        module = model.export_module().eval()
        buffer = io.BytesIO()
        with _quiet():
            torch.onnx.export(module, example_inputs(model, 8, 1), buffer, dynamo=False, opset_version=17,
                              input_names=["noise", "conditions"], output_names=["showers"],
                              dynamic_axes={"noise": {0: "N"}, "conditions": {0: "N"}, "showers": {0: "N"}})
        session = onnx_session(buffer.getvalue(), threads)
        sampler = cls(model, session, threads)
        noise, cond = example_inputs(model, 64, 0)
        with torch.no_grad():
            ref = module(noise, cond).numpy()
        deviation = max_relative_deviation(ref, sampler.run(noise.numpy(), cond.numpy()))
        if not deviation <= tolerance:
            raise ValueError(f"ONNX Runtime deviates from PyTorch by {deviation:.3g} of the shower energy")
        return sampler

    def run(self, noise: np.ndarray, conditions: np.ndarray) -> np.ndarray:
        """Showers (N, V) float32 for float32 noise and physical conditions, in blocks of :data:`BLOCK`."""
        n = len(noise)
        if n <= BLOCK:
            return self.session.run(None, {"noise": noise, "conditions": conditions})[0]
        out = np.empty((n, self.model.n_voxels), dtype=np.float32)
        for lo in range(0, n, BLOCK):
            out[lo:lo + BLOCK] = self.session.run(None, {"noise": noise[lo:lo + BLOCK],
                                                         "conditions": conditions[lo:lo + BLOCK]})[0]
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


def fast_sampler(model, threads: int | None = None) -> OnnxSampler | None:
    """An :class:`OnnxSampler` for ``model`` when one applies and passes parity (module docstring), else None."""
    if model.device.type != "cpu" or not _samples_by_decode(model):
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    try:
        return OnnxSampler.build(model, threads)
    except Exception:  # an operator the exporter lacks, or no parity: PyTorch it is
        return None

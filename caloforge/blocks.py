"""How many showers one generation block holds: bounded memory on any geometry.

Generation works block by block (:func:`caloforge.generate.batch_seed` seeds each block),
and a block's output and working memory grow with its size times the voxel count: the
old fixed 10 000 showers held ≈ 2.2 GB per copy of the output on the 54 000-voxel
``ild-angled`` grid.  :func:`default_block_size` picks the largest block, up to
:data:`MAX_BLOCK`, whose estimated memory stays within :data:`BLOCK_BUDGET_BYTES`:

* the output: :data:`OUTPUT_COPIES` float32 showers alive at once per row (the decoded
  tensor, its NaN-guarded copy in :meth:`~caloforge.models.base.ShowerModel.sample`, the
  one in :mod:`caloforge.generate`);
* the family's working memory: the largest input + output (+ a convolution's unfolded
  column buffer) of any module call while the model decodes a probe of
  :data:`PROBE_SHOWERS` showers (forward hooks, so every family, including ones added
  later, is measured the same way without declaring anything).  Shapes only: the figure
  is the same on every CPU and torch build.

The size depends only on the model and the budget, never on the machine (its free memory,
threads or device), because it is also the seeding unit: every shard of a production, on
whatever node, must cut the request into the same blocks.  Where 10 000 showers fit in the
budget (the 368- to 6 480-voxel CaloChallenge geometries with the shipped families) the
default stays 10 000 and a seed gives the same showers as before; for CaloGAN (5 300) and on
the granular grids (69 – 83 for the small CPU 3DGAN and BIB-AE, 8 – 10 at the papers' sizes)
the block is smaller and the same seed gives other showers than a fixed 10 000 did — pass
``--batch-size 10000`` to reproduce those.  The family's activations are counted per
shower as if unchunked, which over-estimates the 3D families (they decode in chunks of
≤ 512 MiB of activations, :func:`caloforge.models.parts.grid.generation_chunk`) and is exact
for the ONNX Runtime engine, which runs a whole block at once.

>>> nice_floor(7_341), nice_floor(627.5), nice_floor(12.9), nice_floor(0.3)
(7300, 620, 12, 1)
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["BLOCK_BUDGET_BYTES", "MAX_BLOCK", "OUTPUT_COPIES", "PROBE_SHOWERS", "bytes_per_shower",
           "default_block_size", "nice_floor"]

BLOCK_BUDGET_BYTES = 2 << 30  # what one block may add to the loaded model: 2 GiB
MAX_BLOCK = 10_000  # the fixed default before: where it fits, a seed keeps its showers
OUTPUT_COPIES = 3  # float32 showers of one row alive at once in the generation pipeline
PROBE_SHOWERS = 2


def nice_floor(n: float) -> int:
    """``n`` rounded down to two significant digits (≥ 1): a block size one can read and retype."""
    if n < 1:
        return 1
    scale = 10 ** max(0, int(math.floor(math.log10(n))) - 1)
    return int(n // scale) * scale


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a module's inputs or output (tuples, lists, dicts; others count 0)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, Mapping):
        return sum(_nbytes(o) for o in obj.values())
    return 0


def _conv_workspace(module: torch.nn.Module, inputs: Any, output: Any) -> int:
    """Bytes of the column buffer a CPU convolution unfolds its input into (vol2col/im2col):
    kernel volume × channels × output (or, transposed, input) positions.  Measured on
    ``clic-angled`` it is most of a 3D family's generation memory, and no hook sees it."""
    if not isinstance(module, torch.nn.modules.conv._ConvNd) or not isinstance(output, torch.Tensor):
        return 0
    x = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
    if not isinstance(x, torch.Tensor):
        return 0
    kernel = math.prod(module.kernel_size)
    in_positions = x[0, 0].numel() if x.dim() > 2 else 1
    out_positions = output[0, 0].numel() if output.dim() > 2 else 1
    columns = max(module.in_channels // module.groups * kernel * out_positions,
                  module.out_channels // module.groups * kernel * in_positions)
    return columns * len(output) * output.element_size()


@torch.no_grad()
def bytes_per_shower(model: torch.nn.Module, incident_energy: np.ndarray | None = None,
                     conditions: Mapping[str, np.ndarray] | None = None) -> int:
    """Estimated generation memory per shower of ``model`` (a ShowerModel), in bytes.

    ``incident_energy``/``conditions``: rows of the request; the probe repeats the first
    (only tensor shapes matter, so any valid row gives the same figure).  Without them the
    probe uses the middle of the trained energy range and θ = 90° for angle conditions.
    """
    n_out = OUTPUT_COPIES * 4 * int(model.n_voxels)
    dev = model.device
    if incident_energy is not None and len(incident_energy):
        e = torch.full((PROBE_SHOWERS,), float(np.asarray(incident_energy).reshape(-1)[0]), dtype=torch.float64)
        cond = {k: torch.full((PROBE_SHOWERS,), float(np.asarray(v).reshape(-1)[0]), dtype=torch.float64)
                for k, v in (conditions or {}).items() if k in model.condition_names}
    else:
        lo, hi = model.energy_limits
        e = torch.full((PROBE_SHOWERS,), math.sqrt(lo * hi), dtype=torch.float64)
        cond = {k: torch.full((PROBE_SHOWERS,), math.pi / 2 if "theta" in k else 0.0, dtype=torch.float64)
                for k in model.condition_names[1:]}
    peak = 0

    def hook(module, inputs, output) -> None:
        nonlocal peak
        peak = max(peak, _nbytes(inputs) + _nbytes(output) + _conv_workspace(module, inputs, output))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    training = model.training
    try:
        model.eval()
        noise = model.sample_noise(PROBE_SHOWERS, torch.Generator(device=dev).manual_seed(0), dev)
        model.decode(noise, e.to(dev), {k: v.to(dev) for k, v in cond.items()})
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    return n_out + math.ceil(peak / PROBE_SHOWERS)


def default_block_size(model: torch.nn.Module, incident_energy: np.ndarray | None = None,
                       conditions: Mapping[str, np.ndarray] | None = None,
                       budget_bytes: int | None = None) -> int:
    """Showers per generation block: ``budget_bytes`` (default :data:`BLOCK_BUDGET_BYTES`) /
    :func:`bytes_per_shower`, at most :data:`MAX_BLOCK`, rounded down to two significant digits."""
    budget = BLOCK_BUDGET_BYTES if budget_bytes is None else int(budget_bytes)
    per_shower = bytes_per_shower(model, incident_energy, conditions)
    return nice_floor(min(MAX_BLOCK, budget / per_shower))

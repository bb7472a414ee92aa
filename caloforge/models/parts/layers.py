"""Per-layer operations on flat shower vectors (voxels of one layer after another).

>>> import torch
>>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
>>> layer_sums(x, [2, 3]).tolist(), per_voxel(torch.tensor([[10.0, 20.0]]), [2, 3]).tolist()
([[3.0, 12.0]], [[10.0, 10.0, 20.0, 20.0, 20.0]])
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor

from caloforge.preprocessing import exporting

__all__ = ["float_mask", "layer_sums", "per_voxel"]


def float_mask(compare, a: Tensor, b) -> Tensor:
    """compare(a, b) as 0/1 in a's dtype; written straight into a float tensor where not exporting
    (PyTorch's boolean kernels, any(), bool × float, cost several float passes each on the CPU)."""
    if exporting():  # exporters reject out=
        return compare(a, b).to(a.dtype)
    return compare(a, b, out=torch.empty_like(a))


def layer_sums(x: Tensor, sizes: Sequence[int]) -> Tensor:
    """(N, V) → (N, L): the sum over each layer's voxels."""
    return torch.stack([part.sum(1) for part in torch.split(x, list(sizes), 1)], 1)


def per_voxel(per_layer: Tensor, sizes: Sequence[int]) -> Tensor:
    """(N, L) → (N, V): each layer's value repeated over its voxels (a gather: any batch size in ONNX)."""
    return per_layer.index_select(1, _layer_of_voxel(tuple(int(n) for n in sizes)).to(per_layer.device))


@functools.lru_cache(maxsize=64)
def _layer_of_voxel(sizes: tuple[int, ...]) -> Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


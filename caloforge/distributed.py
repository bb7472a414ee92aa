"""Data-parallel training on torch.distributed: process group, gradient and buffer sync.

``torchrun --nproc-per-node N -m caloforge train …`` (or ``caloforge train --nproc N``)
starts N processes; each reads RANK / WORLD_SIZE / MASTER_ADDR from the environment
torchrun sets, joins one process group (gloo on CPU, NCCL on GPU) and trains on its
share of every global batch.

Why gradients are averaged here rather than by wrapping modules in
``DistributedDataParallel``: DDP assumes one forward and one backward per step
through one wrapped module.  Our families take several optimiser steps per
iteration through different networks (a GAN's critic steps, then its generator
step), and the WGAN gradient penalty differentiates through a gradient, which DDP's
reducer does not support.  Averaging each optimiser's gradients with one
``all_reduce`` before its ``step()`` — what DDP's reducer does, without the bucketing
— gives the same update for every family, and buffers (batch-norm running stats)
are broadcast from rank 0 after each iteration as DDP's ``broadcast_buffers`` does.
"""

from __future__ import annotations

import datetime
import os
from typing import Iterable

import torch

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "all_reduce_gradients",
           "broadcast_buffers", "all_reduce_mean", "broadcast_flag", "any_flags", "all_gather_object", "barrier", "shutdown"]

# a rank waits this long for a dead peer before giving up (torchrun's agent usually stops it sooner)
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("CALOFORGE_DIST_TIMEOUT_S", "600")))


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group described by torchrun's environment; False when not launched by it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return False
    if torch.distributed.is_initialized():
        return True
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend=backend, timeout=TIMEOUT)
    return True


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over all ranks (one flat all_reduce)."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics)."""
    if not is_distributed():
        return
    for b in module.buffers():
        torch.distributed.broadcast(b, src=0)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each scalar over ranks (identity when not distributed)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist()))


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (so all ranks stop on the same iteration)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def any_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag set on any rank (one small all_reduce): a stop signal that reached one rank stops all
    on the same iteration."""
    if not is_distributed():
        return [bool(f) for f in flags]
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()

"""Training batches streamed from a shower file: a shuffle pool of HDF5 blocks refilled as it drains.

The highly granular grids (15 625 – 65 025 voxels) and the CaloChallenge's larger
datasets do not fit in memory as a training set.  :class:`StreamingBatchSource` is a
:class:`~caloforge.models.base.BatchSource` that holds only

* the incident energies and conditions of every training row (8 bytes a value), and
* a **pool** of ``pool_blocks`` blocks of showers, each block ``block_rows`` consecutive
  rows of the file (a whole number of the file's HDF5 chunks, so each chunk is
  decompressed once per visit).

Batches are drawn uniformly, with replacement, from the training rows in the pool, with
the trainer's data generator (as the in-memory source draws from all rows).  After every
``block_rows × reuse`` rows drawn, the oldest block is evicted and the next block of the
**block order** is read in its slot: block order = a fresh permutation of the blocks every
epoch, ``numpy.random.default_rng([seed, epoch])``.  So every block enters the pool once per
epoch, every training row is drawn ``reuse`` times per epoch on average, and the pool's
content is a function of one integer, the number of blocks loaded so far (``position``):
the blocks at positions ``position − pool_blocks … position − 1``.  :meth:`state` (position
and rows drawn since the last refill) goes into every checkpoint; a resumed run rebuilds
the pool from it and, with the data generator's saved state, draws the very same batches.

Validation rows never enter the pool: a block's training rows are the given ``rows``
(sorted file row numbers) that fall inside it.

Memory: ``pool_blocks × block_rows × n_voxels × 4`` bytes of showers (``pool_mb``) whatever
the file size, plus 8 bytes per training row and condition.

>>> import numpy as np, tempfile, os, torch
>>> from caloforge.io import ShowerFile, write_showers
>>> path = os.path.join(tempfile.mkdtemp(), "stream.h5")
>>> write_showers(path, np.arange(1.0, 101.0), np.arange(100.0)[:, None] * np.ones((1, 3)))
>>> src = StreamingBatchSource(ShowerFile(path), np.arange(0, 100, 2), batch_size=8,
...                            generator=torch.Generator().manual_seed(0), pool_rows=20, block_rows=10, seed=0)
>>> len(src), src.pool_blocks, src.block_rows
(50, 2, 10)
>>> b = src.next()
>>> bool((b.showers[:, 0].long() % 2 == 0).all()), bool(torch.equal(b.showers[:, 0].double() + 1, b.incident_energy))
(True, True)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from caloforge import distributed
from caloforge.errors import ConfigError, DataError
from caloforge.io import ShowerFile
from caloforge.models.base import Batch, BatchSource

__all__ = ["StreamingBatchSource", "pool_rows_for"]


def pool_rows_for(pool_mb: float, n_voxels: int) -> int:
    """Showers (float32) that fit in ``pool_mb`` MiB.

    >>> pool_rows_for(512, 54_000)
    2485
    """
    return max(1, int(pool_mb * 2**20 // (4 * max(n_voxels, 1))))


class StreamingBatchSource(BatchSource):
    """Seeded random batches from a shower file through a shuffle pool; see the module docstring.

    ``rows``: the sorted file rows to train on; ``pool_rows``: pool capacity in showers;
    ``block_rows``: rows per block (default: the smallest multiple of the file's HDF5 chunk
    height that holds ≥ 16 rows, at most 1/8 of the pool); ``reuse``: expected draws of a row per epoch; ``seed``: of the block order.
    """

    def __init__(self, file: ShowerFile, rows: np.ndarray, batch_size: int, generator: torch.Generator, *,
                 pool_rows: int, seed: int, block_rows: int | None = None, reuse: float = 1.0,
                 device: torch.device | str = "cpu") -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise DataError(f"{file.path}: no training rows to stream")
        if np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= len(file):
            raise DataError(f"{file.path}: streamed training rows must be sorted, distinct and inside the file")
        if reuse <= 0:
            raise ConfigError(f"training.stream_reuse must be > 0, got {reuse!r}")
        self.file, self.rows = file, rows
        self.batch_size, self.generator = int(batch_size), generator
        self.index = None
        self.device = torch.device(device)
        self.seed, self.reuse = int(seed), float(reuse)
        self.block_rows = int(block_rows or _default_block_rows(file.chunk_rows, pool_rows))
        # the blocks holding at least one training row, and which rows those are
        block_of_row = rows // self.block_rows
        self.blocks, first = np.unique(block_of_row, return_index=True)
        self.block_span = np.append(first, len(rows))  # rows[span[i]:span[i+1]] lie in block i
        self.pool_blocks = int(max(1, min(len(self.blocks), pool_rows // self.block_rows)))
        energy, conds = file.columns()
        self.incident_energy = torch.as_tensor(energy[rows]).to(self.device)
        self.conditions = {k: torch.as_tensor(v[rows]).to(self.device) for k, v in conds.items()}
        cap = self.pool_blocks * self.block_rows
        self._pool_showers = torch.zeros(cap, file.n_voxels, dtype=torch.float32, device=self.device)
        self._pool_rows = torch.full((cap,), -1, dtype=torch.long)  # position in ``rows`` of each pool row
        self._valid = torch.zeros(0, dtype=torch.long)
        self._order_epoch, self._order = -1, np.zeros(0, np.int64)
        self.position, self.drawn = 0, 0.0
        self._fill(self.pool_blocks)

    # --- the interface the families use -------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def showers(self) -> Tensor:
        raise AttributeError("streamed training data keeps no showers in memory: use rows() or next()")

    def subset(self, index: np.ndarray, batch_size: int | None = None) -> BatchSource:
        raise ConfigError("this model draws from subsets of the training rows (e.g. energy_split), which "
                          "streamed data does not support yet: set training.stream: false")

    def next(self, batch_size: int | None = None) -> Batch:
        """The next random batch from the pool (this rank's share of ``batch_size`` global rows)."""
        n_global = batch_size or self.batch_size
        pick = torch.randint(len(self._valid), (n_global,), generator=self.generator)
        world, r = distributed.world_size(), distributed.rank()
        if world > 1:
            per = n_global // world
            pick = pick[r * per:(r + 1) * per]
        slots = self._valid[pick]
        idx = self._pool_rows[slots].to(self.device)
        batch = Batch(self._pool_showers[slots.to(self.device)], self.incident_energy[idx],
                      {k: v[idx] for k, v in self.conditions.items()})
        self._drain(n_global)
        return batch

    def take(self, index: np.ndarray | Tensor) -> Batch:
        """Training rows ``index`` (positions 0 … len − 1), read from the file."""
        index = np.asarray(torch.as_tensor(index).cpu(), dtype=np.int64)
        part = self.file.take(self.rows[index], self.block_rows, validate=False)
        idx = torch.as_tensor(index).to(self.device)
        return Batch(torch.as_tensor(np.asarray(part.showers, np.float32)).to(self.device), self.incident_energy[idx],
                     {k: v[idx] for k, v in self.conditions.items()})

    def fit_sample(self) -> Batch:
        """The showers :meth:`~caloforge.models.base.ShowerModel.fit_state` sees: the pool's first
        content (``pool_blocks`` blocks in random order, up to ``pool_rows`` showers) plus the rows
        holding the smallest and largest energy and condition values, so that the condition
        encodings' fitted ranges are those of all training rows."""
        in_pool = self._pool_rows[self._valid].numpy()
        extremes = [int(t.argmin()) for t in (self.incident_energy, *self.conditions.values())]
        extremes += [int(t.argmax()) for t in (self.incident_energy, *self.conditions.values())]
        index = np.unique(np.concatenate([in_pool, np.asarray(extremes, np.int64)]))
        return self.take(index)

    # --- checkpointed state ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"kind": "stream", "position": int(self.position), "drawn": float(self.drawn),
                "block_rows": self.block_rows, "pool_blocks": self.pool_blocks, "seed": self.seed,
                "n_rows": len(self.rows)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Rebuild the pool a checkpoint was drawing from (:meth:`state`)."""
        if not state or state.get("kind") != "stream":
            raise ConfigError(f"{self.file.path}: the checkpoint was written by an in-memory run; "
                              "resume it with training.stream: false")
        mine = self.state()
        for key in ("block_rows", "pool_blocks", "seed", "n_rows"):
            if int(state[key]) != int(mine[key]):
                raise ConfigError(f"{self.file.path}: cannot resume the stream, its {key} was {state[key]}, "
                                  f"now {mine[key]} (keep training.stream_pool_mb and the data unchanged)")
        self.position = int(state["position"]) - self.pool_blocks
        self._pool_rows.fill_(-1)
        self._fill(self.pool_blocks)
        self.drawn = float(state["drawn"])

    # --- the pool ----------------------------------------------------------------------------
    def _block_at(self, position: int) -> int:
        """Index into ``blocks`` of the block loaded at stream ``position``."""
        epoch, k = divmod(position, len(self.blocks))
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.blocks))
            self._order_epoch = epoch
        return int(self._order[k])

    def _fill(self, n: int) -> None:
        for _ in range(n):
            b = self._block_at(self.position)
            slot = self.position % self.pool_blocks
            lo, hi = self.block_span[b], self.block_span[b + 1]
            file_rows = self.rows[lo:hi]
            start = int(self.blocks[b]) * self.block_rows
            part = self.file.read(start, int(file_rows[-1]) + 1, validate=False)
            at = slot * self.block_rows
            self._pool_rows[at:at + self.block_rows] = -1
            self._pool_rows[at:at + hi - lo] = torch.arange(lo, hi)
            self._pool_showers[at:at + hi - lo] = torch.as_tensor(
                np.asarray(part.showers[file_rows - start], dtype=np.float32)).to(self.device)
            self.position += 1
        self._valid = torch.nonzero(self._pool_rows >= 0).reshape(-1)

    def _drain(self, n: int) -> None:
        if self.pool_blocks == len(self.blocks):
            return  # the whole training set is in the pool
        self.drawn += n
        every = self.block_rows * self.reuse
        while self.drawn >= every:
            self.drawn -= every
            self._fill(1)


def _default_block_rows(chunk_rows: int | None, pool_rows: int) -> int:
    cap = max(1, pool_rows // 8)
    if chunk_rows is None:
        return max(1, min(64, cap))
    rows = chunk_rows * max(1, -(-16 // chunk_rows))  # ≥ 16 rows: fewer, larger reads
    while rows > cap and rows > chunk_rows:
        rows -= chunk_rows
    return max(1, min(rows, cap))

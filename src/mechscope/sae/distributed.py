"""Data parallelism for SAE training through ``torchrun`` (gloo on CPU, nccl on GPU).

Every rank reads the same global batch of B rows from the same deterministic iterator and keeps its
slice of B / world rows; losses are means over the local rows, so the mean of the ranks' gradients
is the gradient of the global batch. Sums that depend on the whole batch (input scale, geometric
median, fired latents, BatchTopK's cut) go through :meth:`World.all_reduce`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks."""

    rank: int = 0
    """Index of this process (0 writes checkpoints and logs)."""
    size: int = 1
    """Number of processes."""
    device: str = "cpu"
    """Device this rank trains on."""

    @classmethod
    def from_env(cls, device: str = "auto") -> World:
        """Join the process group that ``torchrun`` describes in the environment (or run alone).

        device "auto" picks cuda:LOCAL_RANK when CUDA is available, else the CPU.
        """
        size = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        if size > 1 and not dist.is_initialized():
            if device.startswith("cuda"):
                torch.cuda.set_device(torch.device(device))
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        rank = dist.get_rank() if size > 1 else 0
        return cls(rank=rank, size=size, device=device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_rows(self, x: Tensor) -> Tensor:
        """This rank's contiguous slice of the global batch x: [B, d] → [B / size, d]."""
        if self.size == 1:
            return x
        if x.shape[0] % self.size:
            raise ValueError(f"global batch of {x.shape[0]} rows does not split over {self.size} ranks")
        per = x.shape[0] // self.size
        return x[self.rank * per : (self.rank + 1) * per]

    def all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """Sum (or max, min) of t over ranks; t itself with one process. Returns a new tensor."""
        if self.size == 1:
            return t.clone()
        out = t.to(self.device).clone()
        dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
        return out.to(t.device)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each gradient by its mean over ranks (one flattened all-reduce)."""
        if self.size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

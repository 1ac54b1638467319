"""Several processes under ``torchrun``: which rank this is, the process group, and collectives that end in a
named error instead of a hang. Used by SAE training (data parallelism) and harvest (a share of the shards each).

``torchrun`` describes the job in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
:meth:`World.from_env` is the one place that reads it. With WORLD_SIZE > 1 it joins PyTorch's default process
group: gloo on the CPU, NCCL on CUDA with rank r bound to cuda:LOCAL_RANK (``device_id``), so every tensor a
collective sees is on the rank's own device. Every collective is bounded by ``timeout_s`` (the process group's
timeout). Barriers and small Python objects go through a gloo group (the default group on the CPU, a second
gloo group beside NCCL on CUDA) with ``monitored_barrier``, which names the ranks that did not arrive; a
collective that fails or times out raises :class:`CollectiveError`. On NCCL a stuck all-reduce may instead be
ended by PyTorch's watchdog (``TORCH_NCCL_ASYNC_ERROR_HANDLING``), which kills the process after the timeout.

SAE training: every rank reads the same global batch of B rows from the same deterministic iterator and keeps
its slice of B / world rows; losses are means over the local rows, so the mean of the ranks' gradients is the
gradient of the global batch. Sums that depend on the whole batch (input scale, geometric median, fired
latents, BatchTopK's cut) go through :meth:`World.all_reduce`.

Independent work (the SAEs of a sweep with ``distribute_members``, LLC chains, a circuit's exact patches) is dealt
out by :meth:`World.share` (piece i to rank i mod N); each rank computes its pieces as one process would
(:meth:`World.alone`), and :meth:`World.gather` brings the results together (:meth:`World.map` does both for a
function of the piece's index).

One dictionary too large for one device (a cross-layer transcoder with ``shard_layers``) is split by model
parallelism: rank r holds the latents of its contiguous :meth:`World.block` of layers, every rank reads the same
whole batch, and :meth:`World.sum_partials` adds the ranks' partial outputs into the one output every rank then
scores (module docstring of :mod:`mechscope.sae.clt`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mechscope.errors import MechscopeError, UsageError

DEFAULT_TIMEOUT_S = 1800.0
"""Seconds a collective waits for the other ranks by default (PyTorch's own default for gloo)."""


class CollectiveError(MechscopeError, RuntimeError):
    """A collective (barrier, broadcast, all-reduce) failed or did not complete within the timeout: a rank died,
    is stuck, or runs far behind the others."""


@dataclass(frozen=True)
class WorldConfig:
    """How the processes of a torchrun job wait for each other."""

    collective_timeout_s: float = DEFAULT_TIMEOUT_S
    """Seconds a barrier or other collective waits for the other ranks before failing with a named error; it must
    exceed the longest time one rank can run ahead of another (for harvest, one rank's share of the shards)."""

    def __post_init__(self) -> None:
        if not self.collective_timeout_s > 0:
            raise UsageError(f"`collective_timeout_s` ({self.collective_timeout_s}) must be positive")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    """Index of this process (0 writes checkpoints, manifests and logs)."""
    size: int = 1
    """Number of processes."""
    device: str = "cpu"
    """Device this rank computes on."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Seconds a collective may wait for the other ranks."""
    control: Any = field(default=None, repr=False, compare=False)
    """The gloo process group for barriers and objects (None: the default group, or no group when alone)."""

    @classmethod
    def from_env(cls, device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
        """Join the process group that ``torchrun`` describes in the environment (or run alone).

        ``device`` "auto" picks cuda:LOCAL_RANK when CUDA is available, else the CPU; under torchrun "cuda"
        is cuda:LOCAL_RANK, and another cuda index is refused (two ranks on one GPU cannot share NCCL).
        """
        WorldConfig(timeout_s)  # refuses a timeout that is not positive
        size = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        elif size > 1 and device.startswith("cuda"):
            if device not in ("cuda", f"cuda:{local}"):
                raise UsageError(
                    f"`device` {device}: under torchrun each rank runs on cuda:LOCAL_RANK (this one on "
                    f"cuda:{local}); pass `device` cuda or auto"
                )
            device = f"cuda:{local}"
        if size == 1:
            return cls(rank=0, size=1, device=device, timeout_s=timeout_s)
        cuda = device.startswith("cuda")
        if not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(torch.device(device))
            with collective("joining the process group", timeout_s):
                dist.init_process_group(
                    backend="nccl" if cuda else "gloo",
                    timeout=timedelta(seconds=timeout_s),
                    device_id=torch.device(device) if cuda else None,
                )
        control = None
        if dist.get_backend() != "gloo":
            control = _CONTROL.get(timeout_s) or _CONTROL.setdefault(
                timeout_s, dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
            )
        return cls(
            rank=dist.get_rank(), size=dist.get_world_size(), device=device, timeout_s=timeout_s, control=control
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self, what: str = "barrier") -> None:
        """Wait until every rank arrives here; ``what`` names the barrier in the error of one that times out."""
        if self.size == 1:
            return
        with collective(what, self.timeout_s):
            dist.monitored_barrier(group=self.control, timeout=timedelta(seconds=self.timeout_s), wait_all_ranks=True)

    def broadcast(self, obj: Any, what: str = "broadcast") -> Any:
        """Rank 0's ``obj`` (a picklable Python object) on every rank."""
        if self.size == 1:
            return obj
        box = [obj if self.is_main else None]
        with collective(what, self.timeout_s):
            dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def share(self, n: int) -> list[int]:
        """This rank's share of ``n`` independent pieces of work (SAEs of a sweep, LLC chains, seeds): the indices
        i in [0, n) with i mod size = rank, in order. The shares are disjoint and together cover every index."""
        return list(range(self.rank, n, self.size))

    def map(self, fn: Callable[[int], Any], n: int, what: str = "map") -> list[Any]:
        """[fn(0), …, fn(n − 1)] on every rank: each rank computes its :meth:`share` of the indices, and the results
        (picklable; tensors on the CPU) are gathered under the collective timeout, in index order. Alone, every one
        here, in order."""
        mine = {i: fn(i) for i in self.share(n)}
        if self.size == 1:
            return [mine[i] for i in range(n)]
        got: dict[int, Any] = {}
        for part in self.gather(mine, what):
            got.update(part)
        return [got[i] for i in range(n)]

    def block(self, n: int) -> range:
        """This rank's contiguous block of ``n`` ordered pieces (the layers of a CLT): [r·n // size, (r+1)·n // size).
        The blocks are disjoint, in rank order, cover [0, n), and differ in length by at most one."""
        return range(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def sum_partials(self, t: Tensor) -> Tensor:
        """Σ_r t_r over the ranks, differentiably, for model parallelism: t_r is rank r's partial sum of an output
        (its latents' share of a decoder), and every rank then computes the same loss from the sum. The gradient
        flows back to t_r unchanged (:class:`_SumOfPartials`). t itself with one process."""
        if self.size == 1:
            return t
        return _SumOfPartials.apply(t, self)

    def alone(self) -> World:
        """This rank on its own device as a world of one (no collectives): for work whose arithmetic must be that
        of a single process, such as an SAE that one rank trains on whole batches."""
        return World(rank=0, size=1, device=self.device, timeout_s=self.timeout_s)

    def gather(self, obj: Any, what: str = "gather") -> list[Any]:
        """Every rank's ``obj`` (a picklable Python object), in rank order, on every rank; ``[obj]`` alone."""
        if self.size == 1:
            return [obj]
        box: list[Any] = [None] * self.size
        with collective(what, self.timeout_s):
            dist.all_gather_object(box, obj, group=self.control)
        return box

    def collect(self, obj: Any, what: str = "collect") -> list[Any] | None:
        """Every rank's ``obj`` (a picklable Python object) in rank order on rank 0, None on the others (unlike
        :meth:`gather`, the other ranks receive nothing: for large objects such as a dictionary's shards)."""
        if self.size == 1:
            return [obj]
        box: list[Any] | None = [None] * self.size if self.is_main else None
        with collective(what, self.timeout_s):
            dist.gather_object(obj, box, dst=0, group=self.control)
        return box

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
        with collective(f"all-reduce ({op})", self.timeout_s):
            dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
        return out.to(t.device)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each gradient by its mean over ranks (one flattened all-reduce on this rank's device)."""
        if self.size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        with collective("gradient all-reduce", self.timeout_s):
            dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def close(self) -> None:
        """Leave the process group (the end of a command run under torchrun). On a normal end every rank first
        meets the others at a barrier: a rank that destroyed the group while another still finished its last
        collective would cut that one's connections, and gloo aborts it (``terminate called …``, SIGABRT). When an
        exception is on its way out (``close`` in a ``finally``) the barrier is skipped: the other ranks may be gone."""
        if self.size > 1 and dist.is_initialized():
            if sys.exc_info()[0] is None:
                self.barrier("the closing barrier")
            dist.destroy_process_group()
            _CONTROL.clear()


@contextmanager
def collective(what: str, timeout_s: float | None = None) -> Iterator[None]:
    """Raise a collective that fails or times out inside this block as :class:`CollectiveError`, saying which one
    (``what``), on which rank, and what to do; ``timeout_s`` is the timeout it ran under, where the caller knows it
    (code without a :class:`World`, such as an SAE's own all-reduce, runs under the process group's)."""
    try:
        yield
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = f"rank {dist.get_rank()} of {dist.get_world_size()}" if dist.is_initialized() else "this rank"
        within = f"within {timeout_s:g} s" if timeout_s is not None else "within the process group's timeout"
        raise CollectiveError(
            f"{where}: {what} failed or did not complete {within} ({first}); another rank died, is stuck, or runs "
            "behind by more than the timeout (re-run the same command to resume, with a longer `collective_timeout_s` "
            "if a rank was only slow)"
        ) from err


class _SumOfPartials(torch.autograd.Function):
    """forward: s = Σ_r t_r (one all-reduce); backward: ∂L/∂t_r = ∂L/∂s, passed through unchanged.

    Why not the all-reduce's own adjoint (a second all-reduce of the incoming gradients): every rank computes the
    SAME loss L(s) from the same s, so each rank already holds the whole ∂L/∂s, and ∂s/∂t_r = I. Summing the R
    ranks' copies of ∂L/∂s would treat the R replicas of one loss as R different losses and scale every gradient
    by R. (Data parallelism is the other case: there each rank's loss is a different part of the total, and the
    gradients are averaged by :meth:`World.average_gradients`.)"""

    @staticmethod
    def forward(ctx: Any, t: Tensor, world: World) -> Tensor:
        out = t.detach().to(world.device).clone()
        with collective("the all-reduce of the ranks' partial outputs", world.timeout_s):
            dist.all_reduce(out)
        return out.to(t.device)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


_ALONE: list[bool] = []
"""Open :func:`without_data_parallelism` blocks (a stack, so that they nest)."""


@contextmanager
def without_data_parallelism() -> Iterator[None]:
    """Inside this block code without a :class:`World` (BatchTopK's cut over the batch, which all-gathers over the
    default process group) computes as one process would: each rank here trains its own SAEs on whole batches
    (``distribute_members``), and a collective with ranks that train other SAEs would mix them up or hang."""
    _ALONE.append(True)
    try:
        yield
    finally:
        _ALONE.pop()


def data_parallel() -> bool:
    """Whether an SAE's own batch-wide sums run over the ranks (a process group is joined, outside
    :func:`without_data_parallelism`)."""
    return not _ALONE and dist.is_available() and dist.is_initialized()


_CONTROL: dict[float, Any] = {}
"""The gloo group beside NCCL, made once per timeout (every rank must create groups in the same order)."""

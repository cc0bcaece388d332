"""torch.distributed helpers: measure LCA on several processes launched by ``torchrun``.

LCA's cost is the measurement-set gradient (2 full evaluations per step for Simpson), not the
training step, so that is what is spread over processes: every rank holds the same model and
the same θ, measures a contiguous slice of the fixed measurement chunks, and one all-reduce of a
flat buffer (loss and every gradient) gives each rank the full-set result. Nothing here is a
home-made cluster: the launcher is ``torchrun``, the transport is torch.distributed (gloo on CPU,
NCCL on CUDA), and a process that was not launched that way never touches it.

The training step is not split across ranks (no DDP): every rank takes the same whole minibatch
step and rank 0's gradient is broadcast before the optimizer step, so θ is bit-identical on
every rank and to a single process's run. Splitting the minibatch and averaging gradients
changes float32 rounding in θ (~1e-7 relative), which Δ = θ_{t+1} − θ_t amplifies to ~1e-6
relative in per-parameter LCA; replicating costs one minibatch step per rank, small next to the
two measurement-set gradients that dominate a tracked step.

    torchrun --nproc-per-node 4 -m lca train --dataset digits --steps 200 --out runs/a.h5
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

#: Environment variables torchrun sets for every process it starts.
LAUNCH_VARS = ("RANK", "WORLD_SIZE")
RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """The process group could not be set up (one sentence naming the cause and the fix)."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (``None`` stands for "not distributed")."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool  # True when ``setup`` created the group (and so tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or anything that sets RANK/WORLD_SIZE)."""
    return all(k in os.environ for k in LAUNCH_VARS)


def env_rank() -> int:
    """This process's rank from the environment (0 when not launched by torchrun).

    Usable before the group exists, e.g. to silence progress bars on every rank but the first.
    """
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def rank() -> int:
    """Rank in the default group, 0 when torch.distributed is not in use."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the default group, 1 when torch.distributed is not in use."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Only the main rank writes files and prints."""
    return rank() == 0


def setup(device: torch.device) -> Dist | None:
    """Join the process group torchrun described, or return None in a plain process.

    CUDA ranks each take the GPU ``LOCAL_RANK`` and talk over NCCL; CPU ranks use gloo. A group
    that already exists (made by the caller) is reused and left alone at the end.
    """
    if not launched():
        return None
    if not dist.is_available():
        raise DistributedError(
            "RANK/WORLD_SIZE are set but this PyTorch build has no torch.distributed; "
            "run without torchrun."
        )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise DistributedError(
                f"LOCAL_RANK {local} has no GPU (this machine has {count}); "
                f"start at most {count} processes per node."
            )
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        missing = [k for k in RENDEZVOUS_VARS if k not in os.environ]
        if missing:
            raise DistributedError(
                f"RANK/WORLD_SIZE are set but {', '.join(missing)} is not; launch with "
                "torchrun --nproc-per-node N -m lca ..."
            )
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend, **kwargs)
        owns = True
        atexit.register(_destroy_quietly)
    return Dist(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=local,
        device=device,
        backend=dist.get_backend(),
        owns_group=owns,
    )


#: How long a rank that ended cleanly waits at the closing barrier for the others (rank 0 may
#: still be closing a large run file); a rank that never comes only delays the exit this long.
CLOSING_BARRIER_S = 300.0


def teardown(d: Dist | None, *, clean: bool = False) -> None:
    """Leave the group if ``setup`` made it (a caller's own group is left alone).

    ``clean``: this rank ended normally, as every rank does together at the end of the same
    run, so it first waits at a barrier (at most ``CLOSING_BARRIER_S``) until every rank is done
    with the group's collectives. Without it a rank that finished first tore its gloo
    connections down while another still used them, and a rank could die at exit with SIGABRT
    ("terminate called without an active exception"). After an error or an interruption ranks
    may stand in different collectives, so they leave without the barrier.
    """
    if d is None or not d.owns_group:
        return
    if clean:
        closing_barrier(d.backend)
    _destroy_quietly()


def closing_barrier(backend: str, timeout_s: float = CLOSING_BARRIER_S) -> bool:
    """Wait until every rank of the default group reaches this point, or ``timeout_s`` passes,
    or a rank is gone (its closed connection ends the wait at once); True when all came."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return True
    timeout = timedelta(seconds=timeout_s)
    try:
        if backend == "gloo":  # the gloo barrier that takes a timeout
            dist.monitored_barrier(timeout=timeout)
        else:
            work = dist.barrier(async_op=True)
            if work is not None:
                work.wait(timeout=timeout)
    except Exception:  # noqa: BLE001 - a rank failed or is late: leave without it
        return False
    return True


def _destroy_quietly() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def resolve_group(shard: Any) -> Any:
    """``True`` means the default group; a ProcessGroup is used as is."""
    if shard is True:
        if not (dist.is_available() and dist.is_initialized()):
            raise DistributedError(
                "Sharding the measurement set needs torch.distributed to be initialised; "
                "launch with torchrun or call lca.distributed.setup first."
            )
        return None  # torch's name for the default group
    return shard


def group_rank_world(group: Any) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous slice [lo, hi) of ``n`` items for ``rank``; sizes differ by at most one."""
    return n * rank // world, n * (rank + 1) // world


# ---------------------------------------------------------------------------------------------
# Collectives on flat buffers: one call per dtype, whatever the number of tensors.


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One contiguous 1-D buffer holding every tensor (all of one dtype and device)."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1).clone()
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views into ``flat`` shaped like ``like`` (no copy)."""
    out, i = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[i : i + n].view(t.shape))
        i += n
    return out


def all_reduce_dict(
    tensors: dict[str, torch.Tensor], group: Any = None, op: Any = None
) -> dict[str, torch.Tensor]:
    """Sum (or ``op``) a dict of tensors over ranks through one flat buffer per dtype.

    Returns new tensors (views into the reduced buffers); the inputs are not modified. Every
    rank must pass the same keys with the same shapes and dtypes.
    """
    op = dist.ReduceOp.SUM if op is None else op
    by_kind: dict[tuple[torch.dtype, torch.device], list[str]] = {}
    for k, t in tensors.items():
        by_kind.setdefault((t.dtype, t.device), []).append(k)
    out: dict[str, torch.Tensor] = {}
    for keys in by_kind.values():
        like = [tensors[k] for k in keys]
        flat = flatten(like)
        dist.all_reduce(flat, op=op, group=group)
        out.update(zip(keys, unflatten(flat, like), strict=True))
    return {k: out[k] for k in tensors}


def _broadcast(tensors: list[torch.Tensor], src: int, group: Any) -> None:
    by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.dtype, t.device), []).append(t)
    for like in by_kind.values():
        flat = flatten(like)
        dist.broadcast(flat, src=src, group=group)
        for t, v in zip(like, unflatten(flat, like), strict=True):
            t.copy_(v)


@torch.no_grad()
def broadcast_module(model: nn.Module, src: int = 0, group: Any = None) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s (one flat buffer each
    dtype)."""
    _broadcast([*model.parameters(), *model.buffers()], src, group)


def gather_objects(obj: Any, dst: int = 0, group: Any = None) -> list[Any] | None:
    """Every rank's ``obj`` (pickled) on rank ``dst``, in rank order; None elsewhere.

    Only for data this process made itself (LCA records): never for anything read from outside.
    """
    world = dist.get_world_size(group)
    out: list[Any] | None = [None] * world if dist.get_rank(group) == dst else None
    dist.gather_object(obj, out, dst=dst, group=group)
    return out


@torch.no_grad()
def broadcast_grads(model: nn.Module, src: int = 0, group: Any = None) -> None:
    """Every rank's ``.grad`` set to rank ``src``'s, through one flat buffer per dtype.

    Ranks compute the same minibatch gradient; sharing rank 0's makes the optimizer updates (and
    so θ and the optimizer state) bit-identical on every rank even where GPU kernels are not
    deterministic, which the sharded measurement needs (every rank must measure the same θ).
    """
    _broadcast([p.grad for p in model.parameters() if p.grad is not None], src, group)

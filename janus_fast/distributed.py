"""The process group of a ``torchrun`` launch, shared by training and the corpus jobs.

``torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT ...]`` starts one process per
rank with ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` set; outside torchrun
they are unset and everything here is a no-op for one process.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def environment_int(name: str, default: int, low: int) -> int:
    """The integer environment variable ``name`` (set by torchrun), ``default`` when unset; a
    ValueError naming it for anything else than an integer >= ``low``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r}: expected an integer >= {low} (torchrun sets it)") from None
    if value < low:
        raise ValueError(f"{name}={value}: expected an integer >= {low} (torchrun sets it)")
    return value


class DistributedContext:
    """Rank and world size of this process, and the process group when there are several.

    ``backend``: the process group's ("nccl" / "gloo"; default nccl where CUDA is available, as
    training's gradients live there, else gloo). ``timeout``: how long a collective (a barrier)
    waits for the slowest rank (torch's default when None).
    """

    def __init__(self, backend: str | None = None, timeout: datetime.timedelta | None = None) -> None:
        self.world_size = environment_int("WORLD_SIZE", 1, 1)
        self.rank = environment_int("RANK", 0, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"RANK={self.rank} must be below WORLD_SIZE={self.world_size} (set by torchrun)")
        self.local_rank = environment_int("LOCAL_RANK", 0, 0)
        self.local_world_size = environment_int("LOCAL_WORLD_SIZE", self.world_size, 1)
        self.owns_group = False
        if self.world_size > 1 and not dist.is_initialized():
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            kwargs = {} if timeout is None else {"timeout": timeout}
            try:
                dist.init_process_group(backend, **kwargs)
            except (RuntimeError, ValueError) as error:  # no peers (WORLD_SIZE set by hand), no MASTER_ADDR
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ValueError(
                    f"WORLD_SIZE={self.world_size}: cannot reach the other ranks ({reason}); start every process "
                    "with torchrun"
                ) from error
            self.owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def single_machine(self) -> bool:
        """Whether every rank runs on this machine (torchrun's LOCAL_WORLD_SIZE == WORLD_SIZE)."""
        return self.local_world_size == self.world_size

    def device(self, device: str) -> str:
        """``device`` for this rank: a bare ``cuda`` means ``cuda:LOCAL_RANK`` (one process per GPU)."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.world_size > 1 else device

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every rank (picklable)."""
        if self.world_size == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_reduce_sum(self, value: float) -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor)

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["DistributedContext", "environment_int"]

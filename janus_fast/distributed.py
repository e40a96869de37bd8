"""The process group of a ``torchrun`` launch, shared by training and the corpus jobs.

``torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT ...]`` starts one process per
rank with ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` set; outside torchrun
they are unset and everything here is a no-op for one process.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import threading

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


# torch's default wait for the ranks (init_process_group's timeout for gloo and nccl)
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
# torch's own rendezvous is given this much longer than ours, so that ours gives up first (with one
# line) rather than torch's store client (which retries its connect and prints C++ stack dumps)
_TORCH_GRACE = datetime.timedelta(minutes=1)
# a wait longer than this is announced on standard error (under torchrun the ranks meet at once)
WAITING_NOTICE = datetime.timedelta(seconds=10)


def init_process_group(backend: str, timeout: datetime.timedelta, world_size: int) -> None:
    """``dist.init_process_group`` waited for at most ``timeout``, interruptibly: the rendezvous runs
    in a helper thread while this one waits, so Ctrl-C and SIGTERM act at once (torch's connect loop
    holds the thread it runs in for minutes), and a ValueError comes at ``timeout`` (torch's store
    client retries a 5-minute connect several times). The helper of a failed wait is left behind:
    the process is expected to end."""
    address = os.environ.get("MASTER_ADDR", "").strip()
    if address:  # a host name that does not resolve: say so now (torch retries it until the timeout)
        try:
            socket.getaddrinfo(address, None)
        except (OSError, UnicodeError) as error:
            raise ValueError(
                f"WORLD_SIZE={world_size}: MASTER_ADDR={address!r} does not resolve ({error}); start every process "
                "with torchrun"
            ) from None
    outcome: dict[str, BaseException] = {}

    def rendezvous() -> None:
        try:
            dist.init_process_group(backend, timeout=timeout + _TORCH_GRACE)
        except BaseException as error:  # reported by the waiting thread
            outcome["error"] = error

    helper = threading.Thread(target=rendezvous, name="janus-fast-rendezvous", daemon=True)
    helper.start()
    helper.join(min(WAITING_NOTICE, timeout).total_seconds())  # interruptible: signal handlers run here
    if helper.is_alive() and timeout > WAITING_NOTICE:
        peers = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        print(
            f"janus-fast: waiting for the other {world_size - 1} rank(s) of WORLD_SIZE={world_size} at {peers} "
            f"(up to {timeout.total_seconds():g} s)",
            file=sys.stderr,
        )
        helper.join((timeout - WAITING_NOTICE).total_seconds())
    error = outcome.get("error")
    if helper.is_alive() or error is not None:
        if error is None:
            reason = f"no answer within {timeout.total_seconds():g} s"
        else:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"WORLD_SIZE={world_size}: cannot reach the other ranks ({reason}); start every process with torchrun"
        ) from error


class DistributedContext:
    """Rank and world size of this process, and the process group when there are several.

    ``backend``: the process group's ("nccl" / "gloo"; default nccl where CUDA is available, as
    training's gradients live there, else gloo). ``timeout``: how long the ranks may take to
    connect (``init_process_group``) and a collective (a barrier) waits for the slowest rank
    (torch's default, 30 minutes, when None).
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
            # no peers (WORLD_SIZE set by hand), no MASTER_ADDR: one error line, at the timeout at the latest
            init_process_group(backend, timeout if timeout is not None else DEFAULT_TIMEOUT, self.world_size)
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

    def gather_to_main(self, value: object) -> list[object] | None:
        """Every rank's ``value`` (picklable), in rank order, on rank 0; None on the others."""
        if self.world_size == 1:
            return [value]
        gathered: list[object] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def threads_per_process(self) -> int:
        """This machine's CPUs (those this process may run on) shared by its ranks (torchrun's
        LOCAL_WORLD_SIZE: the ranks of other machines have their own)."""
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            cpus = os.cpu_count() or 1
        return max(1, cpus // self.local_world_size)

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

"""PyTorch DDP as launched by ``torchrun``: process group set-up, sharding, reductions.

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without them everything here
degrades to a single process, so the same training code runs either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job and the device it should use."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, plots and writes checkpoints."""
        return self.rank == 0


def check_device(text: str) -> str:
    """``text`` if it names a torch device this machine has: ``cpu``, or an accelerator (``cuda[:N]``,
    ``mps``, ``xpu``, ...) whose torch module says it is available, with that many devices; else ``ValueError``."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"expected a device such as cpu, cuda or cuda:1, got {text!r}") from None
    if device.type == "cpu":
        return text
    accelerator = getattr(torch, device.type, None)
    if accelerator is None or not hasattr(accelerator, "is_available"):
        raise ValueError(f"{text}: not a device semseg can run on; use cpu, cuda, mps, xpu, ...")
    count = accelerator.device_count() if accelerator.is_available() else 0
    if count == 0:
        raise ValueError(f"{text}: this machine has no {device.type.upper()} device torch {torch.__version__} "
                         "can use; use cpu")  # fmt: skip
    if device.index is not None and device.index >= count:
        raise ValueError(f"{text}: this machine has {count} {device.type.upper()} device(s), "
                         f"{device.type}:0 to {device.type}:{count - 1}")  # fmt: skip
    return text


def setup(device: str = "auto", *, timeout_s: float = 600.0) -> DistInfo:
    """Join the torchrun process group if there is one (gloo on CPU, NCCL on GPU); pick the device.

    ``timeout_s`` bounds every collective: a peer that died or stopped makes the others fail
    with an error after that long instead of waiting forever.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(check_device(device))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world_size > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, dev)


def teardown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (a no-op in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` holds on every process (so all take the same branch around a collective)."""
    if not dist.is_initialized():
        return flag
    failed = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.SUM)
    return int(failed.item()) == 0


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()

"""Two gloo processes: a loss that is not finite on one rank makes every rank skip that batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import semseg
from semseg.engine import distributed
from semseg.engine.train import TrainForward, train_one_epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results, grad_accum: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    info = distributed.setup("cpu", timeout_s=60)
    try:
        torch.manual_seed(0)
        model = semseg.create_model("unet", num_classes=2, base_channels=4, depth=1, batch_norm=False)
        net = DistributedDataParallel(TrainForward(model))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(rank)
        batches = []
        for i in range(4):
            x = torch.randn(2, 3, 32, 32, generator=gen)
            if rank == 1 and i == 1:
                x[0, 0, 0, 0] = float("nan")  # only this rank's second batch
            batches.append((x, torch.randint(0, 2, (2, 32, 32), generator=gen)))
        calls = {"n": 0}
        original = DistributedDataParallel.no_sync

        def counting_no_sync(self):
            calls["n"] += 1
            return original(self)

        DistributedDataParallel.no_sync = counting_no_sync
        stats = train_one_epoch(net, batches, optimizer, torch.nn.functional.cross_entropy, grad_accum=grad_accum,
                                progress=False)  # fmt: skip
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        results[rank] = (stats["skipped"], flat, calls["n"], info.world_size)
    finally:
        distributed.teardown()


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_a_nonfinite_loss_on_one_rank_is_skipped_by_all(grad_accum):
    results = mp.Manager().dict()
    mp.start_processes(_worker, args=(_free_port(), results, grad_accum), nprocs=2, join=True, start_method="spawn")
    (skipped0, w0, no_sync0, world), (skipped1, w1, no_sync1, _) = results[0], results[1]
    assert world == 2
    assert skipped0 == skipped1 == 1  # rank 0's own loss was finite: it skipped because rank 1 had to
    assert torch.equal(w0, w1)  # every step all-reduced the same gradients on both ranks
    # no_sync around the micro-batches before each step: batches 0 and 2 of [0, 1 | 2, 3].
    expected = 0 if grad_accum == 1 else 2
    assert no_sync0 == no_sync1 == expected


def test_all_true_outside_a_process_group_is_the_flag():
    assert not dist.is_initialized()
    assert distributed.all_true(True) and not distributed.all_true(False)

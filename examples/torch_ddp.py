"""Two processes train fastbptt.torch.LSTM with DistributedDataParallel (gloo, loopback only).

Each process takes half of a batch; DDP averages their gradients, which then equal the gradients of one process
on the whole batch. Run:  python examples/torch_ddp.py --out DIR   (writes DIR/rank{0,1}.npz and DIR/single.npz)
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import fastbptt.torch as fbt

T, B, D, H = 12, 8, 5, 16


def make_problem():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, D, generator=generator, dtype=torch.float64)
    target = torch.randn(T, B, H, generator=generator, dtype=torch.float64)
    torch.manual_seed(1)
    model = fbt.LSTM(D, H, dtype=torch.float64)
    return x, target, model


def loss_of(model, x, target):
    output, _ = model(x)
    return torch.mean((output - target) ** 2)  # a mean over the batch, so DDP's average matches one process


def gradients(module) -> dict:
    return {name: p.grad.numpy().copy() for name, p in module.named_parameters()}


def worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)
        x, target, model = make_problem()
        ddp = DistributedDataParallel(model)
        half = slice(rank * B // world, (rank + 1) * B // world)
        for _ in range(3):  # a few steps, so the parameters move identically in both processes
            ddp.zero_grad()
            loss_of(ddp, x[:, half], target[:, half]).backward()
            with torch.no_grad():
                for p in ddp.parameters():
                    p -= 0.1 * p.grad
        np.savez(Path(out) / f"rank{rank}.npz", **gradients(model))
        dist.barrier()  # neither process tears down its connections while the other still uses them
        # gloo's worker thread frees the barrier's work with the GIL taken; torch's process-group destructor joins
        # that thread while holding the GIL, so a teardown right after the barrier can deadlock. Hand the GIL over
        # first, and free DDP (whose reducer holds the group) before the group is destroyed.
        time.sleep(0.1)
        del ddp
    finally:
        dist.destroy_process_group()


def single_process(out: str) -> None:
    x, target, model = make_problem()
    for _ in range(3):
        model.zero_grad()
        loss_of(model, x, target).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    np.savez(Path(out) / "single.npz", **gradients(model))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    mp.spawn(worker, args=(2, free_port(), args.out), nprocs=2, join=True)
    single_process(args.out)
    print(f"wrote {args.out}/rank0.npz, rank1.npz, single.npz")

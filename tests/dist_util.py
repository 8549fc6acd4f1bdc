"""Run a function in N gloo processes on localhost (the CPU stand-in for NCCL on GPUs)."""
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, fn, world, store, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_gloo(fn, world: int, *args) -> None:
    """fn(rank, world, *args) in `world` processes; fn must be importable (module level)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        mp.spawn(_entry, args=(fn, world, store, args), nprocs=world, join=True)

"""Run a function in N gloo processes on localhost (the CPU stand-in for NCCL on GPUs)."""
import multiprocessing.connection
import os
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEADLINE_S = 300  # the slowest gloo test takes well under a minute here on one thread


def _entry(rank, fn, world, store, args, error_file):
    def record():  # at once, before anything else can fail or hang; whole or not at all
        with open(error_file + ".partial", "w") as f:
            f.write(traceback.format_exc())
        os.replace(error_file + ".partial", error_file)

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    except BaseException:
        record()
        raise
    try:
        fn(rank, world, *args)
    except BaseException:
        record()
        raise
    finally:
        dist.destroy_process_group()


def _failures(procs, errors: list[str], wait_s: float = 10.0) -> str:
    """Every failed rank's traceback, once the ranks have exited (those waiting for a failed peer
    fail in turn) or after wait_s: a rank that wrote one, whatever its state, and a rank that
    exited with an error without one."""
    end = time.monotonic() + wait_s
    while any(p.exitcode is None for p in procs) and time.monotonic() < end:
        time.sleep(0.1)
    out = []
    for rank, (p, error) in enumerate(zip(procs, errors)):
        state = "still running" if p.exitcode is None else f"exited with code {p.exitcode}"
        if os.path.exists(error):
            out.append(f"gloo rank {rank} of {len(procs)} ({state}) failed:\n{open(error).read()}")
        elif p.exitcode not in (None, 0):
            out.append(f"gloo rank {rank} of {len(procs)} {state} (no traceback written)")
    return "\n".join(out)


def run_gloo(fn, world: int, *args, deadline_s: float = DEADLINE_S) -> None:
    """fn(rank, world, *args) in `world` spawned processes; fn must be importable (module level).

    Raises with every failed rank's traceback if any process fails (a rank waiting for it in a
    collective may fail in turn, and either may be noticed first; whatever still runs 10 s later
    is ended), and with every rank's state if they have not all finished within deadline_s. Each process's exit
    is polled (waitpid), not only awaited on its sentinel pipe: a pipe that something else still
    holds open cannot leave an exited process unnoticed (a full run once stopped for 20 minutes
    with two exited ranks unreaped)."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        errors = [os.path.join(tmp, f"rank{rank}.error") for rank in range(world)]
        procs = [ctx.Process(target=_entry, args=(rank, fn, world, store, args, errors[rank]))
                 for rank in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + deadline_s
        try:
            while True:
                codes = [p.exitcode for p in procs]  # polls waitpid(WNOHANG)
                failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    raise RuntimeError(_failures(procs, errors))
                if all(code == 0 for code in codes):
                    return
                if time.monotonic() > deadline:
                    states = ", ".join(f"rank {r}: {'running' if c is None else f'exit {c}'} (pid {p.pid})"
                                       for r, (p, c) in enumerate(zip(procs, codes)))
                    name = getattr(fn, "__qualname__", repr(fn))
                    raise TimeoutError(f"{name} in {world} gloo processes not finished after "
                                       f"{deadline_s:.0f} s: {states}")
                multiprocessing.connection.wait([p.sentinel for p, c in zip(procs, codes) if c is None], timeout=1.0)
        finally:
            for p in procs:
                if p.exitcode is None:
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
                if p.exitcode is None:
                    p.kill()
                    p.join()

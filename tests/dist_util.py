"""Run a function on W local processes in a gloo process group (the distributed tests).

Each run rendezvous through its own file (file:// init), so parallel test workers never
share a port; a run that does not finish within `timeout` seconds is killed and fails
the test (a hung collective must never hang CI).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, init_file: str, cache_dir: str, fn, args) -> None:
    from ioaware.config import config

    torch.set_num_threads(1)  # W processes share the machine's cores
    config.interpret = True
    config.cache_dir = Path(cache_dir) / f"rank{rank}"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_group(fn, world: int, tmp_path: Path, *args, timeout: float = 240.0) -> None:
    """fn(rank, world, *args) on `world` spawned processes; raises what any rank raised."""
    init_file = tmp_path / f"init-{world}-{time.monotonic_ns()}"
    ctx = mp.start_processes(_entry, args=(world, str(init_file), str(tmp_path), fn, args),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    os.kill(p.pid, 9)
            raise TimeoutError(f"{world} ranks did not finish in {timeout} s (a hang?)")

"""Data-parallel training through ``paddle.distributed`` (``--n_gpu N``).

``launch`` starts N workers with ``paddle.distributed.spawn`` (NCCL on GPUs, gloo on
CPUs). Each worker takes its slice of every global batch; after backward, gradients
are averaged across workers with paddle's fused all-reduce (the same call
``DataParallel`` uses under ``no_sync``), so every worker applies the same update and
the model stays identical everywhere. Only rank 0 writes files.
"""
from __future__ import annotations

import os

import numpy as np


def world_size() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def rank() -> int:
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def is_main() -> bool:
    return rank() == 0


def shard(*arrays: np.ndarray) -> tuple:
    """This worker's rows of a global batch (all workers get a non-empty slice)."""
    n, r = world_size(), rank()
    if n == 1:
        return arrays
    return tuple(a[r::n] for a in arrays)


def usable(batch_len: int) -> bool:
    """Skip a final batch too small to give every worker a row (keeps collectives in lockstep)."""
    return batch_len >= world_size()


def sync_gradients(parameters) -> None:
    if world_size() == 1:
        return
    from paddle.distributed.fleet.utils.hybrid_parallel_util import fused_allreduce_gradients
    fused_allreduce_gradients([p for p in parameters if not p.stop_gradient], None)


def _worker(fn, payload):
    import paddle.distributed as dist
    dist.init_parallel_env()
    return fn(payload)


def launch(fn, payload, nprocs: int):
    """Run ``fn(payload)`` in ``nprocs`` workers and wait for all of them."""
    import paddle
    import paddle.distributed as dist

    gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() >= nprocs
    saved = os.environ.get("OMP_NUM_THREADS")
    if not gpu:
        # CPU workers share the cores: split threads so they don't oversubscribe
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nprocs))
    try:
        dist.spawn(_worker, args=(fn, payload), nprocs=nprocs, backend="nccl" if gpu else "gloo", join=True)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved

"""CPU settings for paddle (training, export and Paddle Inference scoring), applied before paddle is imported.

Paddle's CPU wheel does its GEMMs in Intel MKL (mklml). On AMD CPUs MKL picks a
generic code path unless told otherwise; ``MKL_DEBUG_CPU_TYPE=5`` selects its AVX2
kernels, which run a BERT-shaped matmul much faster there. Threads follow
the serving encoder's rule (the cores this process may use): more only oversubscribes.
"""
from __future__ import annotations

import os

from ofaserve.runtime.runtimes import default_threads


def configure(threads: int | None = None) -> dict[str, str]:
    n = str(threads or default_threads())
    os.environ.setdefault("OMP_NUM_THREADS", n)
    os.environ.setdefault("MKL_NUM_THREADS", n)
    try:
        with open("/proc/cpuinfo") as f:
            amd = "AuthenticAMD" in f.read(4096)
    except OSError:
        amd = False
    if amd:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    return {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_DEBUG_CPU_TYPE") if k in os.environ}

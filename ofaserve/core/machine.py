"""What machine a figure was measured on: recorded in every manifest and benchmark report."""
from __future__ import annotations

import os
import platform
from typing import Any

# The flags that decide how fast (and in which precisions) inference runs; the model name
# alone does not: one name covers CPUs with and without AVX-512.
SPEED_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"}


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(set(line.split(":", 1)[1].split()) & SPEED_FLAGS)
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
            "platform": platform.platform()}

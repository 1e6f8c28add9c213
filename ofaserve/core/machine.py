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


# oneDNN's instruction-set cap (OpenVINO and Paddle kernels obey most of it): a figure measured
# under one is not the CPU's own speed, so the record says so.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


# Set by ``benchmarks.records.simulated_cpu`` to the capability profile a run decided by:
# a figure made under it names that profile as well as the real CPU.
SIMULATED_CPU_VARIABLE = "OFASERVE_SIMULATED_CPU"


def isa_cap() -> str | None:
    return next((os.environ[v] for v in ISA_CAP_VARIABLES if os.environ.get(v)), None)


def describe(machine: dict[str, Any]) -> str:
    """One line for a report: CPU, cores, speed flags and any instruction-set cap."""
    flags = ", ".join(machine.get("cpu_flags") or []) or "none"
    cap = f"; oneDNN capped at {machine['isa_cap']}" if machine.get("isa_cap") else ""
    sim = f"; deciding as the simulated {machine['simulated_cpu']} CPU" if machine.get("simulated_cpu") else ""
    return f"{machine.get('cpu')} ({machine.get('cores')} cores; flags {flags}{cap}{sim})"


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
    info = {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
            "platform": platform.platform()}
    if cap := isa_cap():
        info["isa_cap"] = cap
    if os.environ.get(SIMULATED_CPU_VARIABLE):
        info["simulated_cpu"] = os.environ[SIMULATED_CPU_VARIABLE]
    return info

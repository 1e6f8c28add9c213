"""What this CPU can run fast, asked once, in one place.

Every decision that depends on the CPU (which precisions ``--precision auto`` times,
refusing bf16 where it would silently run f32, skipping the INT8 variant where it runs
slower than f32, the export's bf16 record, ``serve``'s warning on another CPU) reads
``current()``, never ``/proc/cpuinfo`` or OpenVINO directly. Tests replace ``current`` to
run every branch under the capability sets of the CPUs this project meets
(``PROFILES``), whatever CPU runs them.

Not copied into model repositories (``runtimes.py`` is).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ofaserve.core.machine import cpu_flags
from ofaserve.runtime import runtimes

# Flags whose INT8 dot-product instructions make OpenVINO's INT8 kernels beat f32; without
# any of them NNCF's INT8 IR measured slower than f32 (benchmarks/results/).
INT8_FAST_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuCapabilities:
    """``flags``: the speed-relevant ``/proc/cpuinfo`` flags (``core.machine.SPEED_FLAGS``);
    ``openvino``: OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` (``BF16``, ``INT8``, ...)."""
    flags: frozenset[str]
    openvino: tuple[str, ...]

    @property
    def bf16(self) -> bool:
        """bf16 executes (OpenVINO compiles a bf16 request without it and runs f32)."""
        return "BF16" in self.openvino

    @property
    def int8(self) -> bool:
        return "INT8" in self.openvino

    @property
    def fast_int8(self) -> bool:
        """INT8 dot products in hardware (VNNI or AMX): where INT8 can beat f32."""
        return any(f in self.flags for f in INT8_FAST_FLAGS)

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    def describe(self) -> str:
        """OpenVINO's capability names, as the product's messages quote them."""
        return " ".join(self.openvino)


def detect() -> CpuCapabilities:
    return CpuCapabilities(frozenset(cpu_flags()), tuple(runtimes.openvino_capabilities()))


@functools.lru_cache(maxsize=1)
def _detected() -> CpuCapabilities:
    return detect()


def current() -> CpuCapabilities:
    """This machine's capabilities (detected once per process)."""
    return _detected()


# The CPUs this machine kind has come with (flags as /proc/cpuinfo lists them, capabilities
# as OpenVINO 2026.4 reports them on each).
PROFILES: dict[str, CpuCapabilities] = {
    "avx2": CpuCapabilities(frozenset({"avx2"}), ("FP32", "INT8", "BIN", "EXPORT_IMPORT")),
    "avx512_bf16_vnni": CpuCapabilities(frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}),
                                        ("BF16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT")),
    "amx": CpuCapabilities(frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
                                      "amx_int8"}),
                           ("BF16", "WINOGRAD", "FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT")),
}

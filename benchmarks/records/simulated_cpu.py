"""Run one `ofaserve` command as if this CPU had the capabilities of another CPU this project
meets (``ofaserve.runtime.capabilities.PROFILES``), with oneDNN's kernels capped to that CPU's
instruction set: how the product decides there (precision auto's candidates, the bf16 refusal,
the INT8 skip), emulated on the machine at hand.

    python -m benchmarks.records.simulated_cpu --profile avx2 -- repo --export_dir E --output R

An emulation, not that CPU: OpenVINO keeps some kernels above the cap (its layer norms stay
AVX-512 under an AVX2 cap), the clock, caches and memory are this machine's, and under an
AVX2 cap OpenVINO still reports BF16 but cannot compile bf16 (a compile without a precision
hint included; the product's runners always pin one). A figure made this way is recorded as
such (``machine.isa_cap`` and ``machine.simulated_cpu`` in every report) and never stands for
a measurement on the CPU it emulates. Child processes (a server the command starts) inherit
the cap and the profile's name, not the simulated capabilities.
"""
from __future__ import annotations

import argparse
import os
import sys

from ofaserve.core.machine import ISA_CAP_VARIABLES, SIMULATED_CPU_VARIABLE

# oneDNN's ONEDNN_MAX_CPU_ISA name for each profile's instruction set.
ISA_CAP = {"avx2": "AVX2", "avx512_bf16_vnni": "AVX512_CORE_BF16", "amx": "AVX512_CORE_AMX"}


def simulate(profile: str) -> None:
    """From here on, this process decides as a ``profile`` CPU and caps oneDNN to its ISA
    (before OpenVINO or Paddle load: both read the cap once); what this process and its
    children record as their machine names the profile."""
    from ofaserve.runtime import capabilities

    caps = capabilities.PROFILES[profile]
    for variable in ISA_CAP_VARIABLES:
        os.environ[variable] = ISA_CAP[profile]
    os.environ[SIMULATED_CPU_VARIABLE] = profile
    capabilities.current = lambda: caps


def main(argv: list[str] | None = None) -> int:
    from ofaserve.runtime.capabilities import PROFILES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", required=True, choices=sorted(PROFILES), help="the CPU whose capabilities to take")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="the ofaserve command and its flags, after `--` (e.g. -- repo --export_dir E --output R)")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the ofaserve command after `--`, e.g. -- repo --export_dir E --output R")
    simulate(args.profile)
    from ofaserve.cli import main as ofaserve_main

    return ofaserve_main(command)


if __name__ == "__main__":
    sys.exit(main())

"""Run `make test` the way CI does and record it: a clean clone of HEAD, empty installer
caches, wall time including the install, pytest's outcome counts and its own duration.

    python -m benchmarks.records.test_time --output benchmarks/results/test_run_<cpu>.json

Uncommitted changes are not measured (the clone is of HEAD). The screen output is kept
next to the record (``--screen``), so a failure can be read back.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# pytest's closing line: "==== <count> <outcome>, ... in <seconds>s (<h:mm:ss>) ===="
SUMMARY = re.compile(r"^=+ (?P<counts>.*?) in (?P<seconds>[0-9.]+)s\b.*=+$")
OUTCOMES = ("passed", "failed", "errors", "error", "skipped", "xfailed", "xpassed", "deselected")


def pytest_summary(screen: str) -> dict:
    """Outcome counts and seconds from pytest's closing line (empty when there is none)."""
    for line in reversed(screen.splitlines()):
        m = SUMMARY.match(line.strip())
        if m:
            counts = {}
            for part in m["counts"].split(", "):
                n, _, what = part.partition(" ")
                if what in OUTCOMES and n.isdigit():
                    counts["errors" if what == "error" else what] = int(n)
            return {"counts": counts, "pytest_s": float(m["seconds"])}
    return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="where the record goes (name it for the CPU)")
    p.add_argument("--screen", default=None,
                   help="where the run's screen output goes (default: next to --output, .screen.txt)")
    p.add_argument("--keep", default=None, help="clone into this folder and keep it (default: a temporary one)")
    p.add_argument("--simulated_cpu", default=None,
                   help="run the suite with OFASERVE_TEST_CPU set to this capabilities profile (e.g. avx2: every "
                        "in-process decision as on an AVX2-only CPU); recorded as simulated_cpu")
    args = p.parse_args(argv)
    from benchmarks.records.install_time import head_commit, scratch_clone, timed_make
    from ofaserve.core.files import write_json
    from ofaserve.core.machine import machine_info

    out = Path(args.output)
    screen = Path(args.screen) if args.screen else out.with_suffix(".screen.txt")
    commit = head_commit()
    with scratch_clone(args.keep, "ofaserve-test-") as (clone, env):
        if args.simulated_cpu:
            env = {**env, "OFASERVE_TEST_CPU": args.simulated_cpu}
        code, wall = timed_make(clone, env, ["test"], screen)
    summary = pytest_summary(screen.read_text(errors="replace"))
    record = {"what": "make test on a clean clone (commit in 'commit'), empty installer caches, as .ci/run runs it: "
                      "wall time including the install, pytest's outcome counts and duration",
              "command": "python -m benchmarks.records.test_time (git clone <main> && cd <clone> && make test)",
              "commit": commit, "exit_code": code, "wall_s_including_install": round(wall, 1), **summary,
              "install_s": round(wall - summary["pytest_s"], 1) if summary else None, "machine": machine_info()}
    if args.simulated_cpu:
        record["simulated_cpu"] = args.simulated_cpu
    write_json(out, record)
    print(f"make test: exit {code}, {wall:.0f} s including the install; {summary.get('counts')}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

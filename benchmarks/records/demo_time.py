"""Run `make demo` the way a new user does and record it: a clean clone of HEAD, empty
installer caches, wall time including the install, what the budget measured and cut, the
accuracy table and the latency figures the demo printed.

    python -m benchmarks.records.demo_time --output benchmarks/results/demo_run.json

Uncommitted changes are not measured (the clone is of HEAD). The screen output of the run
is kept next to the record (``--screen``) so what the user saw can be read back.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

def _accuracy(results: dict) -> dict:
    return {"teacher": {k: results["teacher"][k]["accuracy"] for k in ("dev", "test")},
            "widths": {w: {k: r[k]["accuracy"] for k in ("dev", "test")} for w, r in results["widths"].items()},
            "majority_class": results.get("majority_class")}


def record_from(clone: Path, commit: str, wall_s: float, make_args: list[str]) -> dict:
    """The record of a finished `make demo` in ``clone``."""
    summary = json.loads((clone / "runs/demo/summary.json").read_text())
    manifest = json.loads((clone / "runs/demo/compress/manifest.json").read_text())
    demo_s = summary["timings"]["total_s"]
    latency = [{k: r.get(k) for k in ("model", "workload", "concurrency", "runtime", "n", "p50", "p90", "p99", "mean",
                                      "throughput_sps")} for r in summary["benchmark"]["latency"]["triton_grpc"]]
    return {"what": "make demo on a clean clone of main (commit in 'commit'), empty installer caches: wall time "
                    "including the install, what each stage used and cut, the accuracy table it printed, its "
                    "latency figures",
            "command": "python -m benchmarks.records.demo_time (git clone <main> && cd <clone> && make demo"
                       + "".join(f" {a}" for a in make_args) + ")",
            "commit": commit, "wall_s_including_install": round(wall_s, 1), "demo_s": demo_s,
            "install_s": round(wall_s - demo_s, 1), "budget": summary["budget"], "timings": summary["timings"],
            "accuracy": _accuracy(summary["compress"]["results"]),
            "compress_phases": {p: manifest["phases"][p].get("train") for p in ("teacher", "ofa")},
            "scoring": manifest.get("evaluation"), "latency": latency,
            "latency_ratios": summary["benchmark"]["latency"]["comparisons"], "machine": manifest["machine"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="benchmarks/results/demo_run.json", help="where the record goes")
    p.add_argument("--screen", default=None,
                   help="where the run's screen output goes (default: next to --output, .screen.txt)")
    p.add_argument("--make_args", default="", help="extra make arguments, e.g. \"INSTALLER=pip\"")
    p.add_argument("--keep", default=None, help="clone into this folder and keep it (default: a temporary one)")
    args = p.parse_args(argv)
    from benchmarks.records.install_time import head_commit, scratch_clone, timed_make
    from ofaserve.core.files import write_json

    out = Path(args.output)
    screen = Path(args.screen) if args.screen else out.with_suffix(".screen.txt")
    make_args = args.make_args.split()
    commit = head_commit()
    with scratch_clone(args.keep, "ofaserve-demo-") as (clone, env):
        code, wall = timed_make(clone, env, ["demo", *make_args], screen)
        if code:
            sys.exit(f"make demo failed (exit {code}) after {wall:.0f} s: see {screen}")
        record = record_from(clone, commit, wall, make_args)
    write_json(out, record)
    acc = record["accuracy"]
    print(f"make demo: {wall:.0f} s including a {record['install_s']:.0f} s install (demo {record['demo_s']:.0f} s); "
          f"teacher dev {acc['teacher']['dev']:.4f}; widths dev "
          + ", ".join(f"{w} {v['dev']:.4f}" for w, v in acc["widths"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time `make venv` on a clean clone with each installer, caches cold, and compare what
each installed (same packages at the same versions, or the record says which differ).

    python -m benchmarks.records.install_time --output benchmarks/results/install_time.json

Each run clones the repository's HEAD into a scratch folder, so uncommitted changes are
not measured. Takes ~4 minutes on 2 cores (pip ~2.5, uv ~1).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]  # benchmarks/records/ -> the checkout
TOOLING = {"pip", "setuptools", "wheel", "uv"}  # the installers themselves, not the project's packages


def _installed(venv_python: Path) -> dict[str, str]:
    out = subprocess.run([str(venv_python), "-m", "pip", "list", "--format", "json", "--exclude-editable"],
                         check=True, capture_output=True, text=True).stdout
    return {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(out)
            if p["name"].lower() not in TOOLING}


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()


def clean_clone(clone: Path, scratch: Path) -> dict[str, str]:
    """Clone HEAD into ``clone``; the environment of a first install there: uv's cache
    in ``scratch`` (empty), pip's off, as on a machine that never installed these wheels."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    return {**os.environ, "UV_CACHE_DIR": str(scratch / "uv_cache"), "PIP_NO_CACHE_DIR": "1"}


@contextlib.contextmanager
def scratch_clone(keep: str | None, prefix: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """(clone, environment) of ``clean_clone`` in a scratch folder removed afterwards; the
    clone goes to ``keep`` instead when given, and stays."""
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        clone = Path(keep) if keep else Path(scratch) / "clone"
        yield clone, clean_clone(clone, Path(scratch))


def timed_make(clone: Path, env: dict[str, str], make_args: list[str], screen: Path) -> tuple[int, float]:
    """(exit code, wall seconds) of ``make <make_args>`` in ``clone``, its output to ``screen``."""
    screen.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(screen, "w") as f:
        code = subprocess.run(["make", *make_args], cwd=clone, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return code, time.perf_counter() - t


def time_install(installer: str, scratch: Path) -> dict:
    clone = scratch / f"clone_{installer}"
    env = clean_clone(clone, scratch)
    t = time.perf_counter()
    r = subprocess.run(["make", "venv", f"INSTALLER={installer}"], cwd=clone, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"make venv INSTALLER={installer} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return {"installer": installer, "wall_s": round(wall, 1), "packages": _installed(clone / ".venv/bin/python")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="benchmarks/results/install_time.json", help="where the record goes")
    p.add_argument("--installers", default="pip,uv", help="comma-separated, in run order (default: pip,uv)")
    args = p.parse_args(argv)
    from ofaserve.core.machine import machine_info
    from ofaserve.core.files import write_json

    commit = head_commit()
    with tempfile.TemporaryDirectory(prefix="ofaserve-install-") as scratch:
        runs = [time_install(name, Path(scratch)) for name in args.installers.split(",")]
    ref = runs[0]["packages"]
    differ = {r["installer"]: sorted(k for k in set(ref) | set(r["packages"]) if ref.get(k) != r["packages"].get(k))
              for r in runs[1:]}
    record = {"what": "`make venv` (everything `make demo` and `make test` install) on a clean clone, per installer, "
                      "with empty uv and pip caches: wall seconds, and the packages that differ from the first "
                      "installer's (name or version; the installers themselves excluded)",
              "command": "python -m benchmarks.records.install_time", "commit": commit,
              "runs": [{"installer": r["installer"], "wall_s": r["wall_s"], "packages": len(r["packages"])}
                       for r in runs],
              "packages_differing_from_first": differ, "machine": machine_info()}
    write_json(Path(args.output), record)
    print(json.dumps({k: record[k] for k in ("runs", "packages_differing_from_first")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

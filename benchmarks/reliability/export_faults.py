"""`ofaserve export` interrupted by SIGINT / SIGTERM (the previous export must stay intact),
and the models the scenarios run on: the tiny compress + export, a real export if found."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import ExportManifest
from ofaserve.core.outputs import lock_path

from ofaserve.benchmarks.reliability.probes import ROOT, ofaserve_command, wait_until

REAL_EXPORT_CANDIDATES = ("runs/demo/export/w0.6667", "runs/demo/export/w67", "runs/full/export/w0.6667",
                          "runs/quick/export/w0.6667")


# =============================================================================== export
def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def temp_entries(out: Path) -> list[str]:
    """Entries next to ``out`` that the atomic writer makes (.NAME.tmp-*, .probe-*, .old-*).
    Not the lock file: a run that dies leaves it, holding nothing (the kernel drops the lock)."""
    return sorted(p.name for p in out.parent.iterdir()
                  if p.name.startswith(f".{out.name}.") and p.name != lock_path(out).name)


# Lines `ofaserve export --no_progress` itself logs as each phase starts or ends (the libraries'
# own lines are silenced), in the order it logs them: where the harness sends its signals.
EXPORT_PHASES = ("slicing the supernet", "sub model + static model written", "ONNX written",
                 "INT8 post-training quantization")


def export_command(compress_dir: Path, out: Path, width: float, extra: list[str] | None = None) -> list[str]:
    """`ofaserve export` of ``width`` from ``compress_dir`` into ``out``, as a user runs it without a terminal."""
    return ofaserve_command() + ["export", "--model_name_or_path", str(compress_dir), "--output_dir", str(out),
                                 "--width_mult", str(width), "--no_progress"] + (extra or [])


def interrupt_export(compress_dir: Path, out: Path, width: float, *, sig: int = signal.SIGINT,
                     delay_s: float = 1.0, after_line: str | None = None, timeout_s: float = 300,
                     extra: list[str] | None = None) -> dict[str, Any]:
    """Start `ofaserve export` into ``out`` (a previous good export) and send ``sig``
    ``delay_s`` after its temp folder appears (or after it logs a line containing
    ``after_line``); report exit, manifest sha, leftovers and the outcome."""
    before = sha256(out / "manifest.json")
    siblings = set(os.listdir(out.parent))
    cmd = export_command(compress_dir, out, width, extra)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL)
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def read():
        for line in iter(proc.stdout.readline, ""):
            lines.append((time.monotonic() - t0, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        appeared = wait_until(lambda: any(n.startswith(f".{out.name}.tmp-") for n in os.listdir(out.parent))
                              or proc.poll() is not None, timeout_s, 0.02)
        t_tmp = time.monotonic() - t0
        if after_line:
            appeared = wait_until(lambda: any(after_line in l for _, l in lines) or proc.poll() is not None,
                                  timeout_s, 0.02)
        if proc.poll() is not None or not appeared:
            raise RuntimeError(f"export never reached the signal point (exit {proc.poll()}): "
                               + " | ".join(l for _, l in lines[-3:]))
        time.sleep(delay_s)
        during = temp_entries(out)
        finished_before_signal = proc.poll() is not None
        t_sig = time.monotonic() - t0
        proc.send_signal(sig)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
            lines.append((time.monotonic() - t0, "[killed: did not exit within 120 s of the signal]"))
        reader.join(10)
        unchanged = sha256(out / "manifest.json") == before if (out / "manifest.json").is_file() else False
        loads = export_ok(out)
        after = [l for t, l in lines if t >= t_sig]
        done_before = any(l.startswith("exported width") for t, l in lines if t < t_sig)
        done_after = any(l.startswith("exported width") for l in after)
        if done_before:
            outcome = f"export had completed; signal during interpreter exit (exit {proc.returncode})"
        elif proc.returncode in (130, 128 + int(sig), -int(sig)) and unchanged and loads and not done_after:
            outcome = "interrupted, previous export intact"
        elif loads and not unchanged:  # a complete new export is in place, whatever was printed
            outcome = ("signal lost: the export completed and replaced the previous one" if proc.returncode == 0
                       else "signal acted only after the export had completed")
        elif unchanged and loads:
            last = next((l for l in reversed(after) if l.strip()), "")
            outcome = f"failed with exit {proc.returncode} ({last[:80]}), previous export intact"
        else:
            outcome = "BROKEN: output missing or incomplete"
        return {"signal": signal.Signals(sig).name, "after_line": after_line, "delay_s": delay_s,
                "temp_appeared_after_s": round(t_tmp, 2), "signal_after_s": round(t_sig, 2),
                "finished_before_signal": finished_before_signal, "exit_code": proc.returncode, "outcome": outcome,
                "last_line_before_signal": next((l for t, l in reversed(lines) if t < t_sig and l.strip()), "")[:160],
                "swallowed_in_callback": any("Exception ignored in" in l for l in after),
                "stderr_tail": [l for l in after if l.strip()][-1:],
                "temp_during": during, "temp_after": temp_entries(out),
                "new_siblings": sorted(set(os.listdir(out.parent)) - siblings),
                "manifest_unchanged": unchanged, "export_still_loads": loads}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def export_ok(out: Path) -> bool:
    try:
        m = ExportManifest.read(out)
        return all(m.artifact(out, k).is_file() for k in ("onnx", "tokenizer"))
    except Exception:
        return False


def run_export(compress_dir: Path, out: Path, width: float, extra: list[str] | None = None,
               timeout_s: float = 600) -> dict[str, Any]:
    cmd = export_command(compress_dir, out, width, extra)
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s, stdin=subprocess.DEVNULL)
    return {"exit_code": r.returncode, "wall_s": time.monotonic() - t0,
            "stderr_tail": r.stderr.strip().splitlines()[-3:], "temp_after": temp_entries(out)}


# =============================================================================== models
# The stages run as separate processes, as a user runs them: this harness measures what
# a process boundary (signals, exit codes, files left behind) does to them.
def tiny_export(compress_dir: Path, folder: Path) -> Path:
    """`ofaserve export` at width 0.75 of the tiny compress output."""
    out = folder / "tiny_export_w075"
    r = run_export(compress_dir, out, 0.75)
    if r["exit_code"] != 0:
        raise OfaserveError(f"tiny export failed (exit {r['exit_code']}): {r['stderr_tail']}")
    return out


def tiny_compress(folder: Path) -> Path:
    """The real compress stage on a tiny random-weight checkpoint (``ofaserve.testing``)."""
    cmd = [sys.executable, "-m", "ofaserve.testing", "tiny-compress", str(folder)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise OfaserveError(f"tiny compress failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-3:]}")
    return folder / "compress"


def find_real_export() -> Path | None:
    for rel in REAL_EXPORT_CANDIDATES:
        p = ROOT / rel
        if (p / "manifest.json").is_file():
            return p
    return None


def describe_export(export: Path, kind: str) -> dict[str, Any]:
    m = ExportManifest.read(export)
    return {"kind": kind, "path": str(export), "width_mult": m.width_mult, "model_type": m.model_type,
            "max_seq_length": m.max_seq_length, "vocab_size": m.vocab_size, "params": m.params.get("total"),
            "source": m.source}

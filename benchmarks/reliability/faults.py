"""Fault scenarios of `ofaserve serve` and Triton: a python stub SIGKILLed under load (Triton
alone and under the CLI), tritonserver SIGKILLed, a busy port, a port taken after the
launcher's check, and `ofaserve serve` itself SIGKILLed."""
from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from ofaserve.benchmarks.reliability.probes import ROOT, live_pids, ofaserve_command, processes_mentioning, shm_usage, stubs_of, wait_until, \
    zombies_of
from ofaserve.benchmarks.reliability.traffic import Traffic, summarize_traffic
from ofaserve.core.errors import OfaserveError
from ofaserve.serve import server as server_mod
from ofaserve.serve.server import TritonServer, free_port, port_in_use


# =============================================================================== ofaserve serve
class ServeCLI:
    """`ofaserve serve` as a subprocess, its output collected by reader threads."""

    def __init__(self, repo: Path, ports: dict[str, int], poll: float = 0.5, timeout: float = 180,
                 extra: list[str] | None = None):
        self.repo, self.ports, self.poll, self.timeout = Path(repo), ports, poll, timeout
        self.cmd = ofaserve_command() + [
            "serve", "--model_repository", str(self.repo), "--grpc_port", str(ports["grpc"]),
            "--http_port", str(ports["http"]), "--metrics_port", str(ports["metrics"]), "--poll", str(poll),
            "--timeout", str(timeout)] + (extra or [])
        self.proc: subprocess.Popen | None = None
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: "queue.Queue[str]" = queue.Queue()
        self.server_pid: int | None = None
        self.workdir: str | None = None
        self.stubs: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def _read(self, stream, sink: list[str], forward: bool) -> None:
        for line in iter(stream.readline, ""):
            sink.append(line)
            if forward:
                self._lines.put(line)
        stream.close()

    def start(self, wait_ready: bool = True, ready_timeout: float = 180) -> "ServeCLI":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL, cwd=ROOT)
        for stream, sink, fwd in ((self.proc.stdout, self.out, True), (self.proc.stderr, self.err, False)):
            threading.Thread(target=self._read, args=(stream, sink, fwd), daemon=True).start()
        if not wait_ready:
            return self
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith("server log:"):
                self.workdir = str(Path(line.split(":", 1)[1].strip()).parent)
                break
        if self.workdir is None:
            self.kill()
            raise RuntimeError(f"`ofaserve serve` never became ready (exit {self.proc.returncode}): "
                               + "".join(self.out[-5:] + self.err[-5:]))
        (server,) = [c for c in psutil.Process(self.proc.pid).children() if "tritonserver" in c.name()
                     or c.cmdline()[0].endswith("tritonserver")]
        self.server_pid = server.pid
        self.stubs = stubs_of(server.pid)
        return self

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    @property
    def stderr(self) -> str:
        time.sleep(0.05)  # let the reader thread drain
        return "".join(self.err)

    def leftovers(self) -> dict[str, Any]:
        """What this server left behind: live stubs / server, shm regions, its work dir."""
        pids = [s["pid"] for s in self.stubs] + ([self.server_pid] if self.server_pid else [])
        return {"live_processes": live_pids(pids),
                "processes_in_workdir": processes_mentioning(self.workdir) if self.workdir else [],
                "shm_regions": sorted(shm_usage(s["shm"] for s in self.stubs)),
                "workdir_exists": bool(self.workdir and os.path.exists(self.workdir))}

    def kill(self) -> None:
        """Last resort: stop the CLI, then anything it left (only processes/segments it made)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(30) is None:
                self.proc.kill()
                self.wait(10)
        if self.server_pid:
            for pid in live_pids([self.server_pid] + [s["pid"] for s in self.stubs]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for s in self.stubs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/{s['shm']}")
        if self.workdir and os.path.isdir(self.workdir) and Path(self.workdir).name.startswith("ofaserve-triton-"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def free_ports() -> dict[str, int]:
    return {"grpc": free_port(), "http": free_port(), "metrics": free_port()}


# =============================================================================== kills, ports
def _watch_after_kill(url: str, server_pid: int, model: str, stub: dict[str, Any], t_kill: float, observe_s: float,
                      done: Callable[[], bool] = lambda: False, readiness: Callable[[], dict] | None = None
                      ) -> list[dict[str, Any]]:
    """Every 0.25 s for ``observe_s`` (or until ``done()``): stub count and Triton's own readiness."""
    import tritonclient.grpc as grpcclient
    triton = grpcclient.InferenceServerClient(url)
    timeline = []
    try:
        while time.monotonic() < t_kill + observe_s:
            pids = [s["pid"] for s in stubs_of(server_pid) if s["model"] == stub["model"]]
            row: dict[str, Any] = {"t": round(time.monotonic() - t_kill, 2), "stubs": len(pids),
                                   "new_stub": any(p != stub["pid"] for p in pids), "zombies": zombies_of(server_pid)}
            with contextlib.suppress(Exception):
                row["triton_server_ready"] = triton.is_server_ready(client_timeout=2)
                row["triton_encoder_ready"] = triton.is_model_ready(stub["model"], client_timeout=2)
                row["triton_ensemble_ready"] = triton.is_model_ready(model, client_timeout=2)
            if readiness is not None:
                with contextlib.suppress(Exception):
                    r = readiness()
                    row["ofaserve_encoder_ready"], row["ofaserve_ensemble_ready"] = r[stub["model"]], r[model]
            timeline.append(row)
            if done():
                break
            time.sleep(0.25)
    finally:
        triton.close()
    return timeline


def _thin(rows: list[dict[str, Any]], n: int = 12) -> list[dict[str, Any]]:
    """At most ~n rows, always keeping the first, the last and every change of state."""
    keep, last = [], None
    for i, r in enumerate(rows):
        state = {k: v for k, v in r.items() if k != "t"}
        if i == 0 or i == len(rows) - 1 or state != last:
            keep.append(r)
        last = state
    return keep[:n] + (keep[-1:] if len(keep) > n else [])


def stub_kill_triton(repo: Path, model: str, batches: list[list[str]], *, workers: int = 4, timeout_s: float = 10,
                     warm_s: float = 1.5, observe_s: float = 20) -> dict[str, Any]:
    """What Triton 2.51 itself does when the encoder stub dies under load (no watchdog):
    does it restart the stub, what do its health endpoints say, how do requests end."""
    p = free_ports()
    with TritonServer(repo, grpc_port=p["grpc"], http_port=p["http"], metrics_port=p["metrics"]) as srv:
        (enc,) = [s for s in stubs_of(srv.process.pid) if s["model"] == f"{model}_encoder"][:1]
        with Traffic(srv.grpc_url, model, batches, workers, timeout_s) as traffic:
            time.sleep(warm_s)
            t_kill = time.monotonic()
            os.kill(enc["pid"], signal.SIGKILL)
            timeline = _watch_after_kill(srv.grpc_url, srv.process.pid, model, enc, t_kill, observe_s,
                                         readiness=srv.models_ready)
            stuck = traffic.stop(timeout_s + 5)
        t_stop = time.monotonic()
        code = srv.stop()
        stop_s = time.monotonic() - t_stop
    return {"client_timeout_s": timeout_s, "workers": workers, "observed_s": observe_s,
            "killed": enc["instance"], "traffic": summarize_traffic(traffic.log, t_kill),
            "sent": traffic.sent, "answered": len(traffic.log), "stuck_workers": stuck,
            "stub_restarted": any(r["new_stub"] for r in timeline), "timeline": _thin(timeline),
            "stop_exit_code": code, "stop_s": stop_s}


def stub_kill_under_load(repo: Path, model: str, batches: list[list[str]], *, workers: int = 4,
                         timeout_s: float = 10, warm_s: float = 1.5, observe_s: float = 15,
                         poll: float = 0.5) -> dict[str, Any]:
    """SIGKILL the encoder stub of ``model`` while `ofaserve serve` is under load."""
    cli = ServeCLI(repo, free_ports(), poll=poll)
    report: dict[str, Any] = {"client_timeout_s": timeout_s, "workers": workers, "cli_poll_s": poll}
    try:
        cli.start()
        (enc,) = [s for s in cli.stubs if s["model"] == f"{model}_encoder"][:1]
        with Traffic(cli.url, model, batches, workers, timeout_s) as traffic:
            time.sleep(warm_s)
            t_kill = time.monotonic()
            os.kill(enc["pid"], signal.SIGKILL)
            timeline = _watch_after_kill(cli.url, cli.server_pid, model, enc, t_kill, observe_s,
                                         done=lambda: cli.proc.poll() is not None)
            t_exit = time.monotonic() if cli.proc.poll() is not None else None
            stuck = traffic.stop(timeout_s + 5)
        code = cli.wait(30)
        report.update({
            "killed": {"pid": enc["pid"], "instance": enc["instance"]},
            "traffic_until_cli_exit": summarize_traffic(traffic.log, t_kill, t_exit),
            "sent": traffic.sent, "answered": len(traffic.log), "stuck_workers": stuck,
            "stub_restarted": any(r["new_stub"] for r in timeline), "timeline": _thin(timeline),
            "cli_exit_code": code, "cli_exit_after_s": None if t_exit is None else t_exit - t_kill,
            "cli_stderr": cli.stderr.strip()[-600:],
        })
        wait_until(lambda: not cli.leftovers()["live_processes"], 10)
        report["leftovers"] = cli.leftovers()
        return report
    finally:
        cli.kill()


def kill_server(cli: ServeCLI, sig: int = signal.SIGKILL, exit_timeout: float = 60) -> dict[str, Any]:
    """Send ``sig`` to the tritonserver under a started `ofaserve serve`: exit code,
    reason, what is left (processes, /dev/shm regions, work dir)."""
    t0 = time.monotonic()
    os.kill(cli.server_pid, sig)
    code = cli.wait(exit_timeout)
    took = time.monotonic() - t0
    wait_until(lambda: not cli.leftovers()["live_processes"], 10)
    return {"signal": signal.Signals(sig).name, "cli_exit_code": code, "cli_exit_after_s": took,
            "cli_poll_s": cli.poll, "cli_stderr": cli.stderr.strip()[-600:], "stubs_before": len(cli.stubs),
            "leftovers": cli.leftovers()}


def server_kill_under_cli(repo: Path, poll: float = 0.5, sig: int = signal.SIGKILL) -> dict[str, Any]:
    cli = ServeCLI(repo, free_ports(), poll=poll)
    try:
        return kill_server(cli.start(), sig)
    finally:
        cli.kill()


def busy_port_attempts(repo: Path, running: ServeCLI) -> dict[str, Any]:
    """A second `ofaserve serve` reusing each of a running server's ports in turn."""
    out = {}
    for proto in ("grpc", "http", "metrics"):
        ports = free_ports()
        ports[proto] = running.ports[proto]
        second = ServeCLI(repo, ports, timeout=60)
        t0 = time.monotonic()
        try:
            second.start(wait_ready=False)
            code = second.wait(90)
            out[proto] = {"exit_code": code, "after_s": time.monotonic() - t0,
                          "stderr": second.stderr.strip()[-300:]}
        finally:
            second.kill()
    return out


def port_race(repo: Path) -> dict[str, Any]:
    """A port taken AFTER the launcher's check (a race): what Triton 2.51 itself does.

    Bypasses serve.server.port_in_use for the measurement only."""
    out = {}
    original = server_mod.port_in_use
    server_mod.port_in_use = lambda host, port: False
    try:
        for proto in ("grpc", "http", "metrics"):
            import socket
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                ports = free_ports()
                ports[proto] = sock.getsockname()[1]
                srv = server_mod.TritonServer(repo, grpc_port=ports["grpc"], http_port=ports["http"],
                                              metrics_port=ports["metrics"])
                t0 = time.monotonic()
                try:
                    srv.start(timeout=90)
                    alive_1s = wait_until(lambda: not srv.is_running(), 3) is False
                    out[proto] = {"start_returned": True, "after_s": time.monotonic() - t0,
                                  "still_running_3s_later": alive_1s,
                                  "exit_code": None if srv.is_running() else srv.process.returncode}
                except OfaserveError as e:
                    out[proto] = {"start_returned": False, "after_s": time.monotonic() - t0, "error": str(e)[:300]}
                finally:
                    srv.stop()
    finally:
        server_mod.port_in_use = original
    return out


def cli_killed(repo: Path, wait_s: float = 5) -> dict[str, Any]:
    """SIGKILL `ofaserve serve` itself: does its Triton outlive it?"""
    cli = ServeCLI(repo, free_ports())
    try:
        cli.start()
        cli.proc.kill()
        cli.wait(10)
        time.sleep(wait_s)
        left = cli.leftovers()
        return {"server_alive_5s_after": cli.server_pid in left["live_processes"],
                "stubs_alive_5s_after": len([p for p in left["live_processes"] if p != cli.server_pid]),
                "shm_regions_left": len(left["shm_regions"]), "ports_still_bound": port_bound(cli.ports["grpc"])}
    finally:
        cli.kill()


def port_bound(port: int) -> bool:
    return port_in_use("127.0.0.1", port)

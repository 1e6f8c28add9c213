"""Reliability on the REAL Triton 2.51 bundled with nvidia-pytriton, on the tiny export
(tests/conftest.py ``tiny_export_dir``): load, bad input concurrent with good traffic,
a killed stub and a killed server under `ofaserve serve`, busy ports, an interrupted
`ofaserve export`, and the Kubernetes manifests of serve/deploy.

Reduced counts of `python -m ofaserve.benchmarks.reliability` (which records the full runs in
benchmarks/results/reliability.md). Every wait is bounded; every server is stopped by a
finalizer, and anything a failed test leaves (stubs, /dev/shm regions) is removed.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from ofaserve.benchmarks.reliability import export_faults, faults, memory, probes, traffic
from ofaserve.core.manifests import read_manifest
from ofaserve.serve.repository import build_repository
from ofaserve.serve.server import TritonServer

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parent.parent / "serve" / "deploy"
# What a client may see while a fault is handled: each names its cause (no timeouts).
CLEAR_ERRORS = (r"Stub process '.*' is not healthy|Server is stopping|unknown model|no available versions|"
                r"is not ready|not found|failed to connect|Connection refused|Connection reset|Stream removed|"
                r"Socket closed|GOAWAY|Broken pipe|CANCELLED")


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def repo(tiny_export_dir, tmp_path_factory):
    """cpu repository of the tiny export: (path, ensemble name, repo manifest)."""
    out = tmp_path_factory.mktemp("reliability") / "model_repository"
    # fp32 pinned: what is measured here does not depend on the precision, and choosing one
    # (precision auto) times every candidate for its whole budget
    manifest = build_repository([tiny_export_dir], out, target="cpu", precision="fp32").to_dict()
    (model,) = manifest["models"]
    return out, model, manifest


@pytest.fixture(scope="module")
def server(repo):
    srv = TritonServer(repo[0], **{f"{k}_port": v for k, v in faults.free_ports().items()})
    srv.start(timeout=180)
    yield srv
    srv.stop()


@pytest.fixture
def cli(repo):
    """A factory of `ofaserve serve` subprocesses, all killed (with what they left) at the end."""
    started: list[faults.ServeCLI] = []

    def start(poll: float = 0.5) -> faults.ServeCLI:
        c = faults.ServeCLI(repo[0], faults.free_ports(), poll=poll)
        started.append(c)
        return c.start(ready_timeout=180)

    yield start
    for c in started:
        c.kill()


@pytest.fixture(scope="module")
def texts():
    return traffic.dev_sentences(128)


def _clean(leftovers: dict) -> bool:
    return (not leftovers["live_processes"] and not leftovers["processes_in_workdir"]
            and not leftovers["shm_regions"] and not leftovers["workdir_exists"])


# ------------------------------------------------------------------------------ load
def test_load_every_request_answered_memory_stable(server, repo, texts):
    n = 400
    r = traffic.run_load(server.grpc_url, repo[1], server.process.pid, texts, n_requests=n, concurrency=8,
                     batch_size=4, timeout_s=30, sample_interval=0.05)
    assert r["sent"] == n and r["unsent"] == 0
    assert r["balanced"] and r["lost"] == 0
    assert r["errors"] == 0 and r["ok"] == n, r["error_examples"]
    mem = r["memory"]
    assert mem["n_samples"] >= 3
    assert mem["rss_after_warmup_mib"] > 50  # really measured tritonserver + 3 stubs
    assert mem["growth_after_warmup_mib"] < 32, mem
    assert mem["shm_bytes_end"] == mem["shm_bytes_start"], mem  # regions did not grow under ordinary load
    assert r["latency_ms"]["max"] < 30_000
    assert all(server.models_ready().values())


# ------------------------------------------------------------------------------ memory growth
def test_memory_growth_within_limit_and_the_leaking_control_exceeds_it(repo, texts, tmp_path):
    """Triton's L0_memory_growth in small: the repository's servers stay within the growth
    limit after the warm-up half; a copy whose encoder keeps memory per request goes over
    it under the same load (or the check could not fail); the repository itself is untouched."""
    path, model, _ = repo
    encoder_py = path / f"{model}_encoder" / "1" / "model.py"
    original = encoder_py.read_bytes()
    r = memory.memory_growth_check(path, model, texts, tmp_path, n_requests=2000, concurrency=8, batch_size=4)
    n, c = r["normal"], r["control"]
    assert r["every_request_answered"], (n["error_examples"], c["error_examples"])
    assert n["samples_after_warmup"] >= 3 and c["samples_after_warmup"] >= 3
    assert n["rss_after_warmup_mib"] > 50  # tritonserver + its stubs, really measured
    assert n["within_limit"] and n["growth_mib"] < r["limit_mib"], n
    assert c["exceeded_limit"] and c["growth_mib"] > r["limit_mib"], c
    enc = f"{model}_encoder"  # the leak shows where it is: in the encoder's stub
    assert max(c["per_process_growth_mib"], key=c["per_process_growth_mib"].get).startswith(enc), c
    assert r["ok"]
    assert encoder_py.read_bytes() == original
    assert "_KEPT_FOR_THE_CONTROL" in (tmp_path / f"{path.name}_leaking" / enc / "1" / "model.py").read_text()


def test_memory_growth_record_is_the_rendering_of_its_json():
    """benchmarks/results/memory_growth.md holds what its JSON renders to (no figure by hand),
    and the recorded check passed with its control over the limit."""
    from ofaserve.benchmarks.reliability.report import to_markdown

    record = probes.ROOT / "benchmarks" / "results" / "memory_growth.json"
    r = json.loads(record.read_text())
    assert to_markdown(r) == record.with_suffix(".md").read_text()
    (g,) = r["memory_growth"]
    assert g["ok"] and g["normal"]["within_limit"] and g["control"]["exceeded_limit"]
    assert r["machine"]["cpu"] and "--scenarios memory" in r["command"]


# ------------------------------------------------------------------------------ bad input
def test_bad_input_concurrent_with_good_traffic(server, repo, texts, tiny_export_dir):
    path, model, manifest = repo
    export = read_manifest(tiny_export_dir, "export")
    good = [texts[i:i + 4] for i in range(0, 48, 4)]
    reference = traffic.answers(server.grpc_url, model, good)  # the idle server's answers
    (info,) = manifest["models"].values()
    cases = traffic.bad_input_cases(manifest["max_batch_size"], export["max_seq_length"], export["vocab_size"],
                                    info["text_limits"]["max_text_bytes"])
    assert len(cases) >= 17
    case_ref = traffic.case_references(server.grpc_url, model, cases)
    r = traffic.mixed_traffic(server.grpc_url, model, good, reference, cases, case_ref, good_workers=3,
                          bad_workers=2, good_rounds=4, bad_rounds=2, timeout_s=20)
    assert r["hung_workers"] == 0
    g = r["good"]
    assert g["sent"] == r["good_expected"] and g["ok"] == g["sent"], g
    assert g["errors"] == 0 and g["mismatches"] == 0, g
    assert g["max_abs_diff"] <= 1e-4
    problems = {name: b["unexpected"][:2] for name, b in r["bad"].items()
                if b["unexpected"] or b["as_expected"] != r["bad_expected_per_case"]}
    assert not problems, problems
    assert max(b["max_latency_s"] for b in r["bad"].values()) < 20
    assert all(server.models_ready().values())
    # and the server still gives the idle answers afterwards
    after = traffic.answers(server.grpc_url, model, good[:3])
    assert all(np.abs(a - b).max() <= 1e-4 for a, b in zip(after, reference[:3]))


# ------------------------------------------------------------------------------ faults
def test_encoder_stub_killed_under_load(repo, texts):
    """Clients get clear errors (no hangs, nothing lost); `ofaserve serve` notices the
    dead model, says which one, exits 2 and leaves no stub, segment or work dir."""
    path, model, _ = repo
    batches = [texts[i:i + 4] for i in range(0, 64, 4)]
    r = faults.stub_kill_under_load(path, model, batches, workers=4, timeout_s=10, warm_s=1.0, observe_s=30, poll=0.5)
    t = r["traffic_until_cli_exit"]
    assert r["cli_exit_code"] == 2, r["cli_stderr"]
    assert "model(s) no longer ready" in r["cli_stderr"] and f"{model}_encoder" in r["cli_stderr"]
    assert r["cli_exit_after_s"] is not None and r["cli_exit_after_s"] < 15
    assert r["stuck_workers"] == 0 and r["answered"] == r["sent"]
    assert t["before"] > 0 and t["before_errors"] == 0          # it was serving before the kill
    assert t["timeouts"] == 0 and t["max_latency_s"] < r["client_timeout_s"]
    errors = {k: v for k, v in {**t["in_flight_outcomes"], **t["after_outcomes"]}.items() if k != "ok"}
    assert errors, t  # the fault is visible to clients
    unclear = [k for k in errors if not re.search(CLEAR_ERRORS, k)]
    assert not unclear, unclear
    assert _clean(r["leftovers"]), r["leftovers"]


def _python_instances(repo: Path) -> int:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    configs = [text_format.Parse(c.read_text(), mc.ModelConfig()) for c in repo.glob("*/config.pbtxt")]
    return sum(g.count for c in configs if c.backend == "python" for g in c.instance_group)


def test_busy_ports_then_killed_server(cli, repo):
    """A second `ofaserve serve` on any busy port fails at once with the port in the
    message; SIGKILL of tritonserver makes `ofaserve serve` exit 2 with the reason and
    clean up the orphaned stubs and their /dev/shm regions."""
    first = cli(poll=0.5)
    busy = faults.busy_port_attempts(repo[0], first)
    for proto, b in busy.items():
        assert b["exit_code"] == 2, (proto, b)
        assert f"{proto} port {first.ports[proto]}" in b["stderr"] and "already in use" in b["stderr"], b
        assert b["after_s"] < 30
    assert first.proc.poll() is None  # the first server is untouched
    n = _python_instances(repo[0])  # one stub, and one /dev/shm region, per python-backend instance
    assert len(first.stubs) == n and all(s["shm"].startswith(probes.SHM_PREFIX) for s in first.stubs)
    assert len(probes.shm_usage(s["shm"] for s in first.stubs)) == n

    k = faults.kill_server(first, signal.SIGKILL, exit_timeout=30)
    assert k["cli_exit_code"] == 2, k
    assert "tritonserver exited with code -9" in k["cli_stderr"], k["cli_stderr"]
    assert k["cli_exit_after_s"] < 15
    assert _clean(k["leftovers"]), k["leftovers"]


def test_killed_serve_cli_takes_its_server_down(cli):
    """SIGKILL of `ofaserve serve` (OOM killer, kill -9): its Triton must not outlive it
    (parent-death signal), nor keep the ports, stubs or /dev/shm regions."""
    c = cli(poll=0.5)
    c.proc.kill()
    c.wait(10)
    assert probes.wait_until(lambda: not c.leftovers()["live_processes"], 30), c.leftovers()
    assert probes.wait_until(lambda: not c.leftovers()["shm_regions"], 10), c.leftovers()
    assert not faults.port_bound(c.ports["grpc"]) and not faults.port_bound(c.ports["http"])


# ------------------------------------------------------------------------------ interrupted export
@pytest.fixture
def previous_export(tiny_export_dir, tmp_path):
    """A good export at the output path, as a previous run left it."""
    out = tmp_path / "exports" / "w075"
    shutil.copytree(tiny_export_dir, out)
    return out


def test_interrupted_export_keeps_previous_export(tiny_compress_dir, previous_export):
    """SIGINT, then SIGTERM, mid-export (during the ONNX conversion): the previous export
    stays byte-identical, temp folders go (at the latest with the next run), and the
    next run succeeds."""
    out = previous_export
    width = float(read_manifest(out, "export")["width_mult"])
    original = export_faults.sha256(out / "manifest.json")
    for sig in (signal.SIGINT, signal.SIGTERM):
        r = export_faults.interrupt_export(tiny_compress_dir, out, width, sig=sig, delay_s=0.2,
                                 after_line="sub model + static model written", timeout_s=180)
        assert not r["finished_before_signal"] and r["temp_during"], r  # really interrupted mid-write
        assert r["outcome"].startswith(("interrupted", "killed")), r
        assert r["exit_code"] in (130, -int(sig), 128 + int(sig)), r
        assert r["manifest_unchanged"] and r["export_still_loads"], r
        assert export_faults.sha256(out / "manifest.json") == original
        if sig == signal.SIGINT:
            assert r["temp_after"] == [] and r["new_siblings"] == [], r
            assert any("unchanged" in l for l in r["stderr_tail"]), r
        # SIGTERM: a .NAME.tmp-PID-* folder may stay until the next run removes it

    n = export_faults.run_export(tiny_compress_dir, out, width, extra=["--no_precisions"], timeout_s=300)
    assert n["exit_code"] == 0, n["stderr_tail"]
    assert n["temp_after"] == [], n  # nothing left, including what a killed run left
    assert export_faults.sha256(out / "manifest.json") != original and export_faults.export_ok(out)


def test_export_logs_every_phase_the_harness_signals_at(tiny_compress_dir, tmp_path):
    """The export scenario sends its signals after lines the export logs; a phase whose line
    is gone (a library's line that the export silences) would end that scenario unrun."""
    import subprocess

    cmd = export_faults.export_command(tiny_compress_dir, tmp_path / "w075", 0.75, ["--no_int8_plain"])
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=export_faults.ROOT,
                       timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-2000:]
    at = [next((i for i, line in enumerate(r.stdout.splitlines()) if phase in line), None)
          for phase in export_faults.EXPORT_PHASES]
    assert None not in at, dict(zip(export_faults.EXPORT_PHASES, at))
    assert at == sorted(at), dict(zip(export_faults.EXPORT_PHASES, at))


# ------------------------------------------------------------------------------ deploy manifests
def _docs() -> list[dict]:
    yaml = pytest.importorskip("yaml")
    docs = []
    for f in sorted(DEPLOY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def test_deploy_manifests_parse_and_hang_together():
    docs = _docs()
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(kinds), list(kinds)
    assert all(d.get("apiVersion") and d.get("metadata", {}).get("name") for d in docs)
    dep, svc = kinds["Deployment"], kinds["Service"]
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] >= 2
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()

    (triton,) = [c for c in spec["containers"] if c["name"] == "triton"]
    assert re.match(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3$", triton["image"]), triton["image"]
    args = " ".join(triton.get("command", []) + triton.get("args", []))
    repo_arg = re.search(r"--model-repository=(\S+)", args).group(1)
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    assert repo_arg in mounts and "/dev/shm" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and _bytes(shm["sizeLimit"]) >= 64 << 20
    repo_volume = volumes[mounts[repo_arg]]
    assert ("persistentVolumeClaim" in repo_volume
            and repo_volume["persistentVolumeClaim"]["claimName"] == kinds["PersistentVolumeClaim"]["metadata"]["name"]
            ) or spec.get("initContainers")

    # clients reach gRPC and HTTP through the request-size proxy, which forwards to Triton's
    # loopback ports (tests/test_deploy_manifests.py checks the proxy itself)
    ports = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
    assert {"http", "grpc", "metrics"} <= set(ports)
    assert f"--metrics-port={ports['metrics']}" in args
    assert re.search(r"--http-port=\d+", args) and re.search(r"--grpc-port=\d+", args)
    assert "--strict-readiness=true" in args
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["readinessProbe"]["httpGet"]["port"] in ("http", ports["http"])
    live = triton["livenessProbe"]
    if "exec" in live:  # a script from a mounted ConfigMap: it must check /v2/health/live
        script = live["exec"]["command"][-1]
        mount = next(m for m in triton["volumeMounts"] if script.startswith(m["mountPath"] + "/"))
        cm_name = volumes[mount["name"]]["configMap"]["name"]
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name]
        live = cm["data"][script[len(mount["mountPath"]) + 1:]]
    assert "/v2/health/live" in json.dumps(live)
    assert triton["startupProbe"]
    req = triton["resources"]["requests"]
    assert req["cpu"] and _bytes(req["memory"]) >= 512 << 20
    # /dev/shm (medium Memory) counts against the memory limit: leave room for it
    assert _bytes(triton["resources"]["limits"]["memory"]) >= _bytes(req["memory"]) + _bytes(shm["sizeLimit"])
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert {"http", "grpc", "metrics"} <= set(svc_ports)
    assert all(svc_ports[n]["targetPort"] in (n, ports[n]) for n in ("http", "grpc", "metrics"))
    readme = (DEPLOY / "README.md").read_text()
    assert "--target xeon" in readme and "--target gpu" in readme and "/dev/shm" in readme


def _bytes(q: str | int) -> int:
    """Kubernetes quantity (Mi, Gi, M, G or plain bytes) in bytes."""
    q = str(q)
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for u, f in units.items():
        if q.endswith(u):
            return int(float(q[: -len(u)]) * f)
    return int(q)


def _liveness_check(tmp_path) -> Path:
    yaml = pytest.importorskip("yaml")
    (cm,) = [d for d in yaml.safe_load_all((DEPLOY / "triton.yaml").read_text())
             if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ofaserve-probes"]
    check = tmp_path / "check.py"
    check.write_text(cm["data"]["check.py"])
    return check


def _probe(check: Path, http_port: int, repository: Path, models: str):
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRITON_HTTP_PORT=str(http_port), OFASERVE_MODELS=models, PROBE_TIMEOUT_S="5",
               OFASERVE_MODEL_REPOSITORY=str(repository))
    return subprocess.run([sys.executable, str(check)], env=env, capture_output=True, text=True, timeout=30)


def test_liveness_check_catches_a_dead_stub(repo, tmp_path):
    """The manifest's liveness check passes on a healthy server and fails once one of the
    encoder's two stubs is dead, which Triton's own /v2/health/live does not report (and a
    single request can miss: it may reach the other instance)."""
    import os
    import urllib.request

    check = _liveness_check(tmp_path)
    path, model = tmp_path / "repo", repo[1]
    shutil.copytree(repo[0], path)  # its own path: the stubs of the module's server are not this one's
    ports = faults.free_ports()
    srv = TritonServer(path, grpc_port=ports["grpc"], http_port=ports["http"], metrics_port=ports["metrics"])
    try:
        srv.start(timeout=180)
        ok = _probe(check, ports["http"], path, model)
        assert ok.returncode == 0, ok.stderr
        encoders = [s for s in probes.stubs_of(srv.process.pid) if s["model"] == f"{model}_encoder"]
        assert len(encoders) == 2  # the queue policy's two instances
        os.kill(encoders[0]["pid"], signal.SIGKILL)
        assert probes.wait_until(lambda: not probes.live_pids([encoders[0]["pid"]]), 10)
        bad = _probe(check, ports["http"], path, model)
        assert bad.returncode == 1 and "not live" in bad.stderr, bad.stderr
        assert f"{model}_encoder: 1 of its 2 python backend stubs alive" in bad.stderr, bad.stderr
        # Why the probe counts stubs: Triton's own liveness still answers 200 with the stub
        # dead (urlopen raises for any error status, so this fails if Triton ever says otherwise).
        with urllib.request.urlopen(f"{srv.http_url}/v2/health/live", timeout=5) as r:
            assert r.status == 200
    finally:
        srv.stop()


def test_liveness_check_counts_a_full_queue_as_live(tiny_export_dir, tmp_path):
    """Under overload the probe's own request is refused for the full queue: the pod is busy,
    not dead, and the check says live (a restart would only add to the overload)."""
    check = _liveness_check(tmp_path)
    path = tmp_path / "repo"
    # a queue of one request of 64 rows: the flood below keeps it full
    (model,) = build_repository([tiny_export_dir], path, precision="fp32", max_queue_size=1).models
    ports = faults.free_ports()
    texts = [("a long and winding film " * 20)[:500]] * 64
    with TritonServer(path, grpc_port=ports["grpc"], http_port=ports["http"], metrics_port=ports["metrics"]) as srv:
        with traffic.Traffic(srv.grpc_url, model, [texts], workers=12, timeout_s=30):
            results = [_probe(check, ports["http"], path, model) for _ in range(10)]
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert any(r.stdout.startswith(f"busy: {model} refused the probe's request") for r in results), \
        [r.stdout for r in results]

"""The benchmark against a REAL Triton server on a tiny two-width model repository.

Checks the report's schema, that every request is accounted for (sent == ok + errors),
and that the latencies are measurements: positive, one per successful request, fitting in
the measured wall time, and matched one to one by Triton's own request counters.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REQUESTS = 6
CONCURRENCY = (1, 2)
SEQ_LEN = 16


def _fixture(request, name):
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return None


def _export_dirs(request, tmp_path: Path) -> list[Path]:
    """A full-width and a compressed export of the same tiny supernet (tests/conftest.py's
    ``tiny_compress_dir`` / ``tiny_export_dir``), else the serve tests' tiny builder."""
    compress_dir, compressed = _fixture(request, "tiny_compress_dir"), _fixture(request, "tiny_export_dir")
    if compress_dir is not None and compressed is not None:
        from ofaserve.export import export_subnet
        full = tmp_path / "export_w100"
        export_subnet(str(compress_dir), str(full), 1.0, progress=False)
        return [full, Path(compressed)]
    try:
        from tests.test_serve_export_stub import make_tiny_export
    except ImportError:
        pytest.skip("no tiny export fixtures and no tiny export builder available")
    full = make_tiny_export(tmp_path / "export_w100", 1.0)
    half = tmp_path / "export_w50"  # same weights, labelled 0.5: enough to test the tool
    shutil.copytree(full, half)
    manifest = json.loads((half / "manifest.json").read_text())
    manifest["width_mult"] = 0.5
    (half / "manifest.json").write_text(json.dumps(manifest))
    return [full, half]


@pytest.fixture
def tiny_bench_repository(request, tmp_path) -> Path:
    """Full width and a compressed width in one cpu repository (OpenVINO fp32 encoders)."""
    from ofaserve.serve.repository import build_repository

    repo = tmp_path / "repo"
    # fp32 pinned: the bench is tested here, not the precision choice (precision auto times
    # every candidate for its whole budget)
    build_repository(_export_dirs(request, tmp_path), repo, target="cpu", name="bert", precision="fp32")
    return repo


@pytest.fixture
def server(tiny_bench_repository):
    from ofaserve.serve.server import TritonServer, free_port

    ports = dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(tiny_bench_repository, **ports) as srv:  # __enter__ starts it
        yield srv


def test_bench_against_real_server(server, tiny_bench_repository, tmp_path, capsys):
    from ofaserve.benchmarks.run import main

    out = tmp_path / "bench"
    argv = ["--url", server.grpc_url, "--model_repository", str(tiny_bench_repository),
            "--requests", str(REQUESTS), "--concurrency", ",".join(map(str, CONCURRENCY)),
            "--warmup", "1", "--rounds", "2", "--seq_len", str(SEQ_LEN), "--real_text",
            "--baseline_requests", "4", "--output_dir", str(out), "--no_progress"]
    assert main(argv) == 0, capsys.readouterr().err

    rep = json.loads((out / "report.json").read_text())
    for key in ("schema_version", "date", "command", "argv", "machine", "versions", "server", "settings",
                "workloads", "models", "results", "baselines", "comparisons", "totals"):
        assert key in rep, key
    assert rep["argv"] == argv and rep["machine"]["cores"] >= 1 and rep["machine"]["cpu"]
    assert rep["server"]["version"] and rep["versions"]["tritonclient"]
    models = list(rep["models"])
    assert len(models) == 2 and models[0] == "bert_w100"          # discovered, full width first
    small = models[1]
    assert rep["models"]["bert_w100"]["width"] == 1.0 and 0 < rep["models"][small]["width"] < 1.0
    assert len(rep["results"]) == 2 * 2 * len(CONCURRENCY)

    for r in rep["results"]:
        acc = r["accounting"]
        assert acc["sent"] == acc["ok"] + acc["errors"] == REQUESTS, r["model"]
        assert acc["errors"] == 0, acc
        lat = r["latencies_ms"]
        assert len(lat) == acc["ok"] == r["latency_ms"]["n"]
        assert all(x > 0 for x in lat)
        s = r["latency_ms"]
        assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
        # measured, not typed: the latencies fit in the measured wall time of their chunks ...
        assert sum(lat) / 1e3 <= r["concurrency"] * r["wall_s"] * 1.05
        assert max(lat) / 1e3 <= max(r["chunk_wall_s"]) * 1.05 and r["wall_consistent"]
        assert r["throughput_sps"] == pytest.approx(acc["ok"] * 16 / r["wall_s"])
        # ... and Triton counted exactly the measured requests (warmup excluded by the deltas)
        called = r["server_side"][r["infer_model"]]
        assert called["requests"] == acc["ok"], called
        if r["workload"] == "fixed":
            assert called["compute_infer_ms"] > 0 and called["queue_ms"] >= 0
            assert called["compute_ms"] <= s["max"]
        else:
            assert r["server_side"][f"{r['model']}_encoder"]["requests"] == acc["ok"]
    assert rep["totals"]["balanced"] and rep["totals"]["sent"] == len(rep["results"]) * REQUESTS

    served = [b for b in rep["baselines"] if b["served_runtime"]]
    assert {(b["model"], b["workload"]) for b in served} == {(m, w) for m in rep["models"] for w in ("fixed", "real")}
    for b in served:
        assert len(b["latencies_ms"]) == 4 and all(x > 0 for x in b["latencies_ms"])
        assert sum(b["latencies_ms"]) / 1e3 <= b["wall_s"] * 1.05
    cmp_ = rep["comparisons"]
    assert {x["model"] for x in cmp_["speedup"]} == {small}  # each compressed width against the full one
    assert all(x["in_process_faster_x"] > 0 for x in cmp_["serving_overhead"]) and len(cmp_["serving_overhead"]) == 4
    assert len(cmp_["real_vs_fixed"]) == 2 * len(CONCURRENCY)
    # every ratio has its bootstrap interval from this run's requests, and REQUESTS < 20 marks each
    from ofaserve.benchmarks.stats import MIN_RATIO_REQUESTS, ratio_entries
    assert REQUESTS < MIN_RATIO_REQUESTS
    for e in ratio_entries(cmp_):
        assert e["ci95"] is not None and e["ci95"][0] <= e["ci95"][1] and e["few_requests"], e
        in_process = e.get("in_process") or "in_process_ms" in e  # the baselines made 4 calls
        assert e["fewest_requests"] == (4 if in_process else REQUESTS), e

    md = (out / "report.md").read_text()
    assert f"| {small} | {rep['models'][small]['width']:.4g} |" in md
    assert "Serving overhead: how much faster in-process is" in md and "Real text vs fixed" in md
    assert "Ratios in parentheses come from fewer than 20 measured requests" in md
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"

    # clear one-line errors, exit code 2
    capsys.readouterr()
    assert main(["--url", server.grpc_url, "--models", "bert_w999", "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bert_w999_encoder" in err and "not found" in err and len(err.splitlines()) == 1
    assert main(["--url", server.grpc_url, "--seq_len", "4096", "--output_dir", str(tmp_path / "x")]) == 2
    assert "max_seq_length" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_failed_requests_are_counted_by_kind(server):
    """Requests the server rejects (ids outside the vocabulary) end as errors, none lost."""
    from ofaserve.benchmarks.loadgen import Target, run_closed_loop
    from ofaserve.benchmarks.workloads import fixed_workload

    bad = fixed_workload(16, SEQ_LEN, vocab_size=10**6, seed=0)
    res = run_closed_loop(server.grpc_url, Target("bert_w100", bad, "bert_w100_encoder"), 2, n_requests=5)
    acc = res.accounting
    assert acc.sent == 5 and acc.ok == 0 and acc.n_errors == 5 and acc.balanced
    assert list(acc.errors) == ["grpc_invalid_argument"], acc.errors
    assert "out of range" in acc.error_examples["grpc_invalid_argument"]
    assert res.latencies_ms == []


def test_bench_start_server(tiny_bench_repository, tmp_path):
    """--start_server starts and stops its own server; one model, fixed workload, --duration."""
    from ofaserve.benchmarks.run import main
    from ofaserve.serve.server import free_port

    out = tmp_path / "bench"
    small = sorted(p.name for p in tiny_bench_repository.glob("*_encoder"))[-1][: -len("_encoder")]
    assert small != "bert_w100"
    rc = main(["--start_server", "--model_repository", str(tiny_bench_repository), "--models", small,
               "--grpc_port", str(free_port()), "--http_port", str(free_port()), "--metrics_port", str(free_port()),
               "--duration", "1", "--rounds", "1", "--concurrency", "2", "--warmup", "0", "--seq_len", str(SEQ_LEN),
               "--baseline_requests", "0", "--output_dir", str(out), "--no_progress"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["server"]["started_by_bench"] and list(rep["models"]) == [small]
    (r,) = rep["results"]
    acc = r["accounting"]
    assert acc["sent"] == acc["ok"] + acc["errors"] and acc["ok"] > 10 and acc["errors"] == 0
    assert 1.0 <= r["wall_s"] < 3.0 and r["wall_consistent"] and rep["baselines"] == []
    assert r["server_side"][r["infer_model"]]["requests"] == acc["ok"]


def test_bench_fused_text_pipeline(request, tmp_path):
    """Real text to a fused text model (one python model, no ensemble steps): requests are
    counted on that model, and the in-process baseline tokenizes with its tokenizer.json."""
    from ofaserve.benchmarks.run import main
    from ofaserve.serve.repository import build_repository
    from ofaserve.serve.server import free_port

    repo = tmp_path / "fused"
    build_repository(_export_dirs(request, tmp_path)[1:], repo, target="cpu", precision="fp32", text_pipeline="fused")
    (m,) = [p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file() and not p.name.endswith("_encoder")]
    out = tmp_path / "bench"
    rc = main(["--start_server", "--model_repository", str(repo), "--real_text", "--requests", "4",
               "--grpc_port", str(free_port()), "--http_port", str(free_port()), "--metrics_port", str(free_port()),
               "--rounds", "1", "--concurrency", "1", "--warmup", "1", "--seq_len", str(SEQ_LEN),
               "--baseline_requests", "2", "--output_dir", str(out), "--no_progress"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    real = [r for r in rep["results"] if r["workload"] == "real"]
    assert len(real) == 1 and real[0]["infer_model"] == m
    assert rep["models"][m]["composing"] == []
    assert real[0]["server_side"][m]["requests"] == real[0]["accounting"]["ok"] == 4
    assert {(b["model"], b["workload"]) for b in rep["baselines"] if b["served_runtime"]} == {(m, "fixed"), (m, "real")}

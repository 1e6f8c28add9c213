"""Unit tests for the benchmark's pure pieces: statistics, ledger, Triton stats deltas,
comparisons, runtime specs, workloads and report rendering (no server)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from ofaserve.benchmarks import inprocess, stats
from ofaserve.benchmarks.report import render_markdown, render_plot
from ofaserve.benchmarks.run import build_parser, main, round_order, split_counts
from ofaserve.benchmarks.workloads import fixed_workload, real_text_workload, text_tensor
from ofaserve.core.errors import OfaserveError


# --------------------------------------------------------------------------- latency
def test_summarize_matches_numpy_percentiles():
    lat = list(np.random.default_rng(0).gamma(2.0, 10.0, size=501))
    s = stats.summarize_latencies(lat)
    assert s["n"] == 501
    for p in (50, 90, 95, 99):
        assert s[f"p{p}"] == pytest.approx(np.percentile(lat, p))
    assert s["mean"] == pytest.approx(np.mean(lat))
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]


def test_summarize_small_and_empty():
    assert stats.summarize_latencies([5.0]) == {"n": 1, "p50": 5.0, "p90": 5.0, "p95": 5.0, "p99": 5.0,
                                               "mean": 5.0, "std": 0.0, "min": 5.0, "max": 5.0}
    empty = stats.summarize_latencies([])
    assert empty["n"] == 0 and empty["p50"] is None and empty["mean"] is None
    assert stats.summarize_latencies([1, 2, 3, 4])["p50"] == 2.5  # linear interpolation
    with pytest.raises(ValueError):
        stats.summarize_latencies([1.0, float("nan")])
    with pytest.raises(ValueError):
        stats.summarize_latencies([-1.0])


def test_throughput_and_ratio():
    assert stats.throughput(160, 2.0) == 80.0
    assert stats.throughput(10, 0.0) is None
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(None, 2.0) is None and stats.ratio(1.0, 0) is None


def test_wall_consistency():
    assert stats.check_wall_consistency([100.0] * 10, wall_s=1.0, concurrency=1)
    assert not stats.check_wall_consistency([100.0] * 20, wall_s=1.0, concurrency=1)
    assert stats.check_wall_consistency([100.0] * 20, wall_s=1.0, concurrency=2)
    assert not stats.check_wall_consistency([1500.0], wall_s=1.0, concurrency=4)


# --------------------------------------------------------------------------- ledger
def test_accounting_threadsafe_and_balanced():
    acc = stats.Accounting()

    def work(i):
        for k in range(500):
            acc.on_send()
            if (i + k) % 7 == 0:
                acc.on_error("grpc_unavailable", "server gone")
            else:
                acc.on_ok()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert acc.sent == 4000 and acc.balanced
    assert acc.ok + acc.errors["grpc_unavailable"] == 4000
    d = acc.to_dict()
    assert d["sent"] == d["ok"] + d["errors"] and d["balanced"]
    merged = acc.merge(stats.Accounting(sent=2, ok=1, errors=stats.Counter({"x": 1})))
    assert merged.sent == 4002 and merged.balanced and merged.errors["x"] == 1


def test_accounting_unbalanced_detected():
    acc = stats.Accounting()
    acc.on_send()
    assert not acc.balanced and not acc.to_dict()["balanced"]


def test_error_kind():
    class Fake(Exception):
        def status(self):
            return "StatusCode.DEADLINE_EXCEEDED"
    assert stats.error_kind(Fake("x")) == "grpc_deadline_exceeded"
    assert stats.error_kind(ValueError("x")) == "ValueError"


# --------------------------------------------------------------------------- Triton statistics
def _stats_json(name, count, queue_ns, infer_ns, executions, inferences):
    d = lambda c, ns: {"count": str(c), "ns": str(ns)}  # noqa: E731  protobuf JSON: int64 as strings
    return {"model_stats": [{"name": name, "version": "1", "inference_count": str(inferences),
                             "execution_count": str(executions),
                             "inference_stats": {"success": d(count, queue_ns + infer_ns + count * 1000),
                                                 "fail": d(0, 0), "queue": d(count, queue_ns),
                                                 "compute_input": d(count, count * 500),
                                                 "compute_infer": d(count, infer_ns),
                                                 "compute_output": d(count, count * 500)}}]}


def test_stats_delta_and_summary():
    before = stats.flatten_model_stats(_stats_json("m_encoder", 10, 1_000_000, 500_000_000, 10, 160))
    after = stats.flatten_model_stats(_stats_json("m_encoder", 30, 5_000_000, 1_500_000_000, 25, 480))
    delta = stats.stats_delta(before, after)["m_encoder"]
    assert delta["success_count"] == 20 and delta["inference_count"] == 320
    s = stats.server_side_summary(delta)
    assert s["requests"] == 20
    assert s["queue_ms"] == pytest.approx(4_000_000 / 20 / 1e6)
    assert s["compute_infer_ms"] == pytest.approx(1_000_000_000 / 20 / 1e6)
    assert s["compute_ms"] == pytest.approx((1_000_000_000 + 20 * 1000) / 20 / 1e6)
    assert s["avg_batch"] == pytest.approx(320 / 15)
    empty = stats.server_side_summary({})
    assert empty["requests"] == 0 and empty["queue_ms"] is None
    acc = stats.add_deltas({}, {"a": {"x": 1}})
    stats.add_deltas(acc, {"a": {"x": 2}, "b": {"x": 5}})
    assert acc == {"a": {"x": 3}, "b": {"x": 5}}
    tot = stats.pipeline_totals({"t": {"queue_ms": 1.0, "compute_ms": 2.0},
                                 "e": {"queue_ms": 0.5, "compute_ms": 10.0}}, ["t", "e"])
    assert tot["queue_ms"] == 1.5 and tot["compute_ms"] == 12.0
    assert stats.pipeline_totals({"t": {"queue_ms": None}}, ["t"])["queue_ms"] is None


def test_flatten_missing_fields():
    assert stats.flatten_model_stats({}) == {}
    flat = stats.flatten_model_stats({"model_stats": [{"name": "x"}]})
    assert flat["x"]["success_count"] == 0 and flat["x"]["queue_ns"] == 0


# --------------------------------------------------------------------------- naming, comparisons
def _row(model, workload, c, p50, tput=100.0):
    return {"model": model, "workload": workload, "concurrency": c, "latency_ms": {"p50": p50},
            "throughput_sps": tput}


def test_compare_speedup_overhead_real_vs_fixed():
    widths = {"bert_w100": 1.0, "bert_w67": 0.67}
    results = [_row("bert_w100", "fixed", 1, 120.0, 133.0), _row("bert_w67", "fixed", 1, 80.0, 200.0),
               _row("bert_w100", "real", 1, 40.0), _row("bert_w67", "real", 1, 30.0)]
    baselines = [{"model": "bert_w100", "workload": "fixed", "runtime": "openvino/fp32/t2",
                  "served_runtime": True, "latency_ms": {"p50": 100.0}},
                 {"model": "bert_w67", "workload": "fixed", "runtime": "openvino/fp32/t2",
                  "served_runtime": True, "latency_ms": {"p50": 70.0}},
                 {"model": "bert_w67", "workload": "fixed", "runtime": "openvino/bf16/t2",
                  "served_runtime": False, "latency_ms": {"p50": 35.0}}]
    c = stats.compare(results, baselines, widths)
    sp = {(s["model"], s["workload"], s.get("runtime")): s for s in c["speedup"]}
    assert sp[("bert_w67", "fixed", None)]["speedup"] == pytest.approx(1.5)
    assert sp[("bert_w67", "fixed", None)]["throughput_ratio"] == pytest.approx(200 / 133)
    assert sp[("bert_w100", "fixed", None)]["speedup"] == 1.0
    assert sp[("bert_w67", "fixed", "openvino/fp32/t2")]["speedup"] == pytest.approx(100 / 70)
    assert ("bert_w67", "fixed", "openvino/bf16/t2") not in sp  # no full-width bf16 row to compare to
    ov = {o["model"]: o for o in c["serving_overhead"]}
    assert ov["bert_w100"]["ratio"] == pytest.approx(1.2) and ov["bert_w100"]["added_ms"] == pytest.approx(20)
    rvf = {x["model"]: x for x in c["real_vs_fixed"]}
    assert rvf["bert_w67"]["ratio"] == pytest.approx(30 / 80)
    assert c["runtimes"][0]["speedup_vs_served"] == pytest.approx(2.0)


def test_pick_full():
    assert stats.pick_full({"a": 0.5, "b": 1.0, "c": None}) == "b"
    assert stats.pick_full({"a": None}) is None


def test_split_counts_and_round_order():
    assert split_counts(10, 3) == [4, 3, 3] and sum(split_counts(61, 4)) == 61
    assert round_order(["a", "b"], 0) == ["a", "b"] and round_order(["a", "b"], 1) == ["b", "a"]


# --------------------------------------------------------------------------- runtimes
def test_parse_runtime_specs():
    specs = inprocess.parse_runtime_specs("openvino:bf16, ort ,paddle:f32:4")
    assert specs == [inprocess.RuntimeSpec("openvino", "bf16"), inprocess.RuntimeSpec("onnxruntime", "fp32"),
                     inprocess.RuntimeSpec("paddle", "fp32", 4)]
    assert inprocess.parse_runtime_specs("") == []
    with pytest.raises(OfaserveError, match="unknown runtime"):
        inprocess.parse_runtime_specs("tensorflow")
    with pytest.raises(OfaserveError, match="unknown precision"):
        inprocess.parse_runtime_specs("openvino:int3")


def test_spec_from_config():
    py = {"backend": "python", "parameters": {"runtime": {"string_value": "openvino"},
                                              "precision": {"string_value": "bf16"},
                                              "threads": {"string_value": "2"}}}
    assert inprocess.spec_from_config(py) == inprocess.RuntimeSpec("openvino", "bf16", 2)
    ov = {"backend": "openvino", "parameters": {"INFERENCE_NUM_THREADS": {"string_value": "4"}}}
    assert inprocess.spec_from_config(ov) == inprocess.RuntimeSpec("openvino", "cpu-default", 4)  # OpenVINO picks
    trt = {"platform": "onnxruntime_onnx", "optimization": {"execution_accelerators": {
        "gpu_execution_accelerator": [{"name": "tensorrt", "parameters": {"precision_mode": "FP16"}}]}}}
    assert inprocess.spec_from_config(trt).runtime == "onnxruntime-trt"
    assert inprocess.spec_from_config(trt).precision == "fp16"


def test_read_config_parameters(tmp_path):
    (tmp_path / "config.pbtxt").write_text(
        'name: "x"\nbackend: "python"\nparameters {\n  key: "runtime"\n  value {\n    string_value: "paddle"\n  }\n}\n'
        'parameters {\n  key: "max_seq_length"\n  value {\n    string_value: "128"\n  }\n}\n')
    assert inprocess.read_config_parameters(tmp_path / "config.pbtxt") == {"runtime": "paddle", "max_seq_length": "128"}


def test_time_runner_measures():
    import time
    res = inprocess.time_runner(lambda b: time.sleep(0.002), [1, 2], 5)
    assert len(res.latencies_ms) == 5 and all(x >= 2.0 for x in res.latencies_ms)
    assert sum(res.latencies_ms) / 1e3 <= res.wall_s


# --------------------------------------------------------------------------- workloads
def test_fixed_workload_seeded():
    a = fixed_workload(16, 128, 30522, seed=3)
    b = fixed_workload(16, 128, 30522, seed=3)
    c = fixed_workload(16, 128, 30522, seed=4)
    ids, tt = a.batch(0)
    assert ids.shape == (16, 128) and ids.dtype == np.int64 and tt.sum() == 0
    assert ids.min() >= 1000 and ids.max() < 30522
    assert np.array_equal(ids, b.batch(0)[0]) and not np.array_equal(ids, c.batch(0)[0])
    assert a.batch(len(a.batches)) is a.batch(0)
    small = fixed_workload(4, 8, 128, seed=0)
    assert small.batch(0)[0].max() < 128 and small.batch(0)[0].min() >= 1


def test_real_text_workload():
    texts = [f"sentence {i}" for i in range(50)]
    w = real_text_workload(texts, 16, seed=0)
    assert len(w.batches) == 3 and all(len(b) == 16 for b in w.batches)
    assert len({t for b in w.batches for t in b}) == 48
    arr = text_tensor(w.batch(0))
    assert arr.shape == (16, 1) and arr.dtype == object and isinstance(arr[0, 0], bytes)
    with pytest.raises(ValueError):
        real_text_workload(texts[:3], 16, seed=0)


# --------------------------------------------------------------------------- report
def _fake_report():
    lat_a = [120.0, 125.0, 130.0, 140.0]
    lat_b = [80.0, 82.0, 85.0, 90.0]
    res = []
    for m, lat in (("bert_w100", lat_a), ("bert_w67", lat_b)):
        for c in (1, 2):
            res.append({"model": m, "workload": "fixed", "concurrency": c, "infer_model": f"{m}_encoder",
                        "runtime": "openvino/fp32/t2", "latency_ms": stats.summarize_latencies([x * c for x in lat]),
                        "throughput_sps": 100.0, "server_pipeline": {"queue_ms": 0.1, "compute_ms": 100.0},
                        "accounting": stats.Accounting(4, 4).to_dict()})
    base = [{"model": "bert_w100", "workload": "fixed", "runtime": "openvino/fp32/t2", "served_runtime": True,
             "latency_ms": stats.summarize_latencies([110.0, 112.0]), "throughput_sps": 140.0}]
    widths = {"bert_w100": 1.0, "bert_w67": 0.67}
    return {"date": "2026-01-01T00:00:00+00:00", "command": "ofaserve bench --x", "machine": {"cpu": "AMD EPYC", "cores": 2},
            "versions": {"numpy": "1.26.4"}, "server": {"version": "2.51.0", "url": "127.0.0.1:8001"},
            "settings": {"batch_size": 16, "seq_len": 128, "concurrency": [1, 2], "requests": 4, "rounds": 2,
                         "warmup": 1, "seed": 0},
            "workloads": {"fixed": {"seq_len": 128}}, "models": {m: {"width": w} for m, w in widths.items()},
            "results": res, "baselines": base, "comparisons": stats.compare(res, base, widths)}


def test_render_markdown_has_tables_from_data():
    rep = _fake_report()
    md = render_markdown(rep)
    assert "| model | width | runtime | conc | p50 ms | p90 ms | p99 ms |" in md
    w67 = next(line for line in md.splitlines() if line.startswith("| bert_w67 | 0.67 | openvino/fp32/t2 | 1 |"))
    p50 = rep["results"][2]["latency_ms"]["p50"]
    full = rep["results"][0]["latency_ms"]["p50"]
    assert f"{p50:.1f}" in w67 and f"{full / p50:.2f}x" in w67
    assert "Serving overhead" in md and "2.51.0" in md and "ofaserve bench --x" in md
    json.dumps(rep)  # the report is JSON-serialisable as built


def test_render_plot_writes_png(tmp_path):
    path = render_plot(_fake_report(), tmp_path / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- CLI
def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--url", "--start_server", "--model_repository", "--models", "--batch_size", "--seq_len",
                 "--real_text", "--concurrency", "--requests", "--duration", "--warmup", "--seed",
                 "--runtimes", "--output_dir", "--rounds", "--baseline_requests", "--timeout"):
        assert flag in out
    for action in build_parser()._actions:
        assert action.help, action.dest


def test_cli_errors_exit_2(capsys, tmp_path):
    assert main(["--url", "127.0.0.1:1", "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not reachable" in err and len(err.strip().splitlines()) == 1
    assert main(["--start_server"]) == 2
    assert "--model_repository" in capsys.readouterr().err
    assert main(["--requests", "5", "--duration", "3"]) == 2
    assert main(["--runtimes", "tensorflow"]) == 2
    assert main(["--start_server", "--model_repository", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["--concurrency", "0"])
    assert e.value.code == 2
    assert not (tmp_path / "o").exists()


def test_compare_reports(tmp_path, capsys):
    from benchmarks.records.compare import compare_rows, main as compare_main
    a, b = _fake_report(), _fake_report()
    for r in b["results"]:
        r["latency_ms"] = stats.summarize_latencies([x / 2 for x in (r["latency_ms"]["p50"],)])
        r["runtime"] = "openvino/bf16/t2"
    rows = compare_rows([a, b], ["fp32", "bf16"])
    assert [r[0] for r in rows] == ["fp32", "fp32", "bf16", "bf16"]
    assert rows[2][8] == "2.00x"   # bf16 full width vs the first run's full width
    for name, rep in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(rep))
    assert compare_main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "c.md")]) == 0
    assert "| b | bert_w67 |" in (tmp_path / "c.md").read_text()
    assert compare_main([str(tmp_path / "missing")]) == 2


def test_compare_runs_summary(tmp_path):
    from benchmarks.records.compare import main as compare_main, run_summary_rows
    a = _fake_report()
    a["models"]["bert_w100"]["composing"] = ["bert_w100_tokenizer", "bert_w100_encoder", "bert_w100_postprocess"]
    a["comparisons"]["real_vs_fixed"] = [{"model": "bert_w100", "concurrency": 1, "ratio": 0.25},
                                         {"model": "bert_w67", "concurrency": 1, "ratio": 0.5}]
    (row,) = run_summary_rows([a], ["r1"])
    speed = next(s for s in a["comparisons"]["speedup"] if s["model"] == "bert_w67" and s["workload"] == "fixed"
                 and s.get("concurrency") == 1 and not s.get("in_process"))
    assert row[:2] == ["r1", "ensemble"] and row[2] == f"bert_w67 {speed['speedup']:.2f}x"  # no reference row
    assert row[3] == "bert_w100 4.00x, bert_w67 2.00x"
    over = {x["model"]: x["ratio"] for x in a["comparisons"]["serving_overhead"] if x["workload"] == "fixed"}
    assert over and row[4] == ", ".join(f"{m} {over[m]:.3f}x" for m in a["models"] if m in over)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(a))
    assert compare_main(["--runs", str(tmp_path / "a"), "-o", str(tmp_path / "runs.md")]) == 0
    text = (tmp_path / "runs.md").read_text()
    assert "| a | ensemble |" in text
    assert f"compressed vs full, fixed: {speed['speedup']:.2f}x-{speed['speedup']:.2f}x" in text
    assert "fixed / real text latency: 2.00x-4.00x, median 3.00x over 2" in text
    assert f"serving overhead, fixed: {min(over.values()):.3f}x-{max(over.values()):.3f}x" in text


def test_busy_warning_reads_cpu_in_use_not_the_load_average():
    """The load average remembers the demo's own training minutes ago; only CPU in use
    while the client waits means other work competes with the benchmark."""
    from ofaserve.benchmarks import run as bench

    recent_work_now_idle = {"loadavg_1m": 1.9, "loadavg_5m": 1.8, "cpu_busy_percent": 3.0}
    assert bench._busy_warning(recent_work_now_idle, {}) is None
    busy = bench._busy_warning({"loadavg_1m": 0.1, "cpu_busy_percent": 95.0}, {})
    assert busy is not None and "95% of" in busy
    sampled = bench._load(sample_s=0.2)
    assert 0.0 <= sampled["cpu_busy_percent"] <= 100.0 and "loadavg_1m" in sampled

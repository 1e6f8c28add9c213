"""Unit tests for the benchmark's pure pieces: statistics, ledger, Triton stats deltas,
comparisons, runtime specs, workloads and report rendering (no server)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from ofaserve.benchmarks import inprocess, stats
from ofaserve.benchmarks.report import render_markdown, render_plot
from ofaserve.benchmarks.loadgen import round_order, split_counts
from ofaserve.benchmarks.run import build_parser, main
from ofaserve.benchmarks.workloads import fixed_workload, real_text_workload, text_tensors
from ofaserve.core.tasks import Split
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
def _row(model, workload, c, p50, n=40, spread=0.05, seed=0):
    """A measured row: ``n`` latencies around ``p50`` (its exact median) and their summary."""
    rng = np.random.default_rng(seed)
    lat = list(p50 * (1 + spread * rng.standard_normal(n)))
    lat = [x - float(np.median(lat)) + p50 for x in lat]
    return {"model": model, "workload": workload, "concurrency": c, "latency_ms": stats.summarize_latencies(lat),
            "latencies_ms": lat, "throughput_sps": 100.0}


def _base(model, runtime, p50, served, n=40, seed=0):
    row = _row(model, "fixed", None, p50, n=n, seed=seed)
    del row["concurrency"]
    return {**row, "runtime": runtime, "served_runtime": served}


def test_compare_every_ratio_reads_faster_with_its_interval():
    """One convention: each ratio is reference p50 / subject p50, so > 1 means the subject
    is faster (real text against fixed too: the old report printed 0.375x for this), and
    each carries a 95% bootstrap interval around it."""
    widths = {"bert_w100": 1.0, "bert_w67": 0.67}
    results = [_row("bert_w100", "fixed", 1, 120.0), _row("bert_w67", "fixed", 1, 80.0, seed=1),
               _row("bert_w100", "real", 1, 40.0, seed=2), _row("bert_w67", "real", 1, 30.0, seed=3)]
    baselines = [_base("bert_w100", "openvino/fp32/t2", 100.0, True), _base("bert_w67", "openvino/fp32/t2", 70.0, True, seed=4),
                 _base("bert_w67", "openvino/bf16/t2", 35.0, False, seed=5)]
    c = stats.compare(results, baselines, widths)
    sp = {(s["model"], s["workload"], s.get("runtime")): s for s in c["speedup"]}
    assert sp[("bert_w67", "fixed", None)]["faster_than_full_x"] == pytest.approx(1.5)
    assert sp[("bert_w67", "fixed", "openvino/fp32/t2")]["faster_than_full_x"] == pytest.approx(100 / 70)
    assert ("bert_w100", "fixed", None) not in sp  # full width against itself is no comparison
    assert ("bert_w67", "fixed", "openvino/bf16/t2") not in sp  # no full-width bf16 row to compare to
    ov = {o["model"]: o for o in c["serving_overhead"]}
    assert ov["bert_w100"]["in_process_faster_x"] == pytest.approx(1.2) and ov["bert_w100"]["added_ms"] == pytest.approx(20)
    rvf = {x["model"]: x for x in c["real_vs_fixed"]}
    assert rvf["bert_w67"]["real_faster_x"] == pytest.approx(80 / 30)
    assert c["runtimes"][0]["faster_than_served_x"] == pytest.approx(2.0)
    entries = stats.ratio_entries(c)
    assert len(entries) == 3 + 2 + 2 + 1  # speedup (2 served, 1 in-process), overhead, real text, runtimes
    for e in entries:
        x = next(v for k, v in e.items() if k.endswith("_x"))
        lo, hi = e["ci95"]
        assert lo < x < hi and hi - lo < 0.25 * x, e  # 5% noise on 40 requests: a tight interval
        assert e["fewest_requests"] == 40 and e["few_requests"] is False and e["stat"] == "p50"
    assert c["method"]["statistic"] == "p50" and "95% percentile bootstrap" in c["method"]["interval"]
    assert c["method"]["min_requests"] == stats.MIN_RATIO_REQUESTS == 20


def test_bootstrap_interval_resamples_each_cell_with_a_fixed_seed(monkeypatch):
    rng = np.random.default_rng(7)
    ref, sub = list(rng.gamma(20, 6.0, 60)), list(rng.gamma(20, 4.0, 45))
    got = stats.bootstrap_ratio_ci(ref, sub)
    assert got == stats.bootstrap_ratio_ci(ref, sub)  # seeded: the same run gives the same interval
    # the same interval, computed the plain way: 2000 resamples of each cell, then the 2.5/97.5 percentiles
    draw = np.random.default_rng(stats.BOOTSTRAP_SEED)
    r = np.array(ref)[draw.integers(0, len(ref), (stats.BOOTSTRAP_RESAMPLES, len(ref)))]
    s = np.array(sub)[draw.integers(0, len(sub), (stats.BOOTSTRAP_RESAMPLES, len(sub)))]
    expect = np.percentile(np.median(r, axis=1) / np.median(s, axis=1), [2.5, 97.5])
    assert got == pytest.approx(list(expect))
    monkeypatch.setattr(stats, "_BOOTSTRAP_CELLS", 1000)  # many small chunks: still the same draws
    assert stats.bootstrap_ratio_ci(ref, sub) == pytest.approx(got)
    wide = stats.bootstrap_ratio_ci(ref[:10], sub[:10])
    assert wide[1] - wide[0] > got[1] - got[0]  # fewer requests, a wider interval
    assert stats.bootstrap_ratio_ci([5.0], sub) is None and stats.bootstrap_ratio_ci(ref, []) is None


def test_a_ratio_from_fewer_than_20_requests_is_marked():
    widths = {"bert_w100": 1.0, "bert_w67": 0.67}
    few = stats.compare([_row("bert_w100", "fixed", 1, 120.0, n=19), _row("bert_w67", "fixed", 1, 80.0, n=40)],
                        [], widths)["speedup"][0]
    enough = stats.compare([_row("bert_w100", "fixed", 1, 120.0, n=20), _row("bert_w67", "fixed", 1, 80.0, n=20)],
                           [], widths)["speedup"][0]
    assert (few["few_requests"], few["fewest_requests"], few["full_n"], few["model_n"]) == (True, 19, 19, 40)
    assert (enough["few_requests"], enough["fewest_requests"]) == (False, 20)
    from ofaserve.benchmarks.report import faster_sentence, ratio_cell
    assert ratio_cell(few, "faster_than_full_x") == "(1.50x; 19 req.)"
    lo, hi = enough["ci95"]
    assert ratio_cell(enough, "faster_than_full_x") == f"1.50x [{lo:.2f}, {hi:.2f}]"
    assert faster_sentence(enough, "faster_than_full_x", "w67", "w100") == (
        f"w67 is 1.50x faster than w100 (95% CI {lo:.2f}-{hi:.2f})")
    tie = dict(enough, ci95=[0.97, 1.04], faster_than_full_x=1.01)
    assert faster_sentence(tie, "faster_than_full_x", "w67", "w100") == (
        "w67 is 1.01x faster than w100 (95% CI 0.97-1.04: it holds 1, no difference this run can tell)")
    text = faster_sentence(few, "faster_than_full_x", "w67", "w100")
    assert "not a measurement" in text and "19 measured requests" in text and "faster than" not in text


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
    w = real_text_workload(Split(texts, np.zeros(50, np.int64)), 16, seed=0)
    assert len(w.batches) == 3 and all(len(b) == 16 for b in w.batches)
    assert len({t for b in w.batches for t in b}) == 48 and not w.info["pairs"]
    (arr,) = text_tensors(w.batch(0)).values()
    assert arr.shape == (16, 1) and arr.dtype == object and isinstance(arr[0, 0], bytes)
    with pytest.raises(ValueError):
        real_text_workload(Split(texts[:3], np.zeros(3, np.int64)), 16, seed=0)


def test_real_text_workload_of_pairs_sends_both_sentences():
    from ofaserve.benchmarks.loadgen import Target

    texts = [f"first {i}" for i in range(32)]
    w = real_text_workload(Split(texts, np.zeros(32, np.float32), [f"second {i}" for i in range(32)]), 16, seed=0,
                           outputs=("SCORE",))
    tensors = text_tensors(w.batch(1))
    assert set(tensors) == {"TEXT", "TEXT_PAIR"} and all(a.shape == (16, 1) for a in tensors.values())
    firsts = [t.decode()[6:] for t in tensors["TEXT"][:, 0]]
    assert [t.decode()[7:] for t in tensors["TEXT_PAIR"][:, 0]] == firsts  # rows stay paired
    target = Target("m", w, "m")
    assert target.input_names == ["TEXT", "TEXT_PAIR"] and target.output_names == ["SCORE"]


# --------------------------------------------------------------------------- report
def _fake_report(n=30, concurrency=(1, 2)):
    """A report as run.py builds it, from ``n`` latencies per cell (seeded noise around
    125 ms for full width and 84 ms for width 0.67)."""
    res = []
    for i, (m, p50) in enumerate((("bert_w100", 125.0), ("bert_w67", 84.0))):
        for c in concurrency:
            row = _row(m, "fixed", c, p50 * c, n=n, seed=i * 10 + c)
            res.append({**row, "infer_model": f"{m}_encoder", "runtime": "openvino/fp32/t2",
                        "server_pipeline": {"queue_ms": 0.1, "compute_ms": 100.0},
                        "accounting": stats.Accounting(n, n).to_dict()})
    base = [_base("bert_w100", "openvino/fp32/t2", 111.0, True, n=n, seed=99)]
    widths = {"bert_w100": 1.0, "bert_w67": 0.67}
    return {"date": "2026-01-01T00:00:00+00:00", "command": "ofaserve bench --x", "machine": {"cpu": "AMD EPYC", "cores": 2},
            "versions": {"numpy": "1.26.4"}, "server": {"version": "2.51.0", "url": "127.0.0.1:8001"},
            "settings": {"batch_size": 16, "seq_len": 128, "concurrency": list(concurrency), "requests": n, "rounds": 2,
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
    sp = next(x for x in rep["comparisons"]["speedup"] if x["concurrency"] == 1)
    lo, hi = sp["ci95"]
    assert f"{p50:.1f}" in w67 and f"| {full / p50:.2f}x [{lo:.2f}, {hi:.2f}] |" in w67
    w100 = next(line for line in md.splitlines() if line.startswith("| bert_w100 | 1 | openvino/fp32/t2 | 1 |"))
    assert "| reference |" in w100
    (ov,) = rep["comparisons"]["serving_overhead"]
    assert "## Serving overhead: how much faster in-process is than Triton gRPC" in md
    assert f"| {ov['in_process_faster_x']:.3f}x [{ov['ci95'][0]:.3f}, {ov['ci95'][1]:.3f}] |" in md
    assert "greater than 1 means the subject is faster" in md and "95% percentile bootstrap" in md
    assert "fewer than 20" not in md and "(no latency-vs-concurrency panel" not in md
    assert "2.51.0" in md and "ofaserve bench --x" in md
    json.dumps(rep)  # the report is JSON-serialisable as built


def test_report_marks_every_ratio_from_too_few_requests():
    md = render_markdown(_fake_report(n=5))
    assert "**warning**: 3 ratio(s) come from fewer than 20 measured requests in a cell (fewest: 5)" in md
    assert "Ratios in parentheses come from fewer than 20 measured requests" in md
    ratio_cells = [c.strip() for line in md.splitlines() if line.startswith("| bert_") for c in line.split("|")
                   if c.strip().endswith(("x", "req.)", "]"))]
    assert ratio_cells and all(c.startswith("(") and c.endswith("; 5 req.)") for c in ratio_cells), ratio_cells


def _png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_plot_draws_no_concurrency_panel_for_one_level(tmp_path):
    """One concurrency level is one point per line: that panel is left out, and report.md says so."""
    two = render_plot(_fake_report(concurrency=(1, 2)), tmp_path / "two.png")
    one_report = _fake_report(concurrency=(1,))
    one = render_plot(one_report, tmp_path / "one.png")
    assert _png_width(two) == 2 * _png_width(one)  # a bar panel for the workload, plus the concurrency panel
    assert "(no latency-vs-concurrency panel: one concurrency level measured)" in render_markdown(one_report)


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
    assert rows[2][8] == "2.00x"   # bf16 full width: 2x faster than the first run's full width
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
    a["comparisons"]["real_vs_fixed"] = [{"model": "bert_w100", "concurrency": 1, "real_faster_x": 4.0},
                                         {"model": "bert_w67", "concurrency": 1, "real_faster_x": 2.0}]
    (row,) = run_summary_rows([a], ["r1"])
    speed = next(s for s in a["comparisons"]["speedup"] if s["model"] == "bert_w67" and s["workload"] == "fixed"
                 and s.get("concurrency") == 1 and not s.get("in_process"))
    assert row[:2] == ["r1", "ensemble"] and row[2] == f"bert_w67 {speed['faster_than_full_x']:.2f}x"
    assert row[3] == "bert_w100 4.00x, bert_w67 2.00x"
    over = {x["model"]: x["in_process_faster_x"] for x in a["comparisons"]["serving_overhead"] if x["workload"] == "fixed"}
    assert over and row[4] == ", ".join(f"{m} {over[m]:.3f}x" for m in a["models"] if m in over)
    # a report from before schema 2 (history/): its ratios are read in the same convention
    old = _fake_report()
    old["comparisons"] = {"speedup": [{"model": "bert_w67", "workload": "fixed", "concurrency": 1, "speedup": 1.5}],
                          "real_vs_fixed": [{"model": "bert_w67", "concurrency": 1, "ratio": 0.25}],
                          "serving_overhead": [{"model": "bert_w67", "workload": "fixed", "ratio": 1.02}]}
    (row_old,) = run_summary_rows([old], ["r0"])
    assert row_old[2:5] == ["bert_w67 1.50x", "bert_w67 4.00x", "bert_w67 1.020x"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(a))
    assert compare_main(["--runs", str(tmp_path / "a"), "-o", str(tmp_path / "runs.md")]) == 0
    text = (tmp_path / "runs.md").read_text()
    assert "| a | ensemble |" in text
    f = speed["faster_than_full_x"]
    assert f"compressed faster than full, fixed: {f:.2f}x-{f:.2f}x" in text
    assert "real text faster than fixed: 2.00x-4.00x, median 3.00x over 2" in text
    assert f"in-process faster than served, fixed: {min(over.values()):.3f}x-{max(over.values()):.3f}x" in text


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


def test_test_time_reads_pytests_closing_line():
    from benchmarks.records.test_time import pytest_summary

    screen = ("collected 740 items\n....\n"
              "=========== 2 failed, 362 passed, 4 skipped, 12 warnings in 691.20s (0:11:31) ===========\n"
              "make: *** [Makefile:80: test] Error 1\n")
    assert pytest_summary(screen) == {"counts": {"failed": 2, "passed": 362, "skipped": 4}, "pytest_s": 691.2}
    assert pytest_summary("= 1 error in 3.00s =")["counts"] == {"errors": 1}
    assert pytest_summary("make: *** No rule to make target 'test'\n") == {}


def test_report_goes_only_where_nothing_else_is(capsys, tmp_path):
    """--output_dir is refused, before any request, when it holds files a report is not made
    of; a folder with an earlier report (or --overwrite) is written; nothing there is removed."""
    from ofaserve.core.errors import OfaserveError
    from ofaserve.core.outputs import check_report_dir

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("mine")
    assert main(["--url", "127.0.0.1:1", "--output_dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "holds other content (1 entries: todo.txt)" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1 and sorted(p.name for p in folder.iterdir()) == ["todo.txt"]
    assert check_report_dir(folder, ("report.json",), overwrite=True) == folder
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "report.json").write_text("{}")
    assert check_report_dir(earlier, ("report.json", "report.md")) == earlier
    assert check_report_dir(tmp_path / "new" / "deeper", ("report.json",)) == tmp_path / "new" / "deeper"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OfaserveError, match="exists and is not a folder"):
        check_report_dir(tmp_path / "file", ("report.json",))

"""`ofaserve demo` end to end on the tiny model (compress output reused): exports, the
repository, a real Triton server, gRPC classification, the benchmark, the summary, and
no server left behind."""
import json
import shutil
from pathlib import Path

import psutil
import pytest

from ofaserve.benchmarks import stats


def _tritons(serving: Path) -> set[int]:
    """Triton servers whose model repository lies under ``serving`` (other test runs'
    servers may come and go meanwhile: they do not count)."""
    return {p.pid for p in psutil.process_iter(["name", "cmdline"])
            if "tritonserver" in " ".join(p.info["cmdline"] or [])
            and any(a.startswith(f"--model-repository={serving}") for a in p.info["cmdline"] or [])}


@pytest.mark.integration
def test_demo_runs_end_to_end_and_reuses_stages(tmp_path, tiny_compress_dir, capsys):
    from ofaserve import demo

    work = tmp_path / "demo"
    shutil.copytree(tiny_compress_dir, work / "compress")
    argv = ["--workdir", str(work), "--width_mult", "0.75", "--requests", "3", "--seq_len", "32"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "=== Accuracy per width" in out and "=== Latency" in out
    # each export is one summary line on the screen; its parity tables are in demo.log
    assert "export 0.75: " in out and "match the supernet" in out and "as compress measured" in out
    assert "| shape | runtime (vs supernet)" not in out
    assert "| shape | runtime (vs supernet)" in (work / "demo.log").read_text()
    summary = json.loads((work / "summary.json").read_text())
    assert set(summary["exports"]) == {"1.0", "0.75"}
    assert len(summary["classified"]) == len(demo.SENTENCES)
    assert all(abs(sum(c["probs"].values()) - 1) < 1e-5 for c in summary["classified"])
    report = json.loads((work / "bench" / "report.json").read_text())
    assert report["results"], "the benchmark measured something"
    _assert_summary_holds_the_latency_figures(summary, report)
    # 3 requests per cell: every ratio is marked on the screen and in the report, none quoted
    assert "fewer than 20: not a measurement" in out and " faster than " not in out.split("=== Latency")[0]
    assert all(e["few_requests"] for e in stats.ratio_entries(report["comparisons"]))
    assert not _tritons(work.resolve()), "the demo must stop its server"

    # second run: every finished stage is reused
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "compress: reusing" in out and "export 0.75: reusing" in out and "repo: reusing" in out


PERCENTILES = ("p50", "p90", "p99", "mean")


def _assert_summary_holds_the_latency_figures(summary: dict, report: dict) -> None:
    """summary.json has every latency row of the tables the demo printed (report.json's
    results and in-process baselines), with their percentiles."""
    lat = summary["benchmark"]["latency"]
    served = {(r["model"], r["workload"], r["concurrency"]): r for r in lat["triton_grpc"]}
    assert len(served) == len(report["results"])
    for r in report["results"]:
        row = served[(r["model"], r["workload"], r["concurrency"])]
        assert {k: row[k] for k in PERCENTILES} == {k: r["latency_ms"][k] for k in PERCENTILES}
        assert row["p50"] > 0 and row["throughput_sps"] == r["throughput_sps"]
    local = {(b["model"], b["workload"], b["runtime"]): b for b in lat["in_process"]}
    assert len(local) == len(report["baselines"])
    for b in report["baselines"]:
        assert local[(b["model"], b["workload"], b["runtime"])]["p50"] == b["latency_ms"]["p50"]
    assert lat["comparisons"] == report["comparisons"]


def test_stage_summaries_are_one_line_each(tiny_compress_dir):
    """What the screen shows of compress and export instead of their printed reports: the
    manifests' own one-line summaries."""
    from ofaserve.core.manifests import CompressManifest, ExportManifest

    cm = CompressManifest.read(tiny_compress_dir)
    line = cm.summary_line()
    assert "\n" not in line and line.startswith("compress: teacher ")
    assert f"teacher {cm.results['teacher']['dev']['accuracy']:.4f}" in line
    assert all(f"{w} {r['dev']['accuracy']:.4f}" in line for w, r in cm.results["widths"].items())
    export = ExportManifest(
        width="0.75", params={"total": 1_234_567}, dev_score={"metric": "accuracy", "value": 0.8},
        parity={"ok": True, "max_abs_diff": 2e-6,
                "shapes": {"16x128": {"max_abs_diff": {"onnx": 1e-6, "openvino_packed": 2e-6}}},
                "dev_score": {"metric": "accuracy", "runtime": "onnx", "exported": 0.8, "n": 1248},
                "budget": {"dev_sentences": 460, "dev_total": 1248, "cut": "later dev passes on 460 ..."}},
        precisions={"fp32": {"accuracy": 0.79, "dev_sentences": 460},
                    "openvino_bf16": {"accuracy": 0.79, "delta_vs_fp32": 0.0},
                    "onnx_fp16": {"skipped": "not asked for"}})
    line = export.summary_line()
    assert line.startswith("export 0.75: 1.2M params")
    assert "\n" not in line and "onnx, openvino_packed match the supernet (max diff 2.0e-06)" in line
    assert "dev accuracy 0.8000 through onnx" in line and "on 460 of 1248 dev sentences: openvino_bf16 +0.0000" in line
    assert "onnx_fp16" not in line


def test_demo_bench_arguments_and_the_floor_it_reserves(tmp_path, tiny_compress_dir, monkeypatch):
    """The bench the demo runs (both widths, fixed and real text, concurrency 1, --requests
    at most, sized to its allotment) and the seconds it sets aside for the bench's minimum:
    each request priced from the served model's FLOPs at a measured matmul speed."""
    from ofaserve import demo
    from ofaserve.benchmarks import run as bench
    from ofaserve.benchmarks import request_budget
    from ofaserve.compress.submodel import flops, full_width_config
    from ofaserve.core.manifests import read_manifest

    work = tmp_path / "demo"
    shutil.copytree(tiny_compress_dir, work / "compress")
    args = demo.build_parser().parse_args(["--workdir", str(work), "--width_mult", "0.75", "--seq_len", "32"])
    argv = demo.bench_argv(args, work, "127.0.0.1:9", work / "repo", ["bert_w100", "bert_w75"], 41.4)
    got = bench.build_parser().parse_args(argv)
    assert (got.models, got.concurrency, got.real_text, got.no_fixed) == ("bert_w100,bert_w75", [1], True, False)
    assert (got.requests, got.time_budget_s, got.batch_size, got.seq_len) == (30, 41.0, 16, 32)
    assert "--time_budget_s" not in demo.bench_argv(args, work, "u", work, ["m"], None)

    monkeypatch.setattr(request_budget, "matmul_gflops", lambda: (2.0, "f32"))  # a slow CPU: the floor is well above its margins
    floor, priced = demo.bench_floor(args, work, redo=set())
    cm = read_manifest(work / "compress", stage="compress")
    full = full_width_config(cm["model_config"])
    fixed_ms = flops(full, 16, 32) / 2e6  # real text: at the longest sequence the exports serve
    real_ms = flops(full, 16, max(32, cm["max_seq_length"])) / 2e6
    expect = {("bert_w100", "fixed"): fixed_ms, ("bert_w100", "real"): real_ms,
              ("bert_w75", "fixed"): 0.75 * fixed_ms, ("bert_w75", "real"): 0.75 * real_ms}
    assert priced["estimated_latency_ms"] == {f"{m}/{w}": round(v, 1) for (m, w), v in expect.items()}
    assert priced["requests_at_floor"] == request_budget.MIN_REQUESTS == 20 and priced["matmul_gflops"] == 2.0
    assert floor == pytest.approx(request_budget.floor_seconds(expect, requests=20, concurrency_levels=1, rounds=3, warmup=3,
                                                        baselines={k: 1 for k in expect}))
    few = demo.build_parser().parse_args(["--workdir", str(work), "--width_mult", "0.75", "--requests", "8"])
    assert demo.bench_floor(few, work, redo=set())[1]["requests_at_floor"] == 8  # never more than asked for
    from ofaserve.compress.bert import hf_config, resolve_model_path
    retrain, seq = demo._served_model(args, work, {"compress"})  # compress will run: the model it starts from
    assert retrain["hidden_size"] == hf_config(resolve_model_path("minilm-l6"))["hidden_size"] != \
        cm["model_config"]["hidden_size"]
    from ofaserve.compress.options import PROFILES
    assert seq == PROFILES[args.profile]["max_seq_length"]

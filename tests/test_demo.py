"""`ofaserve demo` end to end on the tiny model (compress output reused): exports, the
repository, a real Triton server, gRPC classification, the benchmark, the summary, and
no server left behind."""
import json
import shutil
from pathlib import Path

import psutil
import pytest


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
    """What the screen shows of compress and export instead of their printed reports."""
    from ofaserve import demo
    from ofaserve.core.manifests import read_manifest

    cm = read_manifest(tiny_compress_dir, stage="compress")
    line = demo.compress_summary(cm)
    assert "\n" not in line and line.startswith("compress: teacher ")
    assert f"teacher {cm['results']['teacher']['dev']['accuracy']:.4f}" in line
    assert all(f"{w} {r['dev']['accuracy']:.4f}" in line for w, r in cm["results"]["widths"].items())
    export = {"params": {"total": 1_234_567}, "dev_score": {"metric": "accuracy", "value": 0.8},
              "parity": {"ok": True, "max_abs_diff": 2e-6,
                         "shapes": {"16x128": {"max_abs_diff": {"onnx": 1e-6, "openvino_packed": 2e-6}}},
                         "dev_score": {"metric": "accuracy", "runtime": "onnx", "exported": 0.8, "n": 1248},
                         "budget": {"dev_sentences": 460, "dev_total": 1248, "cut": "later dev passes on 460 ..."}},
              "precisions": {"fp32": {"accuracy": 0.79, "dev_sentences": 460},
                             "openvino_bf16": {"accuracy": 0.79, "delta_vs_fp32": 0.0},
                             "onnx_fp16": {"skipped": "not asked for"}}}
    line = demo.export_summary("0.75", export)
    assert "\n" not in line and "onnx, openvino_packed match the supernet (max diff 2.0e-06)" in line
    assert "dev accuracy 0.8000 through onnx" in line and "on 460 of 1248 dev sentences: openvino_bf16 +0.0000" in line
    assert "onnx_fp16" not in line

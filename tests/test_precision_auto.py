"""`--precision auto` and the records of what really executed, with real runners on the tiny export."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import ExportManifest
from ofaserve.core.manifests import read_manifest
from ofaserve.runtime import capabilities
from ofaserve.runtime.runtimes import RuntimeConfigError, load_runner, openvino_capabilities
from ofaserve.serve.precision import candidates, choice_table, choose_precision, time_interleaved

ALL = ["BF16", "FP32", "INT8"]


def _manifest(bf16_gate: bool = True, int8: bool = True) -> ExportManifest:
    artifacts = {"onnx": "onnx/model.onnx", "onnx_packed": "onnx/model_packed.onnx"}
    records = {"openvino_bf16": {"gate_passed": bf16_gate, "delta_vs_fp32": 0.001, "agreement_with_fp32": 0.99,
                                 **({} if bf16_gate else {"gate_failed_because": "dev accuracy drop 0.0100 > 0.005"})},
               "openvino_packed_int8": {"shipped": int8, "delta_vs_fp32": -0.002, "agreement_with_fp32": 0.985}}
    if int8:
        artifacts["openvino_packed_int8"] = "openvino/model_packed_int8.xml"
    return ExportManifest(artifacts=artifacts, precisions=records)


def test_candidates_follow_the_gate_and_the_cpu():
    found, skipped = candidates(_manifest(), ALL)
    assert [(c.precision, c.artifact) for c in found] == [
        ("fp32", "onnx_packed"), ("bf16", "onnx_packed"), ("int8", "openvino_packed_int8")]
    assert skipped == {}
    found, skipped = candidates(_manifest(), ["FP32", "INT8"])  # an AVX2-only CPU
    assert [c.precision for c in found] == ["fp32", "int8"] and "no BF16" in skipped["bf16"]
    found, skipped = candidates(_manifest(bf16_gate=False, int8=False), ALL)
    assert [c.precision for c in found] == ["fp32"]
    assert "drop" in skipped["bf16"] and "int8" in skipped


def test_time_interleaved_runs_every_runner_on_every_workload():
    calls = []
    runners = {"a": lambda i, t: calls.append(("a", i.shape)), "b": lambda i, t: calls.append(("b", i.shape))}
    batches = {"w1": [(np.zeros((2, 3)), None)], "w2": [(np.zeros((1, 5)), None), (np.zeros((1, 4)), None)]}
    out = time_interleaved(runners, batches, budget_s=0.0, min_rounds=3)
    assert {n: {w: v["calls"] for w, v in per.items()} for n, per in out.items()} == {
        "a": {"w1": 3, "w2": 3}, "b": {"w1": 3, "w2": 3}}
    assert len(calls) == 2 * 2 + 2 * 3 * 2  # one warm-up call per runner and workload, then the rounds


def test_bf16_runs_bf16_or_says_what_is_missing(tiny_export_dir):
    """On a CPU with BF16 the compiled model really runs bf16; elsewhere asking for it is an error."""
    onnx_path = tiny_export_dir / read_manifest(tiny_export_dir, "export")["artifacts"]["onnx"]
    if "BF16" in openvino_capabilities():
        run = load_runner("openvino", onnx_path, "bf16", 1)
        assert run.executed["inference_precision_hint"] == "bf16"
        assert load_runner("openvino", onnx_path, "fp32", 1).executed["inference_precision_hint"] == "f32"
    else:
        with pytest.raises(RuntimeConfigError, match="needs a CPU with BF16"):
            load_runner("openvino", onnx_path, "bf16", 1)


def test_export_records_only_precisions_that_executed(tiny_export_dir):
    m = read_manifest(tiny_export_dir, "export")
    bf16 = m["precisions"]["openvino_bf16"]
    if capabilities.current().bf16:  # what the export decided by
        assert bf16["executed"]["inference_precision_hint"] == "bf16"
        assert bf16["gate_passed"] == (bf16["delta_vs_fp32"] >= -bf16["max_drop"]
                                       and bf16["agreement_with_fp32"] >= bf16["min_agreement"])
    else:
        assert "no BF16" in bf16["skipped"] and "accuracy" not in bf16
    for name in ("openvino_int8", "openvino_packed_int8"):
        rec = m["precisions"].get(name)
        if rec and rec.get("shipped"):
            assert rec["executed"]["precision"] == "int8" and name in m["artifacts"]


def test_choose_precision_times_the_real_candidates(tiny_export_dir):
    m = ExportManifest.read(tiny_export_dir)
    choice = choose_precision(tiny_export_dir, m, threads=1, budget_s=0.5)
    names = [r["precision"] for r in choice["candidates"]]
    expected, _ = candidates(m, list(capabilities.current().openvino))
    assert names == [c.precision for c in expected]
    fastest = min(choice["candidates"], key=lambda r: r["score_ms"])
    assert choice["chosen"] == fastest["precision"] and choice["artifact"] == fastest["artifact"]
    for r in choice["candidates"]:
        assert r["executed"] == r["precision"]  # the runner read back what it compiled
        assert r["calls"]["fixed_16x128"] >= 5
    assert choice["chosen"] in choice_table(choice)


def test_repository_auto_serves_the_choice_and_keeps_the_others(tiny_export_dir, tmp_path):
    from ofaserve.serve.repository import build_repository
    from ofaserve.benchmarks.inprocess import read_config_parameters

    manifest = build_repository([tiny_export_dir], tmp_path / "repo", auto_budget_s=0.5).to_dict()
    (model,) = manifest["models"]
    info = manifest["models"][model]
    choice = info["precision_choice"]
    assert info["precision"] == choice["chosen"]
    params = read_config_parameters(tmp_path / "repo" / f"{model}_encoder" / "config.pbtxt")
    assert params["precision"] == choice["chosen"]
    version = tmp_path / "repo" / f"{model}_encoder" / "1"
    assert (version / params["model_file"]).is_file()
    if any(r["precision"] == "int8" for r in choice["candidates"]):
        assert (version / "model.xml").is_file() and (version / "model.bin").is_file()
    assert json.loads((tmp_path / "repo" / "manifest.json").read_text())["precision"] == "auto"


def test_forced_precisions_fail_clearly(tiny_export_dir, tmp_path):
    from ofaserve.serve.repository import build_repository

    with pytest.raises(OfaserveError, match="runs on runtime openvino"):
        build_repository([tiny_export_dir], tmp_path / "r1", runtime="onnxruntime", precision="int8")
    if not capabilities.current().bf16:
        with pytest.raises(OfaserveError, match="needs a CPU with BF16"):
            build_repository([tiny_export_dir], tmp_path / "r2", precision="bf16")


def test_serve_says_what_runs_and_warns_on_another_cpu(tiny_export_dir, tmp_path):
    from ofaserve.serve.cli import precision_lines
    from ofaserve.serve.repository import build_repository

    manifest = build_repository([tiny_export_dir], tmp_path / "repo", auto_budget_s=0.2).to_dict()
    (model,) = manifest["models"]
    chosen = manifest["models"][model]["precision"]
    lines = precision_lines(tmp_path / "repo")
    assert lines[0].startswith(f"{model}: precision {chosen} (auto: fastest of ")
    assert not any(line.startswith("warning") for line in lines)  # timed on this very CPU
    path = tmp_path / "repo" / "manifest.json"
    data = json.loads(path.read_text())
    data["models"][model]["precision_choice"]["capabilities"] = ["FP32"]  # as if timed on another CPU
    path.write_text(json.dumps(data))
    warning = [line for line in precision_lines(tmp_path / "repo") if line.startswith("warning")]
    assert len(warning) == 1 and "rebuild the repository here" in warning[0]


def test_test_accuracy_is_reported_for_servable_variants(precision_inputs):
    """With a test split, FP32 and every variant that can be served get their test accuracy
    once, through the runner that would serve them (the tiny task's dev split stands in)."""
    from ofaserve.export import precisions

    p = precision_inputs
    res, arts = precisions.precision_variants(p.folder, p.dev, p.tokenizer, p.spec, p.fp32_logits, p.fp32_accuracy,
                                              train=p.train, fp16=False, test=p.dev)
    assert res["fp32"]["test_accuracy"] == p.fp32_accuracy and res["fp32"]["test_sentences"] == len(p.dev)
    for name in ("openvino_int8", "openvino_packed_int8"):
        assert ("test_accuracy" in res[name]) == (name in arts)
        if name in arts:
            assert res[name]["test_delta_vs_fp32"] == pytest.approx(res[name]["test_accuracy"] - p.fp32_accuracy)
    assert ("test_accuracy" in res["openvino_bf16"]) == bool(res["openvino_bf16"].get("gate_passed"))

def test_a_lone_candidate_is_not_timed(tiny_export_dir, tmp_path):
    """Where fp32 is the only candidate (no BF16, no shipped INT8) there is nothing to time."""
    import shutil

    folder = tmp_path / "exp"
    shutil.copytree(tiny_export_dir, folder)
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    for key in ("openvino_int8", "openvino_packed_int8"):
        m["artifacts"].pop(key, None)
    m["precisions"]["openvino_bf16"] = {"skipped": "as on a CPU without BF16"}
    choice = choose_precision(folder, ExportManifest.from_dict(m), threads=1, budget_s=60)
    assert choice["chosen"] == "fp32" and choice["workloads"] == [] and choice["budget_s"] == 0.0
    assert choice["candidates"][0]["executed"] == "fp32"
    assert "fp32" in choice_table(choice)

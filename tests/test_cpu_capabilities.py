"""Every CPU-dependent decision, under the capability sets of each CPU this project meets
(``simulated_cpu``: AVX2-only, AVX-512 + bf16 + VNNI, AMX), on whichever CPU runs the tests."""
from __future__ import annotations


import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import ExportManifest, RepoManifest, RepoModel
from ofaserve.core.machine import cpu_flags
from ofaserve.core.manifests import read_manifest
from ofaserve.runtime import capabilities, runtimes


def test_detected_capabilities_are_this_machines():
    caps = capabilities.detect()
    assert caps.openvino == tuple(runtimes.openvino_capabilities())
    assert caps.flags == frozenset(cpu_flags())
    assert caps.bf16 == ("BF16" in caps.openvino)
    assert caps.fast_int8 == bool({"avx512_vnni", "avx_vnni", "amx_int8"} & caps.flags)


def test_profiles_differ_where_the_product_branches():
    avx2, epyc, amx = (capabilities.PROFILES[k] for k in ("avx2", "avx512_bf16_vnni", "amx"))
    assert (avx2.bf16, avx2.fast_int8, avx2.avx512, avx2.int8) == (False, False, False, True)
    assert (epyc.bf16, epyc.fast_int8, epyc.avx512) == (True, True, True)
    assert (amx.bf16, amx.fast_int8) == (True, True) and "amx_int8" in amx.flags


def _manifest_with_every_variant() -> dict:
    return ExportManifest(artifacts={"onnx": "onnx/model.onnx", "onnx_packed": "onnx/model_packed.onnx",
                                     "openvino_packed_int8": "openvino/model_packed_int8.xml"},
                          precisions={"openvino_bf16": {"gate_passed": True, "delta_vs_fp32": 0.0,
                                                        "agreement_with_fp32": 1.0},
                                      "openvino_packed_int8": {"shipped": True, "delta_vs_fp32": -0.001,
                                                               "agreement_with_fp32": 0.99}})


def test_precision_auto_candidates_follow_the_cpu(simulated_cpu):
    from ofaserve.serve.precision import candidates

    found, skipped = candidates(_manifest_with_every_variant(), list(capabilities.current().openvino))
    names = [c.precision for c in found]
    if simulated_cpu.bf16:
        assert names == ["fp32", "bf16", "int8"] and skipped == {}
    else:
        assert names == ["fp32", "int8"]
        assert skipped["bf16"] == f"this CPU has no BF16 (OpenVINO capabilities: {simulated_cpu.describe()})"


def test_forced_bf16_is_refused_where_the_cpu_has_none(simulated_cpu, tiny_export_dir, tmp_path):
    """``repo --precision bf16``: refused before anything is written on a CPU without bf16;
    written as asked on one with it (building a repository runs no model)."""
    from ofaserve.serve.repository import build_repository

    out = tmp_path / "repo"
    if not simulated_cpu.bf16:
        with pytest.raises(OfaserveError, match="precision bf16 needs a CPU with BF16 .*FP32 INT8 BIN"):
            build_repository([tiny_export_dir], out, precision="bf16")
        assert not out.exists()
        return
    manifest = build_repository([tiny_export_dir], out, precision="bf16").to_dict()
    assert {m["precision"] for m in manifest["models"].values()} == {"bf16"}


def test_export_records_bf16_only_where_it_executed(simulated_cpu, tiny_export_dir):
    """The export's bf16 record under each CPU: skipped, naming the capabilities, without
    bf16; with bf16 claimed, either really executed (this CPU has it) or skipped with the
    runner's refusal (this CPU has none): never an accuracy for bf16 that did not run."""
    from ofaserve.export import precisions

    src = tiny_export_dir / read_manifest(tiny_export_dir, "export")["artifacts"]["onnx"]
    calls = []

    def record(run, **fields):
        calls.append(fields)
        return {"accuracy": 0.5, **fields}

    rec = precisions._bf16(src, record)
    assert rec["capabilities"] == list(simulated_cpu.openvino)
    if not simulated_cpu.bf16:
        assert rec["skipped"].startswith("this CPU has no BF16") and not calls
    elif capabilities.detect().bf16:
        assert calls and rec["executed"]["inference_precision_hint"] == "bf16"
    else:
        assert "needs a CPU with BF16" in rec["skipped"] and not calls


def test_demo_builds_int8_only_where_it_can_be_fast(simulated_cpu):
    from ofaserve import demo
    from ofaserve.core.time_budget import Budget

    budget = Budget(600, demo.SHARES)
    flags = demo._served_only(budget)
    cuts = {c.what: c for c in budget.stages["export"].cuts}
    if simulated_cpu.fast_int8:
        assert "--no_int8_plain" in flags and "--no_int8" not in flags
    else:
        assert "--no_int8" in flags and "--no_int8_plain" not in flags
        assert "INT8 runs slower than f32 here" in cuts["OpenVINO INT8 variant"].why


def test_serve_warns_when_the_precision_was_timed_on_another_cpu(simulated_cpu, tmp_path):
    from ofaserve.serve.cli import precision_lines

    timed_on = capabilities.PROFILES["amx"]
    choice = {"candidates": [{"precision": "fp32"}, {"precision": "int8"}], "machine": {"cpu": "a Xeon"},
              "capabilities": list(timed_on.openvino)}
    RepoManifest(target="cpu", runtime="openvino", precision="auto", models={"bert_w67": RepoModel(
        width_mult=0.6667, labels=["a", "b"], max_seq_length=128, encoder_artifact="openvino_packed_int8",
        precision="int8", source_export="w0.6667", precision_choice=choice)}).write(tmp_path)
    lines = precision_lines(tmp_path)
    assert lines[0] == "bert_w67: precision int8 (auto: fastest of fp32, int8 on a Xeon)"
    warnings = [line for line in lines if line.startswith("warning")]
    if sorted(simulated_cpu.openvino) == sorted(timed_on.openvino):
        assert warnings == []
    else:
        assert len(warnings) == 1 and simulated_cpu.describe() in warnings[0]


def test_a_figure_under_an_isa_cap_says_so(monkeypatch):
    from ofaserve.core.machine import describe, machine_info

    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OFASERVE_SIMULATED_CPU"):
        monkeypatch.delenv(variable, raising=False)
    plain = machine_info()
    assert "isa_cap" not in plain and "capped" not in describe(plain)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = machine_info()
    assert capped["isa_cap"] == "AVX2"
    assert describe(capped).endswith("; oneDNN capped at AVX2)")


def test_current_is_the_whole_run_simulation_or_this_cpu():
    """``OFASERVE_TEST_CPU`` (conftest) puts the whole run on one profile; unset, ``current``
    is what this machine reports."""
    import os

    from tests.conftest import SIMULATED_CPU_ENV

    name = os.environ.get(SIMULATED_CPU_ENV)
    expected = capabilities.PROFILES[name] if name else capabilities.detect()
    assert capabilities.current() == expected


def test_the_simulated_cpu_record_maker_decides_as_that_cpu(monkeypatch):
    """``benchmarks.records.simulated_cpu`` takes a profile's capabilities and caps oneDNN to
    its instruction set, so a figure made with it says so (``machine.isa_cap``)."""
    from benchmarks.records import simulated_cpu
    from ofaserve.core.machine import ISA_CAP_VARIABLES, SIMULATED_CPU_VARIABLE, describe, machine_info

    monkeypatch.setattr(capabilities, "current", capabilities.current)  # restored after the test
    for variable in (*ISA_CAP_VARIABLES, SIMULATED_CPU_VARIABLE):
        monkeypatch.setenv(variable, "")
    assert set(simulated_cpu.ISA_CAP) == set(capabilities.PROFILES)
    simulated_cpu.simulate("avx2")
    assert capabilities.current() == capabilities.PROFILES["avx2"] and not capabilities.current().bf16
    assert machine_info()["isa_cap"] == "AVX2" and machine_info()["simulated_cpu"] == "avx2"
    assert describe(machine_info()).endswith("; oneDNN capped at AVX2; deciding as the simulated avx2 CPU)")
    with pytest.raises(SystemExit) as e:
        simulated_cpu.main(["--profile", "avx2"])
    assert e.value.code == 2

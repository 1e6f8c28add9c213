"""Precision variants of an export, each measured on dev against FP32 before it ships.

- ``onnx_fp16``: FP16 weights for the GPU target (TensorRT builds FP16 engines from the
  FP32 graph; this one is for ONNX Runtime on a GPU), checked here on the CPU.
- ``openvino_bf16``: the same ONNX graph run by OpenVINO in bf16. Recorded only where the
  CPU has BF16 and OpenVINO really compiled bf16 (elsewhere it silently runs f32).
- ``openvino_int8`` / ``openvino_packed_int8``: NNCF post-training INT8 IR of the plain and
  packed graphs, calibrated on train sentences (``ofaserve.export.int8``).

Every variant passes the same gate to be served (``int8.Gate``): the task's main dev metric
within ``INT8_MAX_DROP`` of FP32, and for classification ``INT8_MIN_AGREEMENT`` of FP32's
predictions unchanged (the metric alone can hide churn: a variant can lose little accuracy
while changing many answers; benchmarks/results/history/ has such a case), for regression
every score within ``int8.MAX_SCORE_DIFF`` of FP32's.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.core.tasks import Split, TaskSpec
from ofaserve.core.vocabulary import Precision, Runtime
from ofaserve.export import int8 as int8_variant
from ofaserve.export import artifact_logits
from ofaserve.export.parity import dev_eval
from ofaserve.runtime import capabilities as cpu
from ofaserve.runtime.runtimes import RuntimeConfigError, load_runner

log = logging.getLogger("ofaserve.export")

INT8_MAX_DROP = int8_variant.INT8_MAX_DROP
INT8_MIN_AGREEMENT = int8_variant.INT8_MIN_AGREEMENT


def gate(spec: TaskSpec) -> int8_variant.Gate:
    """Read at call time, so a caller (or a test) that changes the module's limits is obeyed."""
    return int8_variant.Gate(INT8_MAX_DROP, INT8_MIN_AGREEMENT, spec)


class _Recorder:
    """Dev metrics of one variant against the FP32 logits, with the gate's verdict."""

    def __init__(self, dev: Split, tokenizer, spec: TaskSpec, fp32_logits: np.ndarray, fp32_acc: float):
        self.dev, self.tokenizer, self.spec = dev, tokenizer, spec
        self.fp32_logits, self.fp32_acc = fp32_logits, fp32_acc

    def __call__(self, fn, **extra) -> dict[str, Any]:
        _, logits = dev_eval(fn, self.dev, self.tokenizer, self.spec)
        judge = gate(self.spec)
        r = judge.measure(logits, self.fp32_logits, self.dev.labels)
        reasons = judge.reasons(r)
        r.update(extra, gate_passed=not reasons, max_drop=judge.max_drop,
                 **({"max_score_diff": judge.max_score_diff} if judge.regression
                    else {"min_agreement": judge.min_agreement}))
        if reasons:
            r["gate_failed_because"] = "; ".join(reasons)
        return r


def precision_variants(folder: Path, dev: Split, tokenizer, spec: TaskSpec, fp32_logits: np.ndarray,
                       fp32_acc: float, *, train: Split | None = None, pad_id: int = 0, int8: bool = True,
                       int8_plain: bool = True, progress: bool = False, fp16: bool = True,
                       test: Split | None = None) -> tuple[dict, dict]:
    """(records by variant, shipped artifacts by name) for the export in ``folder``; INT8
    calibrates on ``train``. With ``test``, the test accuracy of FP32 and of every CPU
    variant that can be served is measured once, after the gate was decided on dev."""
    record = _Recorder(dev, tokenizer, spec, fp32_logits, fp32_acc)
    results: dict[str, Any] = {"fp32": {spec.main_metric: fp32_acc, "runtime": "onnxruntime"}}
    artifacts: dict[str, str] = {}
    src = folder / "onnx" / "model.onnx"
    results["onnx_fp16"] = (_fp16(folder, src, record, artifacts) if fp16
                            else {"skipped": "not asked for (--no_fp16: the GPU target's variant)"})
    results["openvino_bf16"] = _bf16(src, record)
    if int8:
        results.update(_int8(folder, dev, tokenizer, spec, fp32_logits, train, pad_id, artifacts, progress,
                             int8_plain))
    if test is not None and len(test):
        _test_accuracy(folder, results, artifacts, test, tokenizer, spec, pad_id)
    return results, artifacts


def _test_accuracy(folder: Path, results: dict, artifacts: dict, test: Split, tokenizer, spec: TaskSpec,
                   pad_id: int) -> None:
    """Test accuracy, reported once: never used to choose anything."""
    src = folder / "onnx" / "model.onnx"
    servable = {"fp32": lambda: artifact_logits.onnxruntime(src)}
    if results["openvino_bf16"].get("gate_passed"):
        servable["openvino_bf16"] = lambda: artifact_logits.openvino(src, Precision.BF16)
    for name in ("openvino_int8", "openvino_packed_int8"):
        if name in artifacts:
            servable[name] = lambda name=name: _int64(load_runner(Runtime.OPENVINO, folder / artifacts[name], Precision.INT8,
                                                                   artifact_logits.threads(), pad_id=pad_id))
    fp32_test = None
    for name, make in servable.items():
        m, _ = dev_eval(make(), test, tokenizer, spec)
        fp32_test = m[spec.main_metric] if fp32_test is None else fp32_test
        results[name].update({f"test_{k}": v for k, v in m.items() if k != "n"},
                             test_delta_vs_fp32=m[spec.main_metric] - fp32_test, test_sentences=m["n"])


def _int64(run):
    return lambda ids, types: run(np.asarray(ids, np.int64), np.asarray(types, np.int64))


def _fp16(folder: Path, src: Path, record: _Recorder, artifacts: dict) -> dict[str, Any]:
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        fp16_path = folder / "onnx" / "model_fp16.onnx"
        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(fp16_path))
        try:
            r = record(artifact_logits.onnxruntime(fp16_path), runtime="onnxruntime-cpu", target="gpu")
        except Exception as e:  # CPU EP may lack fp16 kernels: fall back to OpenVINO running it
            log.info("ORT CPU cannot run the FP16 model (%s); measuring with OpenVINO f32 on fp16 weights", e)
            r = record(artifact_logits.openvino(fp16_path, Precision.FP32),
                       runtime="openvino-f32 (fp16 weights; fp16 activations not emulated)", target="gpu")
        artifacts["onnx_fp16"] = "onnx/model_fp16.onnx"
        return r
    except Exception as e:
        log.warning("FP16 conversion failed: %s", e)
        return {"error": str(e)}


def _bf16(src: Path, record: _Recorder) -> dict[str, Any]:
    """OpenVINO bf16 on the FP32 graph, recorded only where bf16 really executes."""
    capabilities = list(cpu.current().openvino)
    if "BF16" not in capabilities:
        return {"skipped": f"this CPU has no BF16 (OpenVINO capabilities: {' '.join(capabilities)})",
                "capabilities": capabilities}
    try:
        run = load_runner(Runtime.OPENVINO, src, Precision.BF16, artifact_logits.threads())
    except RuntimeConfigError as e:
        return {"skipped": str(e), "capabilities": capabilities}
    return record(_int64(run), runtime="openvino", artifact="onnx", executed=run.executed, capabilities=capabilities)


def _int8(folder: Path, dev: Split, tokenizer, spec: TaskSpec, fp32_logits: np.ndarray, train: Split | None,
          pad_id: int, artifacts: dict, progress: bool, plain: bool = True) -> dict[str, Any]:
    """NNCF INT8 IR of the plain and packed graphs (``ofaserve.export.int8``); ``plain``
    False: of the packed graph only, where there is one."""
    if not train:
        return {"openvino_int8": {"skipped": "no train sentences to calibrate on"}}
    packed = folder / "onnx" / "model_packed.onnx"
    try:
        records, shipped = int8_variant.quantize_int8(
            folder / "onnx" / "model.onnx", folder, int8_variant.calibration_batches(train, tokenizer),
            int8_variant.dev_set(dev, tokenizer), fp32_logits, pad_id=pad_id,
            packed_onnx_path=packed if packed.is_file() else None, max_drop=INT8_MAX_DROP,
            min_agreement=INT8_MIN_AGREEMENT, progress=progress, plain=plain or not packed.is_file(), spec=spec)
    except Exception as e:  # a precision option, not the contract: the export ships without it
        log.warning("OpenVINO INT8 quantization failed: %s", e)
        return {"openvino_int8": {"error": f"{type(e).__name__}: {e}"}}
    for name, rec in records.items():
        if rec.get("not_shipped_because"):
            log.info("%s not shipped: %s", name, rec["not_shipped_because"])
    artifacts.update(shipped)
    return records

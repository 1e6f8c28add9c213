"""Precision variants of an export, each measured on dev against FP32 before it ships."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.export import runners
from ofaserve.export.build import quiet_logs
from ofaserve.export.parity import dev_eval

log = logging.getLogger("ofaserve.export")

INT8_MAX_DROP = 0.005
# Accuracy alone can hide churn: dynamic INT8 of the full-profile MiniLM lost only 0.4 pt of
# dev accuracy at width 1.0 but changed 3.4% of predictions. Ship INT8 only when it also
# keeps >= 98% of the FP32 predictions.
INT8_MIN_AGREEMENT = 0.98


def precision_variants(folder: Path, dev, tokenizer, fp32_logits: np.ndarray, fp32_acc: float,
                       int8: bool = True) -> tuple[dict, dict]:
    """FP16 ONNX (GPU target), OpenVINO bf16, ORT dynamic INT8: dev accuracy vs FP32."""
    import onnx

    results: dict[str, Any] = {"fp32": {"accuracy": fp32_acc, "runtime": "onnxruntime"}}
    artifacts: dict[str, str] = {}
    fp32_pred = fp32_logits.argmax(-1)

    def record(name, fn, extra=None):
        m, logits = dev_eval(fn, dev, tokenizer)
        r = {"accuracy": m["accuracy"], "f1": m["f1"], "delta_vs_fp32": m["accuracy"] - fp32_acc,
             "agreement_with_fp32": float(np.mean(logits.argmax(-1) == fp32_pred)),
             "max_abs_logits_diff_vs_fp32": float(np.abs(logits - fp32_logits).max())}
        r.update(extra or {})
        results[name] = r
        return r

    src = folder / "onnx" / "model.onnx"
    # -- FP16 ONNX (for GPUs; checked here on the CPU EP)
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        fp16_path = folder / "onnx" / "model_fp16.onnx"
        proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(proto, str(fp16_path))
        try:
            record("onnx_fp16", runners.onnxruntime(fp16_path), {"runtime": "onnxruntime-cpu", "target": "gpu"})
        except Exception as e:  # CPU EP may lack fp16 kernels: fall back to OpenVINO running it
            log.info("ORT CPU cannot run the FP16 model (%s); measuring with OpenVINO f32 on fp16 weights", e)
            record("onnx_fp16", runners.openvino(fp16_path, "f32"),
                   {"runtime": "openvino-f32 (fp16 weights; fp16 activations not emulated)", "target": "gpu"})
        artifacts["onnx_fp16"] = "onnx/model_fp16.onnx"
    except Exception as e:
        log.warning("FP16 conversion failed: %s", e)
        results["onnx_fp16"] = {"error": str(e)}
    # -- OpenVINO bf16 (this CPU has avx512_bf16): a deliberate, accuracy-checked option
    try:
        record("openvino_bf16", runners.openvino(src, "bf16"), {"runtime": "openvino", "artifact": "onnx"})
    except Exception as e:
        log.warning("OpenVINO bf16 evaluation failed: %s", e)
        results["openvino_bf16"] = {"error": str(e)}
    # -- ONNX Runtime dynamic INT8: shipped only within 0.5 points of FP32 and >= 98% agreement
    if int8:
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q_path = folder / "onnx" / "model_int8.onnx"
            with quiet_logs(logging.INFO):  # quantize_dynamic logs one INFO line per tensor
                quantize_dynamic(str(src), str(q_path), weight_type=QuantType.QInt8)
            r = record("onnx_int8_dynamic", runners.onnxruntime(q_path), {"runtime": "onnxruntime"})
            reasons = []
            if r["delta_vs_fp32"] < -INT8_MAX_DROP:
                reasons.append(f"dev accuracy drop {-r['delta_vs_fp32']:.4f} > {INT8_MAX_DROP}")
            if r["agreement_with_fp32"] < INT8_MIN_AGREEMENT:
                reasons.append(f"agrees with FP32 on {r['agreement_with_fp32']:.2%} of dev < {INT8_MIN_AGREEMENT:.0%}")
            r.update(shipped=not reasons, max_drop=INT8_MAX_DROP, min_agreement=INT8_MIN_AGREEMENT)
            if reasons:
                r["not_shipped_because"] = "; ".join(reasons)
                q_path.unlink()
                log.info("INT8 not shipped: %s", r["not_shipped_because"])
            else:
                artifacts["onnx_int8"] = "onnx/model_int8.onnx"
        except Exception as e:
            log.warning("INT8 quantization failed: %s", e)
            results["onnx_int8_dynamic"] = {"error": str(e)}
    return results, artifacts

"""The GPU runtime (``onnxruntime-trt``: onnxruntime-gpu with TensorRT) on the tiny export.

On a CPU machine its failures must be one-line errors that name what to install, never a
session that quietly runs somewhere else. Where CUDA and TensorRT exist, its logits match
the FP32 ONNX model run on the CPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ofaserve.core.manifests import read_manifest
from ofaserve.runtime.runtimes import RuntimeConfigError, load_runner

TRT = "TensorrtExecutionProvider"
# TensorRT runs "fp32" matmuls in TF32 on Ampere and later; TF32 and FP16 both keep 11
# significant bits (unit roundoff 2^-11). Logits within 16 of those, relative to their size.
GPU_MAX_REL = 16 * 2.0 ** -11


def _providers() -> list[str]:
    import onnxruntime as ort
    return ort.get_available_providers()


def _onnx(tiny_export_dir) -> Path:
    return tiny_export_dir / read_manifest(tiny_export_dir, stage="export")["artifacts"]["onnx"]


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and message.startswith("runtime 'onnxruntime-trt'"), message
    return message


def test_trt_without_the_provider_names_what_to_install(tiny_export_dir):
    if TRT in _providers():
        pytest.skip(f"this onnxruntime has {TRT}: there is no missing provider to report")
    with pytest.raises(RuntimeConfigError) as e:
        load_runner("onnxruntime-trt", _onnx(tiny_export_dir), "fp16")
    message = _one_line(e)
    assert "pip uninstall -y onnxruntime && pip install onnxruntime-gpu tensorrt" in message, message


def test_trt_that_does_not_load_is_an_error_not_a_fallback(tiny_export_dir, tmp_path, monkeypatch):
    """onnxruntime-gpu lists TensorRT even where libnvinfer or the GPU is missing; a session
    then warns and runs on CUDA or the CPU. Here the CPU onnxruntime reports the provider
    list such an install reports, so the real session falls back as it would there."""
    import onnxruntime as ort

    if TRT in _providers():
        pytest.skip(f"this onnxruntime has {TRT}: its sessions do not fall back here")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, "CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeConfigError) as e:
        load_runner("onnxruntime-trt", _onnx(tiny_export_dir), "fp16", cache_dir=str(tmp_path / "cache"))
    message = _one_line(e)
    assert "TensorRT did not load" in message and "pip install tensorrt" in message, message
    assert "['CPUExecutionProvider']" in message, message


def _cuda_and_tensorrt() -> str | None:
    """Why the GPU comparison cannot run here, or None."""
    if not Path("/proc/driver/nvidia/version").exists():
        return "needs a CUDA GPU (no NVIDIA driver on this machine)"
    if TRT not in _providers():
        return f"needs onnxruntime-gpu with TensorRT (pip install onnxruntime-gpu tensorrt); this one offers {_providers()}"
    return None


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_runner_matches_fp32_on_the_cpu(tiny_export_dir, tmp_path, precision):
    why = _cuda_and_tensorrt()
    if why:
        pytest.skip(why)
    import onnxruntime as ort

    path = _onnx(tiny_export_dir)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 128, size=(16, 128), dtype=np.int64)
    ids[:, 0] = 2
    ids[3, 40:] = 0  # padded rows too
    types = np.zeros_like(ids)
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (want,) = cpu.run(["logits"], {"input_ids": ids, "token_type_ids": types})
    got = load_runner("onnxruntime-trt", path, precision, cache_dir=str(tmp_path / "cache"))(ids, types)
    scale = float(np.abs(want).max())
    assert np.abs(got - want).max() <= GPU_MAX_REL * scale, (precision, float(np.abs(got - want).max()), scale)

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
    assert "pip uninstall -y onnxruntime && pip install 'ofaserve[gpu]'" in message, message


def test_onnxruntime_missing_names_the_extra_that_brings_it(tiny_export_dir, monkeypatch):
    """ONNX Runtime comes from the [cpu] or the [gpu] extra, not the serving install itself."""
    import sys
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    for runtime in ("onnxruntime", "onnxruntime-trt"):
        with pytest.raises(RuntimeConfigError, match=r"pip install 'ofaserve\[cpu\]' .*'ofaserve\[gpu\]'"):
            load_runner(runtime, _onnx(tiny_export_dir), "fp32")


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
        return f"needs onnxruntime-gpu with TensorRT (pip install 'ofaserve[gpu]' in place of [cpu]); this one offers {_providers()}"
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


# --------------------------------------------------------------------------- TensorRT profile
def test_tensorrt_profile_covers_what_the_tokenizer_sends_for_any_max_seq_length(tmp_path):
    """The gpu target's tokenizer truncates to max_seq_length, then pads to a multiple of 16
    (the native backend's batcher merges only equal shapes): an export at 50 sends 64-token
    rows. A TensorRT profile that ends at 50 fails every such request, so the profile, the
    warmups and the tokenizer must agree on the longest length, here from the real
    tokenizer run with the repository's own settings."""
    import json

    from google.protobuf import text_format
    from tokenizers import Tokenizer
    from tritonclient.grpc import model_config_pb2 as mc

    from ofaserve.serve.repository import build_repository
    from tests.test_serve_export_stub import make_tiny_export

    export = make_tiny_export(tmp_path / "export", width_mult=1.0)
    manifest = json.loads((export / "manifest.json").read_text())
    for max_seq in (50, 100, 32):
        manifest["max_seq_length"] = max_seq
        (export / "manifest.json").write_text(json.dumps(manifest))
        repo = tmp_path / f"repo{max_seq}"
        build_repository([export], repo, target="gpu", max_batch_size=8)
        tok_cfg = text_format.Parse((repo / "bert_w100_tokenizer" / "config.pbtxt").read_text(), mc.ModelConfig())
        enc_cfg = text_format.Parse((repo / "bert_w100_encoder" / "config.pbtxt").read_text(), mc.ModelConfig())
        params = {k: v.string_value for k, v in tok_cfg.parameters.items()}
        tok = Tokenizer.from_file(str(repo / "bert_w100_tokenizer" / "1" / "tokenizer.json"))
        tok.enable_truncation(max_length=int(params["max_seq_length"]))
        tok.enable_padding(pad_to_multiple_of=int(params["pad_to_multiple_of"]))
        longest = len(tok.encode("a " * 500).ids)
        assert longest >= max_seq and longest % 16 == 0
        (acc,) = enc_cfg.optimization.execution_accelerators.gpu_execution_accelerator
        profile_max = int(acc.parameters["trt_profile_max_shapes"].split(",")[0].split("x")[1])
        assert profile_max == longest, (max_seq, profile_max, longest)
        warm = {(w.batch_size, w.inputs["input_ids"].dims[0]) for w in enc_cfg.model_warmup}
        assert (8, longest) in warm, warm  # the largest shape served is built at load

"""In-process baseline: the served encoder's own model file and runtime, no server.

The encoder's ``config.pbtxt`` parameters say which runtime, precision and thread count
Triton's python backend uses; the model file sits in ``{m}_encoder/1/``. The baseline
loads the same file with the same settings through the serve package's
``serve.triton_models.encoder.runtimes.load_runner`` when that exists, else through a
small built-in loader for onnxruntime / openvino / paddle. ``--runtimes`` adds other
runtime/precision variants of the same file (e.g. openvino bf16 next to f32).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compress.artifacts import OfaserveError

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- config.pbtxt
_PARAM_RE = re.compile(r'parameters\s*(?::\s*)?\[?\s*\{\s*key\s*:\s*"([^"]+)"\s*value\s*:?\s*\{\s*string_value\s*:\s*"([^"]*)"\s*\}\s*\}', re.S)


def read_config_parameters(config_path: str | os.PathLike) -> dict[str, str]:
    """``parameters { key: "k" value { string_value: "v" } }`` entries of a config.pbtxt."""
    text = Path(config_path).read_text()
    try:  # exact parse when the protobuf model config is importable
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
        cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
        return {k: v.string_value for k, v in cfg.parameters.items()}
    except Exception:
        return dict(_PARAM_RE.findall(text))


def config_params_from_json(config_json: dict[str, Any]) -> dict[str, str]:
    """The same from ``get_model_config(as_json=True)['config']``."""
    params = config_json.get("parameters", {}) or {}
    return {k: (v or {}).get("string_value", "") for k, v in params.items()}


# --------------------------------------------------------------------------- runtime spec
@dataclass(frozen=True)
class RuntimeSpec:
    runtime: str                 # onnxruntime | openvino | paddle
    precision: str = "f32"       # f32 | bf16 | int8 ...
    threads: int | None = None

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.precision}" + (f"/t{self.threads}" if self.threads else "")


_RUNTIME_ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "onnxruntime": "onnxruntime",
                    "ov": "openvino", "openvino": "openvino", "paddle": "paddle",
                    "paddle_inference": "paddle", "pd": "paddle"}
_PARAM_KEYS = {"runtime": ("runtime", "backend_runtime", "engine"),
               "precision": ("precision", "inference_precision", "precision_hint"),
               "threads": ("threads", "num_threads", "intra_op_threads", "cpu_threads")}


def _first(params: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        if params.get(k):
            return params[k]
    return None


def spec_from_params(params: dict[str, str]) -> RuntimeSpec:
    rt = (_first(params, _PARAM_KEYS["runtime"]) or "onnxruntime").lower()
    prec = (_first(params, _PARAM_KEYS["precision"]) or "f32").lower()
    prec = {"fp32": "f32", "float32": "f32", "bfloat16": "bf16", "fp16": "f16"}.get(prec, prec)
    th = _first(params, _PARAM_KEYS["threads"])
    return RuntimeSpec(_RUNTIME_ALIASES.get(rt, rt), prec, int(th) if th and th.isdigit() and int(th) > 0 else None)


def parse_runtime_specs(text: str | None, default_threads: int | None = None) -> list[RuntimeSpec]:
    """``"openvino:bf16,onnxruntime"`` -> specs (precision defaults to f32)."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        rt = _RUNTIME_ALIASES.get(parts[0].lower())
        if rt is None:
            raise OfaserveError(f"unknown runtime {parts[0]!r} in --runtimes (known: onnxruntime, openvino, paddle)")
        prec = parts[1].lower() if len(parts) > 1 and parts[1] else "f32"
        th = int(parts[2]) if len(parts) > 2 and parts[2] else default_threads
        out.append(RuntimeSpec(rt, prec, th))
    return out


# --------------------------------------------------------------------------- loading
def find_model_file(version_dir: Path, runtime: str) -> Path:
    cands = {"onnxruntime": ["*.onnx"], "openvino": ["*.xml", "*.onnx"],
             "paddle": ["*.json", "*.pdmodel"]}[runtime]
    for pat in cands:
        for p in sorted(version_dir.rglob(pat)):
            if runtime == "paddle" and not p.with_suffix(".pdiparams").exists():
                continue
            return p
    raise OfaserveError(f"no model file for runtime {runtime} in {version_dir}")


def _builtin_runner(model_file: Path, spec: RuntimeSpec) -> Runner:
    threads = spec.threads or os.cpu_count() or 1
    if spec.runtime == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]

        def run(ids: np.ndarray, tt: np.ndarray) -> np.ndarray:
            feed = {"input_ids": ids, "token_type_ids": tt}
            return sess.run(None, {n: feed[n] for n in names})[0]
        return run
    if spec.runtime == "openvino":
        import openvino as ov
        core = ov.Core()
        hint = {"f32": "f32", "bf16": "bf16", "f16": "f16"}.get(spec.precision, spec.precision)
        compiled = core.compile_model(str(model_file), "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY"})
        req = compiled.create_infer_request()
        names = [i.get_any_name() for i in compiled.inputs]

        def run(ids: np.ndarray, tt: np.ndarray) -> np.ndarray:
            feed = {"input_ids": ids, "token_type_ids": tt}
            req.infer({n: feed[n] for n in names})
            return np.asarray(req.get_output_tensor(0).data).copy()
        return run
    if spec.runtime == "paddle":
        import paddle.inference as pi
        cfg = pi.Config(str(model_file), str(model_file.with_suffix(".pdiparams")))
        cfg.disable_gpu()
        cfg.enable_mkldnn()
        cfg.set_cpu_math_library_num_threads(threads)
        cfg.disable_glog_info()
        pred = pi.create_predictor(cfg)
        names = pred.get_input_names()

        def run(ids: np.ndarray, tt: np.ndarray) -> np.ndarray:
            feed = {"input_ids": ids, "token_type_ids": tt}
            for n in names:
                pred.get_input_handle(n).copy_from_cpu(feed[n])
            pred.run()
            return pred.get_output_handle(pred.get_output_names()[0]).copy_to_cpu()
        return run
    raise OfaserveError(f"no built-in in-process loader for runtime {spec.runtime!r}")


def load_baseline_runner(encoder_dir: str | os.PathLike, spec: RuntimeSpec,
                         params: dict[str, str]) -> tuple[Runner, dict[str, Any]]:
    """A callable ``(input_ids, token_type_ids) -> logits`` for the encoder in ``encoder_dir``."""
    encoder_dir = Path(encoder_dir)
    version_dir = encoder_dir / "1"
    if not version_dir.is_dir():
        raise OfaserveError(f"{version_dir} is missing: not a Triton encoder model folder")
    try:
        from serve.triton_models.encoder import runtimes as serve_runtimes  # type: ignore
        load_runner = getattr(serve_runtimes, "load_runner", None)
    except Exception:
        load_runner = None
    if load_runner is not None:
        runner = _call_serve_loader(load_runner, version_dir, spec, params)
        if runner is not None:
            return runner, {"loader": "serve.triton_models.encoder.runtimes.load_runner"}
    model_file = find_model_file(version_dir, spec.runtime)
    return _builtin_runner(model_file, spec), {"loader": "benchmarks.inprocess", "model_file": str(model_file)}


def _call_serve_loader(load_runner: Callable, version_dir: Path, spec: RuntimeSpec,
                       params: dict[str, str]) -> Runner | None:
    """Adapter for the serve package's loader (its signature may evolve)."""
    p = dict(params)
    p.update({"runtime": spec.runtime, "precision": spec.precision})
    if spec.threads:
        p["threads"] = str(spec.threads)
    obj = load_runner(version_dir, p)
    if callable(obj):
        return obj
    if hasattr(obj, "run"):
        return obj.run
    return None


# --------------------------------------------------------------------------- timing
@dataclass
class BaselineResult:
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def time_runner(fn: Callable[[Any], Any], batches: list[Any], n: int, start_index: int = 0) -> BaselineResult:
    """Call ``fn(batch)`` ``n`` times sequentially, cycling through ``batches``."""
    res = BaselineResult()
    t_start = time.perf_counter()
    for k in range(n):
        b = batches[(start_index + k) % len(batches)]
        t0 = time.perf_counter_ns()
        fn(b)
        res.latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
    res.wall_s = time.perf_counter() - t_start
    return res

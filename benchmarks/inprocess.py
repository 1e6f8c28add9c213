"""In-process baseline: the served encoder's own model file and runtime, no server.

The encoder's config says which runtime, precision and thread count Triton runs; the
model file sits in ``{m}_encoder/1/``. The baseline loads the same file with the same
settings through the very ``runtimes.py`` the server runs (copied into the repository;
else ``ofaserve.runtime.runtimes``). ``--runtimes`` adds other
runtime/precision variants of the same model (e.g. openvino bf16 next to fp32).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import RepoModel
from ofaserve.core.vocabulary import Precision, Runtime

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- config.pbtxt
def read_config_parameters(config_path: str | os.PathLike) -> dict[str, str]:
    """``parameters { key: "k" value { string_value: "v" } }`` entries of a config.pbtxt."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse(Path(config_path).read_text(), model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in cfg.parameters.items()}


def config_params_from_json(config_json: dict[str, Any]) -> dict[str, str]:
    """The same from ``get_model_config(as_json=True)['config']``."""
    params = config_json.get("parameters", {}) or {}
    return {k: (v or {}).get("string_value", "") for k, v in params.items()}


# --------------------------------------------------------------------------- runtime spec
@dataclass(frozen=True)
class RuntimeSpec:
    runtime: Runtime | str       # a Runtime; the backend's own name for a model ofaserve did not make
    precision: Precision = Precision.FP32
    threads: int | None = None

    @property
    def label(self) -> str:
        return f"{self.runtime}/{self.precision}" + (f"/t{self.threads}" if self.threads else "")


def _threads(v: Any) -> int | None:
    try:
        t = int(v)
    except (TypeError, ValueError):
        return None
    return t if t > 0 else None


def spec_from_config(config: dict[str, Any]) -> RuntimeSpec:
    """The runtime an encoder's config runs: the python backend's ``runtime``/``precision``/
    ``threads`` parameters (ofaserve ``cpu`` target), or Triton's native openvino /
    onnxruntime backends (``xeon`` / ``gpu`` targets)."""
    params = config_params_from_json(config)
    backend = (config.get("backend") or "").lower()
    platform = (config.get("platform") or "").lower()
    if params.get("runtime"):
        return RuntimeSpec(Runtime.parse(params["runtime"]), Precision.parse(params.get("precision") or "fp32"),
                           _threads(params.get("threads")))
    if backend == "openvino":
        # without HINT_BF16 the backend lets OpenVINO pick (bf16 on CPUs with AMX/AVX512_BF16)
        prec = Precision.BF16 if params.get("HINT_BF16", "").upper() == "YES" else Precision.CPU_DEFAULT
        return RuntimeSpec(Runtime.OPENVINO, prec, _threads(params.get("INFERENCE_NUM_THREADS")))
    if backend == "onnxruntime" or platform == "onnxruntime_onnx":
        accel = ((config.get("optimization") or {}).get("execution_accelerators") or {})
        gpu = accel.get("gpu_execution_accelerator") or []
        if gpu:
            mode = ((gpu[0].get("parameters") or {}).get("precision_mode") or "FP32").lower()
            return RuntimeSpec(Runtime.ONNXRUNTIME_TRT, Precision.parse(mode), None)
        return RuntimeSpec(Runtime.ONNXRUNTIME, Precision.FP32, None)
    return RuntimeSpec(backend or platform or "unknown", Precision.FP32, None)


def parse_runtime_specs(text: str | None, default_threads: int | None = None) -> list[RuntimeSpec]:
    """``"openvino:bf16,onnxruntime"`` -> specs (precision defaults to fp32). ``auto`` stands
    for the precision candidates a repository built with ``--precision auto`` timed; the
    caller expands it per model (``auto_specs``)."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item or item == "auto":
            continue
        parts = item.split(":")
        try:
            rt = Runtime.parse(parts[0])
            prec = Precision.parse(parts[1] if len(parts) > 1 and parts[1] else "fp32")
        except OfaserveError as e:
            raise OfaserveError(f"--runtimes item {item!r}: {e}") from None
        if rt == Runtime.OPENVINO_NATIVE or not prec.executes:
            raise OfaserveError(f"--runtimes item {item!r}: runs in this process, so it names a runtime of "
                                "runtimes.py (openvino, paddle, onnxruntime, onnxruntime-trt) and a precision it "
                                "executes (fp32, bf16, fp16, int8)")
        th = _threads(parts[2]) if len(parts) > 2 and parts[2] else default_threads
        if len(parts) > 3 or (len(parts) > 2 and parts[2] and th is None):
            raise OfaserveError(f"bad --runtimes item {item!r}: expected runtime[:precision[:threads]]")
        out.append(RuntimeSpec(rt, prec, th))
    return out


def auto_specs(model: RepoModel | None, threads: int | None) -> list[RuntimeSpec]:
    """The candidates ``--precision auto`` timed for one model (repository manifest)."""
    choice = (model.precision_choice if model is not None else None) or {}
    return [RuntimeSpec(Runtime.parse(r["runtime"]), Precision.parse(r["precision"]), threads)
            for r in choice.get("candidates", [])]


# --------------------------------------------------------------------------- loading
def model_path_for(version_dir: Path, spec: RuntimeSpec, params: dict[str, str], served: bool) -> Path:
    """The model file a runtime reads in ``{m}_encoder/1/`` (the served one for the served runtime)."""
    if served and params.get("model_file"):
        return version_dir / params["model_file"]
    if spec.runtime == "paddle":
        prefix = version_dir / "static" / "model"
        if not prefix.with_name("model.pdiparams").is_file():
            raise OfaserveError(f"no Paddle static model in {version_dir} (the repository was not built "
                                "with --runtime paddle)")
        return prefix
    if spec.precision == "int8":
        path = version_dir / "model.xml"
        if not path.is_file():
            raise OfaserveError(f"no INT8 IR (model.xml) in {version_dir}: build the repository with "
                                "--precision int8 or auto from an export that shipped one")
        return path
    path = version_dir / "model.onnx"
    if not path.is_file():
        raise OfaserveError(f"no model.onnx in {version_dir} (the repository was built with --runtime paddle "
                            "or --precision int8)")
    return path


def _runtimes_module(version_dir: Path):
    """The ``runtimes.py`` the server itself runs (copied into the repository), else the
    serve package's copy."""
    import importlib.util
    local = version_dir / "runtimes.py"
    if local.is_file():
        spec = importlib.util.spec_from_file_location(f"_ofaserve_bench_runtimes_{abs(hash(str(local)))}", local)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return mod, str(local)
    from ofaserve.runtime import runtimes
    return runtimes, "ofaserve.runtime.runtimes"


def load_baseline_runner(encoder_dir: str | os.PathLike, spec: RuntimeSpec, params: dict[str, str],
                         served: bool) -> tuple[Runner, dict[str, Any]]:
    """``(input_ids, token_type_ids) -> logits`` for the encoder in ``encoder_dir``, in this
    process, run the way the served encoder runs a formed batch (its ``length_buckets``:
    length-sorted chunks, a no-op on equal-length rows; or, for the packed graph, the
    runner's own sequence packing)."""
    version_dir = Path(encoder_dir) / "1"
    if not version_dir.is_dir():
        raise OfaserveError(f"{version_dir} is missing: not a Triton encoder model folder")
    path = model_path_for(version_dir, spec, params, served)
    mod, where = _runtimes_module(version_dir)
    pad_id = int(params.get("pad_token_id") or 0)
    runner = mod.load_runner(spec.runtime, path, precision=spec.precision, threads=spec.threads, pad_id=pad_id)
    packed = runner.packed
    buckets = int(params.get("length_buckets") or 1)
    if buckets > 1 and hasattr(mod, "run_length_buckets"):
        plain = runner

        def runner(input_ids, token_type_ids):
            return mod.run_length_buckets(plain, input_ids, token_type_ids, buckets, pad_id)
    return runner, {"loader": f"{where}:load_runner", "model_file": str(path), "length_buckets": buckets,
                    "packed": packed}


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

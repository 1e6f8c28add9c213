"""Generate a Triton model repository from one or more `ofaserve export` folders.

Per export (width w, depth d), four models named from ``{name}_w{round(w*100)}`` (at depth 1.0;
``{name}_w{round(w*100)}_d{round(d*100)}`` at a smaller depth, ``core.subnet.Subnet.model_name``):
  {m}_tokenizer   python: TEXT -> input_ids, token_type_ids (fast WordPiece)
  {m}_encoder     input_ids, token_type_ids -> logits (backend chosen by the target)
  {m}_postprocess python: logits -> LABEL, PROBS
  {m}             ensemble: TEXT -> LABEL, PROBS
With text_pipeline="fused" (python-backend runtimes), {m} is instead one python model
doing tokenize + encode + softmax (no {m}_tokenizer / {m}_postprocess).

Targets:
  cpu   encoder in the python backend on OpenVINO / Paddle Inference / ONNX Runtime:
        runs on the Triton server bundled with nvidia-pytriton (python backend only).
  xeon  NVIDIA Triton images on Xeons: by default the same python-backend OpenVINO
        encoder as cpu (packing, pinned precision, ragged dynamic batching; the image
        needs the pip packages in the manifest's ``image_packages``). --runtime
        openvino-native uses Triton's own openvino backend instead, in the only shape it
        loads with a dynamic sequence axis: max_batch_size 0, no dynamic batching.
  gpu   encoder on Triton's native onnxruntime backend with the TensorRT accelerator
        (FP16), or with --runtime onnxruntime-trt in the python backend on
        onnxruntime-gpu's TensorRT EP (runs on the pip server on any GPU machine).

Every config.pbtxt is a ``ModelConfig`` protobuf written with ``text_format``. The
repository is self-contained (model files copied in, only relative paths) and is built
in a temp folder next to the output, then renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ofaserve.core.errors import OfaserveError
from ofaserve.core.machine import machine_info
from ofaserve.core.manifests import CompressManifest, ExportManifest, RepoManifest, RepoModel, TextLimits, now_iso
from ofaserve.core.files import sha256_file
from ofaserve.core.outputs import atomic_output_dir, check_output_dir, output_lock
from ofaserve.core.naming import encoder_name
from ofaserve.core.tasks import TaskSpec, TaskType
from ofaserve.core.vocabulary import Precision, Runtime, Target, TextPipeline
from ofaserve.runtime import capabilities, runtimes
from ofaserve.serve.precision import choice_table, choose_precision, openvino_artifact
from ofaserve.runtime.runtimes import padded_length, trt_profile_shapes

SOURCES = Path(__file__).resolve().parent / "triton_models"
RUNTIMES_PY = Path(runtimes.__file__)
TARGETS = tuple(Target)
# per target, its runtimes (the first is the default)
RUNTIMES = {Target.CPU: (Runtime.OPENVINO, Runtime.PADDLE, Runtime.ONNXRUNTIME),
            Target.XEON: (Runtime.OPENVINO, Runtime.OPENVINO_NATIVE),
            Target.GPU: (Runtime.ONNXRUNTIME, Runtime.ONNXRUNTIME_TRT)}
# "auto": the fastest precision that passed the export's accuracy gate, timed on the machine
# that builds the repository (serve/precision.py); only for our python OpenVINO encoder.
P = Precision
PRECISIONS = {Target.CPU: (P.AUTO, P.FP32, P.BF16, P.INT8), Target.XEON: (P.AUTO, P.FP32, P.BF16, P.INT8, P.CPU_DEFAULT),
              Target.GPU: (P.FP16, P.FP32)}
# Triton's openvino backend passes OpenVINO no f32 hint (it reads HINT_BF16=YES only), so
# OpenVINO picks the CPU's own default: bf16 on CPUs with AVX512_BF16/AMX, f32 elsewhere.
# "cpu-default" names that honestly; the first entry is the default.
NATIVE_OPENVINO_PRECISIONS = (P.CPU_DEFAULT, P.BF16)
PREFERRED_BATCH = 16
LENGTH_BUCKETS = 3
TEXT_PIPELINES = tuple(TextPipeline)
MAX_QUEUE_DELAY_US = 500  # small: a lone request waits at most 0.5 ms for company
# Bytes of text a request may bring (python_model_io.size_error refuses more, before decoding).
# The tokenizer keeps 100 characters per token of max_seq_length (python_model_io.
# text_char_limit): beyond that a text cannot change the answer. So a text may hold 100 bytes
# per token (a character is at least one byte), and never fewer than a 128-token export's
# 12,800 (about 2,000 words: a long review), so a shorter export accepts the same texts.
TEXT_BYTES_PER_TOKEN = 100
MIN_TEXT_BYTES = TEXT_BYTES_PER_TOKEN * 128
# A native backend's dynamic batcher merges only requests of equal shape (Triton core,
# dynamic_batch_scheduler.cc: a batch ends at the first shape change), so the tokenizer pads
# to a multiple of this in front of a batching native encoder; python encoders take ragged input.
NATIVE_PAD_MULTIPLE = 16
# Where TensorRT engines are cached on the serving machine (a runtime location there, not a
# path on the machine that built this). ONNX Runtime's TensorRT EP creates only the last
# level of its cache path (std::filesystem::create_directory) and fails the session when
# the parent is missing: the image (serve/deploy/Dockerfile), the Kubernetes manifest
# (serve/deploy/triton.yaml) and the README's docker command all provide this folder.
TRT_CACHE_ROOT = "/tmp/ofaserve_trt_cache"
# pip packages the python models import, per encoder runtime ("" for the tokenizer and
# postprocess models every repository has); the pins of pyproject.toml (tests/test_locks.py),
# locked with hashes for the images' Python in serve/deploy/image-requirements.txt.
IMAGE_PACKAGES = {"": ("tokenizers==0.23.3", "numpy==1.26.4"),
                  "openvino": ("openvino==2026.4.1",), "onnxruntime": ("onnxruntime==1.32.0",),
                  "paddle": ("paddlepaddle==3.3.1",),
                  "onnxruntime-trt": ("onnxruntime-gpu==1.31.1", "tensorrt-cu13==10.16.1.11")}
REPO_STAGE = "repo"
# Kept when a repository replaces the folder's content: model_repository/'s tracked README.
REPO_KEEPS = ("README.md",)
# Export artifacts holding the packed graph (several sentences per row).
PACKED_ARTIFACTS = ("onnx_packed", "openvino_packed_int8")


def _param(config: mc.ModelConfig, key: str, value: Any) -> None:
    config.parameters[key].string_value = str(value)


def _tensor(kind, name: str, dtype: str, dims: list[int], **extra):
    return kind(name=name, data_type=mc.DataType.Value(dtype), dims=dims, **extra)


def _base(name: str, max_batch_size: int, *, backend: str = "", platform: str = "") -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend=backend, platform=platform, max_batch_size=max_batch_size)
    config.version_policy.latest.num_versions = 1
    return config


# Instances of a model that has a queue policy. Any policy turns off the dynamic batcher's
# payload prefetching (Triton core scheduler_utils.cc: support_prefetching_ needs no timeout and
# max_queue_size 0), and then a batch is formed only for an instance already waiting for one
# (rate_limiter.cc PayloadSlotAvailable). An instance that finishes wakes the batcher before it
# waits again (payload.cc Execute, then DequeuePayload), and a request refused by a full queue
# wakes nothing (dynamic_batch_scheduler.cc Enqueue): with one instance and a full queue the
# batcher sleeps out its 500 ms default wait after every batch (the same code is in Triton's
# main branch; the reliability harness's overload scenario runs a lone-instance copy to show
# it). With two, the one that finishes next usually wakes the batcher for the other.
QUEUED_MODEL_INSTANCES = 2


@dataclass(frozen=True)
class QueuePolicy:
    """How many requests may wait for the tokenizer, the encoder and the fused model, and for
    how long, before Triton refuses more (``UNAVAILABLE``: "Exceeds maximum queue size",
    "Request timeout expired"); ``max_queue_size`` 0 and no timeout: no policy (Triton's
    unbounded queue).

    The default queue holds ``max_batch_size`` requests: one full batch of one-sentence
    requests waits behind the batches that run, so an instance never idles for want of work
    under load, and an accepted request waits behind at most that many others (plus the
    batches the scheduler has already handed to the instances). Requests of B rows fill a
    batch B times sooner, so a full queue of them is about B executions long. No timeout by
    default: how long an execution takes depends on the CPU and the model, which the
    repository does not know; give one (``--queue_timeout_ms``) from a latency target. The
    postprocess model has no policy: it runs on what the encoder answers, so its queue is
    bounded by the encoder's."""
    max_queue_size: int
    timeout_us: int = 0

    @property
    def active(self) -> bool:
        return bool(self.max_queue_size or self.timeout_us)

    @property
    def instances(self) -> int:
        """Instances of a model under this policy (``QUEUED_MODEL_INSTANCES`` when active)."""
        return QUEUED_MODEL_INSTANCES if self.active else 1

    def to_dict(self) -> dict[str, Any]:
        return {"max_queue_size": self.max_queue_size, "queue_timeout_ms": self.timeout_us / 1000,
                "timeout_action": "REJECT" if self.active else None, "queued_model_instances": self.instances}


def text_limits(manifest: ExportManifest, max_batch_size: int, max_text_bytes: int | None = None,
                max_request_bytes: int | None = None) -> TextLimits:
    """The limits of one export's text models: the given ones, or by default
    ``TEXT_BYTES_PER_TOKEN`` per token of its max_seq_length (at least ``MIN_TEXT_BYTES``) per
    text and a full batch of such texts (both sentences of a pair) per request; a default per
    text is cut to a smaller given per-request limit."""
    per_request = max_request_bytes or (max_batch_size * (max_text_bytes or _default_text_bytes(manifest))
                                        * (2 if manifest.spec.pair else 1))
    per_text = max_text_bytes or min(_default_text_bytes(manifest), per_request)
    if per_text > per_request:
        raise OfaserveError(f"max_text_bytes {per_text:,} is more than max_request_bytes {per_request:,}: one text "
                            "cannot be larger than the request that carries it")
    return TextLimits(per_text, per_request)


def _default_text_bytes(manifest: ExportManifest) -> int:
    return max(MIN_TEXT_BYTES, TEXT_BYTES_PER_TOKEN * int(manifest.max_seq_length))


def _text_limit_params(config: mc.ModelConfig, limits: TextLimits) -> None:
    """What the text models check (python_model_io.text_limits) and clients read to split or
    refuse their input before sending (serve/client.py)."""
    _param(config, "max_text_bytes", limits.max_text_bytes)
    _param(config, "max_request_bytes", limits.max_request_bytes)


def _batching(config: mc.ModelConfig, max_batch_size: int, queue: QueuePolicy | None = None) -> None:
    """Dynamic batching, and ``queue``'s policy when it has one."""
    db = config.dynamic_batching
    db.preferred_batch_size.append(min(PREFERRED_BATCH, max_batch_size))
    db.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    if queue is None or not queue.active:
        return
    policy = db.default_queue_policy
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.max_queue_size = queue.max_queue_size
    policy.default_timeout_microseconds = queue.timeout_us


def _instances(config: mc.ModelConfig, count: int, kind: str = "KIND_CPU") -> None:
    config.instance_group.add(count=count, kind=mc.ModelInstanceGroup.Kind.Value(kind))


def _write(model_dir: Path, config: mc.ModelConfig) -> None:
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))


def _read_export(export_dir: Path) -> ExportManifest:
    manifest = ExportManifest.read(export_dir)  # checks the stage and the fields a repository needs
    for key in ("onnx", "tokenizer"):
        rel = manifest.artifacts.get(key)
        if not rel or not (export_dir / rel).is_file():
            raise OfaserveError(f"{export_dir} lacks its {key} artifact ({rel}): re-run `ofaserve export`")
    return manifest


def _text_inputs(config: mc.ModelConfig, spec: TaskSpec) -> None:
    """TEXT, and TEXT_PAIR for a sentence-pair task (both required: Triton refuses a request
    without either, before our model sees it)."""
    config.input.append(_tensor(mc.ModelInput, "TEXT", "TYPE_STRING", [1]))
    if spec.pair:
        config.input.append(_tensor(mc.ModelInput, "TEXT_PAIR", "TYPE_STRING", [1]))


def _task_outputs(config: mc.ModelConfig, spec: TaskSpec) -> None:
    """SCORE for a regression task; LABEL and PROBS for a classifier."""
    if spec.type == TaskType.REGRESSION:
        config.output.append(_tensor(mc.ModelOutput, "SCORE", "TYPE_FP32", [1]))
        return
    config.output.extend([_tensor(mc.ModelOutput, "LABEL", "TYPE_STRING", [1]),
                          _tensor(mc.ModelOutput, "PROBS", "TYPE_FP32", [len(spec.labels)])])


def _task_params(config: mc.ModelConfig, spec: TaskSpec) -> None:
    """What our python models read of the task (python_model_io: is_pair, is_regression, label_names)."""
    _param(config, "text_pair", "true" if spec.pair else "false")
    _param(config, "task_type", spec.type.value)
    if spec.type == TaskType.CLASSIFICATION:
        _param(config, "labels", json.dumps(list(spec.labels)))


def task_output_names(spec: TaskSpec) -> list[str]:
    return ["SCORE"] if spec.type == TaskType.REGRESSION else ["LABEL", "PROBS"]


def _verified(export_dir: Path, manifest: ExportManifest, path: Path) -> Path:
    """``path``, a file of ``export_dir``, if its sha256 is the one the export recorded.
    Export and compress folders are trusted input (sub_model/ holds paddle pickles, the
    repository gets the models the server runs): a file changed since `ofaserve export`
    wrote it is refused, not copied into a repository."""
    recorded = manifest.files_sha256
    if recorded is None:
        raise OfaserveError(f"{export_dir}/manifest.json records no sha256 of its files (an export from before "
                            "ofaserve recorded them): re-run `ofaserve export`")
    try:
        rel = path.resolve().relative_to(export_dir.resolve()).as_posix()
    except ValueError:
        raise OfaserveError(f"{path} is outside the export folder {export_dir}: re-run `ofaserve export`") from None
    if rel not in recorded:
        raise OfaserveError(f"{path} is not among the files {export_dir}/manifest.json records: re-run `ofaserve export`")
    if sha256_file(path) != recorded[rel]:
        raise OfaserveError(f"{path} does not match the sha256 {export_dir}/manifest.json records for it (changed "
                            "since the export wrote it): restore it or re-run `ofaserve export`")
    return path


def tokenizer_config(name: str, manifest: ExportManifest, max_batch_size: int, pad_multiple: int, *, queue: QueuePolicy,
                     limits: TextLimits) -> mc.ModelConfig:
    config = _base(name, max_batch_size, backend="python")
    _text_inputs(config, manifest.spec)
    _task_params(config, manifest.spec)
    config.output.extend([_tensor(mc.ModelOutput, "input_ids", "TYPE_INT64", [-1]),
                          _tensor(mc.ModelOutput, "token_type_ids", "TYPE_INT64", [-1])])
    _batching(config, max_batch_size, queue)
    _text_limit_params(config, limits)
    _instances(config, queue.instances)
    _param(config, "tokenizer_file", "tokenizer.json")
    _param(config, "max_seq_length", manifest.max_seq_length)
    _param(config, "pad_token_id", manifest.pad_token_id)
    _param(config, "pad_to_multiple_of", pad_multiple)
    return config


def postprocess_config(name: str, manifest: ExportManifest, max_batch_size: int) -> mc.ModelConfig:
    """logits -> LABEL, PROBS (or SCORE). No queue policy (``QueuePolicy``): its input comes
    at the rate the encoder answers."""
    spec = manifest.spec
    config = _base(name, max_batch_size, backend="python")
    config.input.append(_tensor(mc.ModelInput, "logits", "TYPE_FP32", [spec.num_outputs]))
    _task_outputs(config, spec)
    _task_params(config, spec)
    _batching(config, max_batch_size)
    _instances(config, 1)
    return config


def runs_in_python_backend(target: str, runtime: str) -> bool:
    """Whether the encoder runs in our python model (runtimes.py) rather than a native backend."""
    return target == "cpu" or runtime in ("openvino", "onnxruntime-trt")


def image_packages(target: str, runtime: str) -> list[str]:
    """pip packages an image must add for the python models of such a repository."""
    return list(IMAGE_PACKAGES[""]) + (list(IMAGE_PACKAGES[runtime]) if runs_in_python_backend(target, runtime) else [])


def trt_cache_dir(name: str, model_sha256: str) -> str:
    """The engine cache of one model, one level below TRT_CACHE_ROOT. The file's hash is in
    the name because ONNX Runtime keys cached engines by the graph's file name and structure,
    not its weights: a re-export of the same width would otherwise load the old engine."""
    return f"{TRT_CACHE_ROOT}/{name}-{model_sha256[:12]}"


def _warmups(config: mc.ModelConfig, shapes: list[tuple[int, int]], batching: bool) -> None:
    """All-pad warmup requests (valid for any vocabulary) at each (rows, seq). Triton sends a
    sample of batch_size B as B requests in one execution (core, backend_model_instance.cc);
    a non-batching model counts each request as one and rejects more (openvino_backend,
    openvino.cc), so there the rows go into the dims of a single request."""
    for rows, seq in sorted(set(shapes)):
        warmup = config.model_warmup.add(name=f"batch{rows}_seq{seq}", batch_size=rows if batching else 1)
        for input_name in ("input_ids", "token_type_ids"):
            warmup.inputs[input_name].data_type = mc.TYPE_INT64
            warmup.inputs[input_name].dims.extend([seq] if batching else [rows, seq])
            warmup.inputs[input_name].zero_data = True


def _encoder_io(config: mc.ModelConfig, n: int, *, batching: bool, ragged: bool) -> None:
    # Ragged only where our own model.py pads the formed batch; native backends need equal shapes.
    dims = [-1] if batching else [-1, -1]
    for input_name in ("input_ids", "token_type_ids"):
        config.input.append(_tensor(mc.ModelInput, input_name, "TYPE_INT64", dims, allow_ragged_batch=ragged))
    config.output.append(_tensor(mc.ModelOutput, "logits", "TYPE_FP32", [n] if batching else [-1, n]))


def _native_openvino(config: mc.ModelConfig, precision: str, threads: int) -> None:
    """Parameters of Triton's openvino backend: it reads exactly these (openvino.cc)."""
    config.default_model_filename = "model.onnx"
    _param(config, "PERFORMANCE_HINT", "LATENCY")
    _param(config, "NUM_STREAMS", 1)
    _param(config, "INFERENCE_NUM_THREADS", threads)
    _param(config, "RESHAPE_IO_LAYERS", "YES")  # keep both axes dynamic
    if precision == "bf16":
        _param(config, "HINT_BF16", "YES")


def _tensorrt(config: mc.ModelConfig, precision: str, cache_dir: str, max_batch_size: int, max_seq: int) -> None:
    """TensorRT accelerator of Triton's onnxruntime backend (every key must be one that
    backend's onnxruntime.cc knows, or the model fails to load)."""
    config.default_model_filename = "model.onnx"
    trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    trt.parameters["precision_mode"] = "FP16" if precision == "fp16" else "FP32"
    trt.parameters["max_workspace_size_bytes"] = str(1 << 30)
    trt.parameters["trt_engine_cache_enable"] = "1"
    trt.parameters["trt_engine_cache_path"] = cache_dir
    trt.parameters.update(trt_profile_shapes(max_batch_size, max_seq))
    if precision == "fp16":  # see runtimes._onnxruntime_trt
        trt.parameters["trt_layer_norm_fp32_fallback"] = "1"


def encoder_config(name: str, manifest: ExportManifest, max_batch_size: int, *, target: str, runtime: str,
                   precision: str, instances: int, threads: int, queue: QueuePolicy, artifact: str = "onnx",
                   model_sha256: str = "") -> mc.ModelConfig:
    """The encoder: our python model, Triton's openvino backend (max_batch_size 0: with a
    batch dimension it fixes the batch at max_batch_size and its batch padding drops the
    sequence length, openvino.cc) or the onnxruntime backend with TensorRT. The queue policy
    needs the dynamic batcher, which a max_batch_size-0 model cannot have: Triton bounds no
    queue of the openvino-native encoder."""
    n, seq = manifest.spec.num_outputs, int(manifest.max_seq_length)
    python = runs_in_python_backend(target, runtime)
    batching = runtime != "openvino-native"
    if python:
        config = _base(name, max_batch_size, backend="python")
    elif runtime == "openvino-native":
        config = _base(name, 0, backend="openvino")
    else:
        config = _base(name, max_batch_size, platform="onnxruntime_onnx")
    _encoder_io(config, n, batching=batching, ragged=python)
    if batching:
        _batching(config, max_batch_size, queue)
    _instances(config, instances, "KIND_GPU" if target == "gpu" else "KIND_CPU")
    # The tokenizer pads after truncating: in front of a native encoder max_seq_length 50
    # arrives as 64, which a TensorRT profile ending at 50 would refuse on every such request.
    seq = padded_length(seq, _pad_multiple(target, runtime))
    shapes = [(1, seq), (min(PREFERRED_BATCH, max_batch_size), seq)]
    if target == "gpu":  # build and size the engine for the largest batch at load, not under traffic
        shapes.append((max_batch_size, seq))
    _warmups(config, shapes, batching)

    if python:
        _runtime_params(config, manifest, runtime, precision, threads, artifact in PACKED_ARTIFACTS,
                        trt_cache_dir(name, model_sha256), model_file_of(artifact, manifest))
    elif runtime == "openvino-native":
        _native_openvino(config, precision, threads)
    else:
        _tensorrt(config, precision, trt_cache_dir(name, model_sha256), max_batch_size, seq)
    return config


def model_file_of(artifact: str, manifest: ExportManifest) -> str:
    """The encoder's model file inside its version folder, as _copy_model_files names it."""
    if artifact == "paddle_static":
        return "static/model"
    return "model.xml" if manifest.artifacts[artifact].endswith(".xml") else "model.onnx"


def _runtime_params(config: mc.ModelConfig, manifest: ExportManifest, runtime: str, precision: str, threads: int,
                    packed: bool = False, cache_dir: str = "", model_file: str = "model.onnx") -> None:
    """Parameters our python models read to build their runtime (runtimes.py)."""
    _param(config, "runtime", runtime)
    _param(config, "precision", precision)
    _param(config, "threads", threads)
    _param(config, "model_file", model_file)
    _param(config, "vocab_size", manifest.vocab_size)
    _param(config, "width_mult", manifest.width_mult)  # what the bench asks the server, not the name
    _param(config, "depth_mult", manifest.depth_mult)
    _param(config, "max_seq_length", manifest.max_seq_length)
    _param(config, "pad_token_id", manifest.pad_token_id)
    _param(config, "type_vocab_size", manifest.type_vocab_size)
    # Run a formed batch as this many length-sorted chunks (equal row counts) when that
    # cuts the padded tokens by >= 20%: on real dev batches of 16, 3 chunks were the
    # fastest of 1..8 for both widths (fewer padded tokens against more calls).
    # TensorRT builds engines per shape range, so it gets one call; a packed graph's
    # runner packs the whole batch into one call.
    _param(config, "length_buckets", 1 if runtime == "onnxruntime-trt" or packed else LENGTH_BUCKETS)
    if runtime == "onnxruntime-trt":
        _param(config, "trt_cache_dir", cache_dir)


def classifier_config(name: str, manifest: ExportManifest, max_batch_size: int, *, runtime: str, precision: str,
                      instances: int, threads: int, gpu: bool, queue: QueuePolicy, limits: TextLimits,
                      artifact: str = "onnx", model_sha256: str = "") -> mc.ModelConfig:
    """The fused text model: TEXT (+ TEXT_PAIR) -> LABEL, PROBS (or SCORE) in one python model
    (tokenize + encode + softmax), the alternative to the three-step ensemble."""
    config = _base(name, max_batch_size, backend="python")
    spec = manifest.spec
    _text_inputs(config, spec)
    _task_outputs(config, spec)
    _task_params(config, spec)
    _batching(config, max_batch_size, queue)
    _text_limit_params(config, limits)
    _instances(config, instances, "KIND_GPU" if gpu else "KIND_CPU")
    _runtime_params(config, manifest, runtime, precision, threads, artifact in PACKED_ARTIFACTS,
                    trt_cache_dir(name, model_sha256), model_file_of(artifact, manifest))
    _param(config, "tokenizer_file", "tokenizer.json")
    return config


def ensemble_config(name: str, manifest: ExportManifest, max_batch_size: int, limits: TextLimits) -> mc.ModelConfig:
    """TEXT (+ TEXT_PAIR) -> tokenizer -> encoder -> postprocess. The ensemble has no queue of
    its own (each step's batcher queues); it carries its tokenizer's text limits for clients."""
    spec = manifest.spec
    config = _base(name, max_batch_size, platform="ensemble")
    _text_inputs(config, spec)
    _task_outputs(config, spec)
    _text_limit_params(config, limits)
    texts = {"TEXT": "TEXT", **({"TEXT_PAIR": "TEXT_PAIR"} if spec.pair else {})}
    steps = config.ensemble_scheduling.step
    steps.add(model_name=f"{name}_tokenizer", model_version=-1,
              input_map=texts,
              output_map={"input_ids": "input_ids", "token_type_ids": "token_type_ids"})
    steps.add(model_name=encoder_name(name), model_version=-1,
              input_map={"input_ids": "input_ids", "token_type_ids": "token_type_ids"},
              output_map={"logits": "logits"})
    steps.add(model_name=f"{name}_postprocess", model_version=-1,
              input_map={"logits": "logits"}, output_map={o: o for o in task_output_names(spec)})
    return config


def encoder_artifact(manifest: ExportManifest, target: str, runtime: str, precision: str) -> str:
    """Which export artifact the encoder runs.

    ONNX Runtime on CPU gets the export's ORT-fused graph when there is one (attention and
    layer norms fused into com.microsoft ops that only ONNX Runtime reads) and the
    OpenVINO in our python encoder gets the NNCF INT8 IR for int8, else the packed graph
    (several sentences per row: a batch of short sentences costs its real tokens instead of
    rows x its longest; a batch of full-length rows costs the same either way).
    Everything else reads the plain ONNX graph: Triton's own openvino backend converts it
    itself, and TensorRT wants FP32 ONNX and builds FP16 engines from it."""
    artifacts = manifest.artifacts
    if runtime == "paddle":
        return "paddle_static"
    if target == "cpu" and runtime == "onnxruntime" and artifacts.get("onnx_ort_fused"):
        return "onnx_ort_fused"
    if runtime == "openvino":
        artifact = openvino_artifact(manifest, precision)
        if artifact is None:
            raise OfaserveError("this export shipped no INT8 IR (see precisions.openvino_int8 in its manifest: "
                                "it failed the accuracy gate or was not made): pick --precision fp32 or auto")
        return artifact
    return "onnx"


def _pad_multiple(target: str, runtime: str) -> int:
    """Token padding of the tokenizer's output: only a batching native encoder needs equal
    lengths to merge requests (a non-batching one never merges, python ones take ragged input)."""
    return 0 if runs_in_python_backend(target, runtime) or runtime == "openvino-native" else NATIVE_PAD_MULTIPLE


def _copy_model_files(export_dir: Path, manifest: ExportManifest, dest: Path, artifact: str, python: str | None) -> str:
    """The encoder artifact into ``dest``; with ``python`` (a folder of triton_models) also
    that model.py plus the runtime and helper modules it imports. Returns the sha256 of the
    copied model weights (model.onnx or model.pdiparams)."""
    artifacts = manifest.artifacts
    dest.mkdir(parents=True, exist_ok=True)
    if artifact == "paddle_static":
        prefix = export_dir / artifacts.get("paddle_static", "static/model")
        files = [p for p in (prefix.with_name(prefix.name + ext) for ext in (".json", ".pdmodel", ".pdiparams"))
                 if p.is_file()]
        if not any(p.suffix == ".pdiparams" for p in files) or len(files) < 2:
            raise OfaserveError(f"{export_dir} lacks a Paddle static model at {prefix}: re-run `ofaserve export`")
        (dest / "static").mkdir()
        for f in files:
            shutil.copy2(_verified(export_dir, manifest, f), dest / "static" / f"model{f.suffix}")
        weights = dest / "static" / "model.pdiparams"
    else:
        src = export_dir / artifacts[artifact]
        pair = [src, src.with_suffix(".bin")] if src.suffix == ".xml" else [src]  # IR: graph + weights
        missing = [f for f in pair if not f.is_file()]
        if missing:
            raise OfaserveError(f"{export_dir} lacks {missing[0]} (artifact {artifact}): re-run `ofaserve export`")
        for f in pair:
            shutil.copy2(_verified(export_dir, manifest, f), dest / f"model{f.suffix}")
        weights = dest / f"model{pair[-1].suffix}"
    if python:
        shutil.copy2(SOURCES / python / "model.py", dest / "model.py")
        shutil.copy2(RUNTIMES_PY, dest / "runtimes.py")
        shutil.copy2(SOURCES / "python_model_io.py", dest / "python_model_io.py")
    return sha256_file(weights)


def _check_choices(target: str, runtime: str | None, precision: str | None,
                   text_pipeline: str) -> tuple[Target, Runtime, Precision, TextPipeline]:
    """(target, runtime, precision, text pipeline), parsed, after defaults; or a one-line error
    for a name or a combination that cannot run."""
    target, text_pipeline = Target.parse(target), TextPipeline.parse(text_pipeline)
    runtime = Runtime.parse(runtime) if runtime else RUNTIMES[target][0]
    precision = Precision.parse(precision) if precision else None
    if runtime not in RUNTIMES[target]:
        raise OfaserveError(f"target {target} supports runtime {'/'.join(RUNTIMES[target])}, not '{runtime}'")
    native_ov = runtime == "openvino-native"
    default = "auto" if runtime == "openvino" else next(p for p in PRECISIONS[target] if p != "auto")
    precision = precision or (NATIVE_OPENVINO_PRECISIONS[0] if native_ov else default)
    if precision not in PRECISIONS[target]:
        raise OfaserveError(f"target {target} supports precision {'/'.join(PRECISIONS[target])}, not '{precision}'")
    if native_ov and precision not in NATIVE_OPENVINO_PRECISIONS:
        raise OfaserveError(f"Triton's openvino backend cannot pin {precision} (it passes OpenVINO only HINT_BF16); "
                            "use --precision cpu-default or bf16, or --runtime openvino for a pinned fp32")
    if precision == "cpu-default" and not native_ov:
        raise OfaserveError("precision cpu-default is for --runtime openvino-native; pick fp32 or bf16")
    if target == "cpu" and runtime == "onnxruntime" and precision == "bf16":
        raise OfaserveError("runtime onnxruntime on cpu runs fp32 or int8; use openvino or paddle for bf16")
    if precision in ("int8", "auto") and runtime != "openvino":
        raise OfaserveError(f"precision {precision} runs on runtime openvino (the export's NNCF INT8 IR; "
                            "auto times OpenVINO's candidates)")
    if text_pipeline == "fused" and not runs_in_python_backend(target, runtime):
        raise OfaserveError(f"--text_pipeline fused runs the encoder in the python backend, not on target {target} "
                            f"with runtime {runtime}")
    return target, runtime, precision, text_pipeline


def default_encoder_threads(runtime: str, instances: int) -> int:
    """Threads per encoder instance: every core this process may run on for OpenVINO in the
    python backend, where each instance is an unpinned process of its own, so a request that
    finds the other instance idle runs on every core, and two busy ones share them (against
    cores / instances: benchmarks/results/encoder_threads/); cores / instances for the other
    runtimes."""
    cores = runtimes.default_threads()
    return cores if runtime == "openvino" else max(1, cores // instances)


def build_repository(export_dirs: Sequence[str | os.PathLike], output: str | os.PathLike, target: str = "cpu",
                     name: str = "bert",
                     max_batch_size: int = 64, instances: int | None = None, runtime: str | None = None,
                     precision: str | None = None, threads: int | None = None,
                     text_pipeline: str = "ensemble", auto_budget_s: float = 20.0,
                     overwrite: bool = False, max_text_bytes: int | None = None,
                     max_request_bytes: int | None = None, max_queue_size: int | None = None,
                     queue_timeout_ms: float = 0.0) -> RepoManifest:
    """Write a Triton model repository for ``export_dirs`` to ``output``; returns its manifest.

    ``runtime``/``precision`` default per target (cpu and xeon: openvino in the python
    backend at precision ``auto``, the fastest candidate that passed the export's accuracy
    gate, timed here; gpu: onnxruntime/fp16). ``instances`` defaults to
    ``QueuePolicy.instances`` encoder instances (two under a queue policy, one without),
    ``threads`` to ``default_encoder_threads``. ``text_pipeline``: the text model {m} is an
    ensemble (tokenizer -> encoder -> postprocess) or "fused", one python model doing all
    three (python-backend runtimes only); {m}_encoder is there either way. ``output`` is
    checked (and locked) before any work: a new or empty folder, a previous repository, or
    with ``overwrite`` anything else; a README.md in it stays (``REPO_KEEPS``).
    ``max_text_bytes`` / ``max_request_bytes``: bytes of text per row / per request of the
    text models (default per export: ``text_limits``). ``max_queue_size`` (default
    ``max_batch_size``; 0: no limit) and ``queue_timeout_ms`` (default 0: none): the queue
    policy of the tokenizer, the encoder and the fused model (``QueuePolicy``).

    Reads: each export's ``manifest.json`` and the files it names (each copied only if it
    matches the sha256 the export recorded); for ``precision="auto"`` the compress output's dev
    split, where it is at hand, to time real sentences (else the fixed 16 x 128 batch only).
    Writes: ``output``, one model folder per Triton model (``config.pbtxt`` and ``1/``) and a
    ``manifest.json``; built in a temp folder next to it and renamed into place.
    Returns: the ``RepoManifest`` (``models``: each served model name, e.g. ``bert_w67``, with
    its width, depth, labels, precision and text limits).
    Raises: ``OfaserveError`` for a bad option or combination (one line naming what can
    run), an export that is missing, incomplete or changed since it was written, two exports of
    one subnet, or an output it may not replace or that another run holds; ``OSError`` where
    the machine refuses a write. Nothing at ``output`` changes then.
    """
    target, runtime, precision, text_pipeline = _check_choices(target, runtime, precision, text_pipeline)
    _check_numbers(name=name, max_batch_size=max_batch_size, instances=instances, threads=threads,
                   auto_budget_s=auto_budget_s if precision == "auto" else None, max_text_bytes=max_text_bytes,
                   max_request_bytes=max_request_bytes, max_queue_size=max_queue_size,
                   queue_timeout_ms=queue_timeout_ms)
    if not export_dirs:
        raise OfaserveError("pass at least one export folder")
    queue = QueuePolicy(max_batch_size if max_queue_size is None else max_queue_size, round(queue_timeout_ms * 1000))
    # Triton's openvino backend loads only without a batch dimension: no batcher, no queue policy.
    encoder_queue = queue if runtime != "openvino-native" else QueuePolicy(0)
    if instances is not None and instances < encoder_queue.instances:
        raise OfaserveError(f"a model with a queue limit needs at least {queue.instances} instances (Triton's batcher "
                            "stalls for 500 ms after each batch of a single instance whose queue is full): pass "
                            f"--instances {queue.instances} or more, or --max_queue_size 0 for an unbounded queue")
    instances = instances or encoder_queue.instances
    threads = threads or default_encoder_threads(runtime, instances)
    output = check_output_dir(output, stage=REPO_STAGE, overwrite=overwrite, inputs=export_dirs, keep=REPO_KEEPS)

    exports = _read_exports(export_dirs, name)
    limits = {model: text_limits(m, max_batch_size, max_text_bytes, max_request_bytes)
              for model, (_, m) in exports.items()}

    with output_lock(output):  # a second run on this output stops here, before any timing
        plans = {model: _plan_encoder(model, d, m, target, runtime, precision, threads, auto_budget_s)
                 for model, (d, m) in exports.items()}
        with atomic_output_dir(output, keep=REPO_KEEPS) as tmp:
            layout = _Layout(target, runtime, text_pipeline, max_batch_size, instances, threads, queue)
            for model, (export_dir, manifest) in exports.items():
                _write_model(tmp, model, export_dir, manifest, plans[model], limits[model], layout)
            # Triton only treats folders as models; this file is for people and the benchmarks.
            repo = RepoManifest(
                target=target, runtime=runtime, precision=precision, text_pipeline=text_pipeline,
                max_batch_size=max_batch_size, encoder_instances=instances, encoder_threads=threads,
                queue_policy=queue.to_dict(), image_packages=image_packages(target, runtime), machine=machine_info(),
                finished=now_iso(),
                models={model: _repo_model(d, m, plans[model], limits[model]) for model, (d, m) in exports.items()})
            repo.write(tmp)
            return repo


def _check_numbers(*, name: str, max_batch_size: int, instances: int | None, threads: int | None,
                   auto_budget_s: float | None, max_text_bytes: int | None, max_request_bytes: int | None,
                   max_queue_size: int | None, queue_timeout_ms: float) -> None:
    """One ``OfaserveError`` for the first of ``build_repository``'s numbers (and the model
    name) out of its range; ``auto_budget_s`` None: not timing precisions."""
    if not 1 <= max_batch_size <= 4096:
        raise OfaserveError(f"max_batch_size must be in 1..4096, got {max_batch_size}")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise OfaserveError(f"model name {name!r} may hold only letters, digits, '_' and '-'")
    if instances is not None and instances < 1:
        raise OfaserveError(f"instances must be >= 1, got {instances}")
    if threads is not None and threads < 1:
        raise OfaserveError(f"threads must be >= 1, got {threads}")
    if auto_budget_s is not None and not auto_budget_s > 0:
        raise OfaserveError(f"auto_budget_s must be > 0, got {auto_budget_s}")
    for flag, value in (("max_text_bytes", max_text_bytes), ("max_request_bytes", max_request_bytes)):
        if value is not None and value < 1:
            raise OfaserveError(f"{flag} must be >= 1, got {value}")
    if max_queue_size is not None and max_queue_size < 0:
        raise OfaserveError(f"max_queue_size must be >= 0 (0: no limit), got {max_queue_size}")
    if not queue_timeout_ms >= 0:
        raise OfaserveError(f"queue_timeout_ms must be >= 0 (0: no timeout), got {queue_timeout_ms}")


def _read_exports(export_dirs: Sequence[str | os.PathLike], name: str) -> dict[str, tuple[Path, ExportManifest]]:
    """{served model name: (export folder, its manifest)}; two exports of one subnet are refused."""
    exports: dict[str, tuple[Path, ExportManifest]] = {}
    for export_dir in map(Path, export_dirs):
        manifest = _read_export(export_dir)
        subnet = manifest.trained_subnet
        model = subnet.model_name(name)
        if model in exports:
            raise OfaserveError(f"{export_dir} and {exports[model][0]} both export {subnet.describe()}: one "
                                "repository serves each subnet once")
        exports[model] = (export_dir, manifest)
    return exports


@dataclass(frozen=True)
class _Layout:
    """The repository-wide settings every served model is written with."""
    target: str
    runtime: str
    text_pipeline: str
    max_batch_size: int
    instances: int
    threads: int
    queue: QueuePolicy


def _write_model(tmp: Path, model: str, export_dir: Path, manifest: ExportManifest, plan: dict[str, Any],
                 limits: TextLimits, layout: _Layout) -> None:
    """One export's models: its encoder (files copied and checked) and its text pipeline."""
    enc = tmp / encoder_name(model)
    python_encoder = runs_in_python_backend(layout.target, layout.runtime)
    sha = _copy_model_files(export_dir, manifest, enc / "1", plan["artifact"], "encoder" if python_encoder else None)
    for other in plan.get("other_candidates", ()):  # so `ofaserve bench --runtimes auto` can re-time them
        _copy_model_files(export_dir, manifest, enc / "1", other, None)
    _write(enc, encoder_config(enc.name, manifest, layout.max_batch_size, target=layout.target, runtime=layout.runtime,
                               precision=plan["precision"], instances=layout.instances, threads=layout.threads,
                               queue=layout.queue, artifact=plan["artifact"], model_sha256=sha))
    if layout.text_pipeline == "fused":
        _write_fused(tmp / model, export_dir, manifest, plan, layout.max_batch_size, runtime=layout.runtime,
                     instances=layout.instances, threads=layout.threads, gpu=layout.target == "gpu",
                     queue=layout.queue, limits=limits)
    else:
        _write_ensemble(tmp, model, export_dir, manifest, layout.max_batch_size,
                        _pad_multiple(layout.target, layout.runtime), queue=layout.queue, limits=limits)


def _repo_model(export_dir: Path, m: ExportManifest, plan: dict[str, Any], limits: TextLimits) -> RepoModel:
    return RepoModel(width_mult=m.width_mult, depth_mult=m.depth_mult, labels=m.labels, task_spec=m.spec,
                     max_seq_length=m.max_seq_length, encoder_artifact=plan["artifact"], precision=plan["precision"],
                     precision_choice=plan.get("choice"), text_limits=limits,
                     selection=_selection_summary(m.selection) if m.selection else None,
                     source_export=os.path.basename(os.path.normpath(export_dir)))


def _selection_summary(selection: dict) -> dict[str, Any]:
    """How ``--width_mult auto`` chose an export's subnet (its rule and pick), for the people
    and the benchmarks that read the repository's manifest."""
    keep = ("mode", "metric", "max_metric_drop", "drop_bound", "latency_budget_ms", "runtime", "batch_size", "seq_len",
            "teacher_dev_score", "chosen")
    return {k: selection[k] for k in keep if k in selection}


def _plan_encoder(model: str, export_dir: Path, manifest: ExportManifest, target: str, runtime: str, precision: str,
                  threads: int, budget_s: float) -> dict[str, Any]:
    """The precision and artifact one encoder serves; ``auto`` times the candidates here."""
    if precision != "auto":
        if precision == "bf16" and runtime == "openvino" and target == "cpu":
            _require_capability("BF16", "bf16")
        return {"precision": precision, "artifact": encoder_artifact(manifest, target, runtime, precision)}
    dev, tokenizer = _dev_split(export_dir, manifest)
    choice = choose_precision(export_dir, manifest, threads=threads, budget_s=budget_s, dev=dev,
                              tokenizer=tokenizer)
    print(f"{model}: precision auto on this CPU "
          f"({' '.join(choice['capabilities'])}):\n{choice_table(choice)}")
    others = dict.fromkeys(r["artifact"] for r in choice["candidates"] if r["artifact"] != choice["artifact"])
    return {"precision": choice["chosen"], "artifact": choice["artifact"], "choice": choice,
            "other_candidates": list(others)}


def _require_capability(capability: str, precision: str) -> None:
    here = capabilities.current()
    if capability not in here.openvino:
        raise OfaserveError(f"precision {precision} needs a CPU with {capability} (OpenVINO capabilities here: "
                            f"{here.describe()}): use --precision auto or fp32")


def _dev_split(export_dir: Path, manifest: ExportManifest):
    """The export's dev split and tokenizer, for timing real text: reloaded as the compress
    stage that trained the model read it (its manifest, where that folder is at hand), else a
    bundled task's own. (None, None) when neither is here (then only the fixed shape is timed)."""
    from ofaserve.core.tasks import TASKS, load_task
    from ofaserve.core.tokenizer import load_tokenizer

    source = manifest.source
    try:
        try:
            dev = CompressManifest.read(Path(source.get("compress_dir") or "")).split("dev")
        except OfaserveError:
            if source.get("task") not in TASKS:
                raise
            dev = load_task(source["task"]).split("dev")
    except OfaserveError as e:  # e.g. a serving host without the compress output or the task's data
        print(f"precision auto: timing the fixed 16 x 128 batch only ({e})")
        return None, None
    return dev, load_tokenizer(export_dir / manifest.artifacts["tokenizer"], manifest.max_seq_length)


def _write_fused(model_dir: Path, export_dir: Path, manifest: ExportManifest, plan: dict, max_batch_size: int, *,
                 runtime: str, instances: int, threads: int, gpu: bool, queue: QueuePolicy,
                 limits: TextLimits) -> None:
    """The fused text model: tokenize + encode + softmax in one python model."""
    sha = _copy_model_files(export_dir, manifest, model_dir / "1", plan["artifact"], "classifier")
    _write(model_dir, classifier_config(model_dir.name, manifest, max_batch_size, runtime=runtime,
                                        precision=plan["precision"], instances=instances, threads=threads,
                                        gpu=gpu, queue=queue, limits=limits, artifact=plan["artifact"],
                                        model_sha256=sha))
    shutil.copy2(_verified(export_dir, manifest, export_dir / manifest.artifacts["tokenizer"]),
                 model_dir / "1" / "tokenizer.json")


def _write_ensemble(tmp: Path, model: str, export_dir: Path, manifest: ExportManifest, max_batch_size: int,
                    pad_multiple: int, *, queue: QueuePolicy, limits: TextLimits) -> None:
    """tokenizer -> encoder -> postprocess, and the ensemble {model} that chains them."""
    tokenizer_json = _verified(export_dir, manifest, export_dir / manifest.artifacts["tokenizer"])
    tok = tmp / f"{model}_tokenizer"
    _write(tok, tokenizer_config(tok.name, manifest, max_batch_size, pad_multiple, queue=queue, limits=limits))
    shutil.copy2(SOURCES / "tokenizer" / "model.py", tok / "1" / "model.py")
    shutil.copy2(SOURCES / "python_model_io.py", tok / "1" / "python_model_io.py")
    shutil.copy2(tokenizer_json, tok / "1" / "tokenizer.json")
    post = tmp / f"{model}_postprocess"
    _write(post, postprocess_config(post.name, manifest, max_batch_size))
    shutil.copy2(SOURCES / "postprocess" / "model.py", post / "1" / "model.py")
    shutil.copy2(SOURCES / "python_model_io.py", post / "1" / "python_model_io.py")
    _write(tmp / model, ensemble_config(model, manifest, max_batch_size, limits))

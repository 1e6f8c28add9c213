"""What NVIDIA's Triton images (Triton 2.51 = the r24.10 branches) demand of the repositories
`ofaserve repo` writes for them. The pip server here has only the python backend, so the
native openvino / onnxruntime(+TensorRT) backends cannot load these configs in a test; each
rule below was read from the source that enforces it and is named next to it:

  core      triton-inference-server/core r24.10  src/model_config_utils.cc,
            src/backend_model_instance.cc, src/ensemble_scheduler/ensemble_utils.cc,
            src/dynamic_batch_scheduler.cc
  openvino  triton-inference-server/openvino_backend r24.10  src/openvino.cc
  ort       triton-inference-server/onnxruntime_backend r24.10  src/onnxruntime.cc
  trt-ep    microsoft/onnxruntime  tensorrt_execution_provider.cc (cache folder creation)

The deployment recipes (serve/deploy/Dockerfile, triton.yaml, serve/README.md's docker command)
are checked against what the repositories need from the image. They run the 26.06 image:
there, onnxruntime_backend r26.06 reads the r24.10 TensorRT keys below plus trt_bf16_enable
(compared source to source); the core and openvino rules were read at r24.10 only.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import read_manifest
from ofaserve.core.files import sha256_file
from ofaserve.runtime import runtimes
from ofaserve.serve.repository import TRT_CACHE_ROOT, build_repository
from tests.test_serve_export_stub import make_tiny_export

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "serve" / "deploy"
# (target, runtime, precision): every combination `ofaserve repo` accepts for the images
VARIANTS = [("xeon", None, None), ("xeon", "openvino", "bf16"), ("xeon", "openvino-native", None),
            ("xeon", "openvino-native", "bf16"), ("gpu", None, None), ("gpu", "onnxruntime", "fp32"),
            ("gpu", "onnxruntime-trt", None), ("cpu", None, None)]
IDS = [f"{t}-{r or 'default'}-{p or 'default'}" for t, r, p in VARIANTS]
MAX_BATCH = 24  # not the default, so a rule that reads a constant instead of the config fails


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("rule_exports")
    return [make_tiny_export(root / "w100", width_mult=1.0), make_tiny_export(root / "w50", width_mult=0.5, seed=1)]


@pytest.fixture(scope="module")
def built(exports, tmp_path_factory):
    """{variant: (manifest, repository) or the error that refused it}."""
    root = tmp_path_factory.mktemp("rule_repos")
    out = {}
    for (target, runtime, precision), key in zip(VARIANTS, IDS):
        try:
            out[key] = (build_repository(exports, root / key, target=target, runtime=runtime, precision=precision,
                                         max_batch_size=MAX_BATCH).to_dict(), root / key)
        except OfaserveError as e:
            out[key] = e
    return out


@pytest.fixture(scope="module")
def repos(built):
    """The variants that built; each rule then checks every one of them."""
    class Built(dict):
        def __getitem__(self, key):
            value = dict.__getitem__(self, key)
            if isinstance(value, Exception):
                pytest.skip(f"{key} is not built: {value}")
            return value
    return Built(built)


def test_every_variant_builds(built):
    assert not {k: str(v) for k, v in built.items() if isinstance(v, Exception)}


def configs(repo: Path) -> dict[str, mc.ModelConfig]:
    return {p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in repo.glob("*/config.pbtxt")}


def encoders(repo: Path) -> dict[str, mc.ModelConfig]:
    return {k: c for k, c in configs(repo).items() if k.endswith("_encoder")}


def warmup_shapes(config: mc.ModelConfig) -> list[tuple[int, int]]:
    """(rows, seq) each warmup sample sends to one execution (core, backend_model_instance.cc:
    batch_size requests, each of batch 1 when the model batches, else of the dims given)."""
    out = []
    for w in config.model_warmup:
        dims = list(w.inputs["input_ids"].dims)
        out.append((w.batch_size, dims[0]) if config.max_batch_size > 0 else (dims[0], dims[1]))
    return out


# --------------------------------------------------------------------------- openvino backend
@pytest.mark.parametrize("key", IDS)
def test_native_openvino_never_batches_a_dynamic_sequence(repos, key):
    """openvino: with max_batch_size > 0 the backend calls ov::set_batch(model, max_batch_size)
    and, for a smaller batch, pads through infer_request.get_tensor(), whose shape has the
    dynamic sequence axis at 0: the input collector then rejects every request ("unexpected
    total byte size"), starting with the warmup, so the model never loads. Without
    ENABLE_BATCH_PADDING every batch other than max_batch_size is an error instead. Only
    max_batch_size 0 with full [-1, -1] inputs loads (and core rejects dynamic_batching
    there: preferred sizes must be <= max_batch_size)."""
    for name, c in encoders(repos[key][1]).items():
        if c.backend != "openvino":
            continue
        assert c.max_batch_size == 0, f"{name}: native openvino with max_batch_size {c.max_batch_size}"
        assert all(list(i.dims) == [-1, -1] for i in c.input), name
        assert not c.HasField("dynamic_batching"), name
        assert "ENABLE_BATCH_PADDING" not in c.parameters, name


OPENVINO_KEYS = {"INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS", "HINT_BF16", "NUM_STREAMS", "PERFORMANCE_HINT",
                 "ENABLE_BATCH_PADDING", "RESHAPE_IO_LAYERS", "SKIP_OV_DYNAMIC_BATCHSIZE", "CPU_EXTENSION_PATH"}


@pytest.mark.parametrize("key", IDS)
def test_native_openvino_parameters_are_ones_it_reads_and_precision_is_honest(repos, key):
    """openvino: ParseParameters reads only OPENVINO_KEYS (others are silently ignored, e.g. an
    INFERENCE_PRECISION_HINT); HINT_BF16 accepts only YES. With no f32 hint OpenVINO runs
    bf16 by itself on AVX512_BF16/AMX CPUs, so the manifest must not call it fp32."""
    manifest, repo = repos[key]
    for name, c in encoders(repo).items():
        if c.backend != "openvino":
            continue
        assert set(c.parameters) <= OPENVINO_KEYS, f"{name}: {set(c.parameters) - OPENVINO_KEYS} are ignored"
        if "HINT_BF16" in c.parameters:
            assert c.parameters["HINT_BF16"].string_value == "YES"
        assert manifest["precision"] == ("bf16" if "HINT_BF16" in c.parameters else "cpu-default")


# --------------------------------------------------------------------------- core
@pytest.mark.parametrize("key", IDS)
def test_batching_fields_fit_max_batch_size(repos, key):
    """core model_config_utils.cc: preferred batch sizes must be > 0 and <= max_batch_size
    (so a non-batching model cannot have dynamic batching); backend_model_instance.cc +
    openvino.cc: a warmup of batch_size B is B requests in one execution, which a
    non-batching openvino model counts as batch B > 0 and fails, so it must be 1 there."""
    for name, c in configs(repos[key][1]).items():
        if c.HasField("dynamic_batching"):
            assert c.max_batch_size > 0, name
            assert all(0 < p <= c.max_batch_size for p in c.dynamic_batching.preferred_batch_size), name
        for w in c.model_warmup:
            assert (w.batch_size <= c.max_batch_size) if c.max_batch_size > 0 else w.batch_size == 1, (name, w.name)
            ranks = {len(i.dims) for i in c.input}
            assert {len(v.dims) for v in w.inputs.values()} == ranks, (name, w.name)  # full shape when not batching
            assert all(d > 0 for v in w.inputs.values() for d in v.dims), (name, w.name)


def _full_dims(config: mc.ModelConfig, dims) -> list[int]:
    return ([-1] if config.max_batch_size > 0 else []) + list(dims)


def _compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("key", IDS)
def test_ensembles_compose(repos, key):
    """core ensemble_utils.cc: a step model's max_batch_size is 0 or >= the ensemble's, and
    every tensor has the same data type and compatible full shape (batch dim included for
    batching models) on both sides of each edge."""
    cfgs = configs(repos[key][1])
    for ens in (c for c in cfgs.values() if c.platform == "ensemble"):
        produced = {i.name: (i.data_type, _full_dims(ens, i.dims), ens.name) for i in ens.input}
        for step in ens.ensemble_scheduling.step:
            model = cfgs[step.model_name]
            assert model.max_batch_size == 0 or model.max_batch_size >= ens.max_batch_size, model.name
            ins = {i.name: i for i in model.input}
            for model_in, tensor in step.input_map.items():
                dtype, dims, source = produced[tensor]
                assert ins[model_in].data_type == dtype, (model.name, model_in)
                assert _compatible(_full_dims(model, ins[model_in].dims), dims), (model.name, model_in, source)
            outs = {o.name: o for o in model.output}
            for model_out, tensor in step.output_map.items():
                produced[tensor] = (outs[model_out].data_type, _full_dims(model, outs[model_out].dims), model.name)
        for o in ens.output:
            dtype, dims, _ = produced[o.name]
            assert dtype == o.data_type and _compatible(_full_dims(ens, o.dims), dims), (ens.name, o.name)


@pytest.mark.parametrize("key", IDS)
def test_requests_of_different_lengths_can_share_a_batch(repos, key):
    """core dynamic_batch_scheduler.cc: without allow_ragged_batch a formed batch ends at the
    first request whose shape differs. Our python encoders pad the formed batch themselves
    (ragged inputs); a batching native encoder gets lengths padded to a multiple by the
    tokenizer so that requests can merge at all."""
    cfgs = configs(repos[key][1])
    for name, c in encoders(repos[key][1]).items():
        tokenizer = cfgs[name.replace("_encoder", "_tokenizer")]
        multiple = int(tokenizer.parameters["pad_to_multiple_of"].string_value)
        if c.backend == "python":
            assert all(i.allow_ragged_batch for i in c.input), name
        elif c.max_batch_size > 0:
            assert multiple > 1, f"{name}: native batching encoder behind an unpadded tokenizer"


# --------------------------------------------------------------------------- TensorRT
ORT_TRT_KEYS = {
    "precision_mode", "max_workspace_size_bytes", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "int8_calibration_table_name", "int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level",
    "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
    "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model",
    "trt_ep_context_file_path", "trt_ep_context_embed_mode"}


def trt_settings(config: mc.ModelConfig) -> dict[str, str] | None:
    """The TensorRT options a config gives: the onnxruntime backend's accelerator
    parameters, or what our python model passes runtimes._onnxruntime_trt (the profile is
    derived from max_batch_size and max_seq_length there, as python_model_io.runner_options does)."""
    accs = config.optimization.execution_accelerators.gpu_execution_accelerator
    if accs:
        (acc,) = accs
        assert acc.name == "tensorrt"
        return dict(acc.parameters)
    if config.parameters["runtime"].string_value == "onnxruntime-trt":
        max_seq = int(config.parameters["max_seq_length"].string_value)
        return {"trt_engine_cache_path": config.parameters["trt_cache_dir"].string_value,
                "precision_mode": config.parameters["precision"].string_value.upper(),
                "trt_layer_norm_fp32_fallback": "1" if config.parameters["precision"].string_value == "fp16" else "0",
                **runtimes.trt_profile_shapes(config.max_batch_size, max_seq)}
    return None


def _profile(text: str) -> tuple[int, int]:
    shapes = {}
    for item in text.split(","):
        name, shape = item.split(":")
        shapes[name] = tuple(int(x) for x in shape.split("x"))
    assert set(shapes) == {"input_ids", "token_type_ids"} and len(set(shapes.values())) == 1, text
    return shapes["input_ids"]


@pytest.mark.parametrize("key", [k for k in IDS if k.startswith("gpu")])
def test_tensorrt_options_load_and_cover_every_shape_served(repos, key):
    """ort: an accelerator parameter outside ORT_TRT_KEYS fails the model load ("unknown
    parameter ... for TensorRT Execution Accelerator"). Without an explicit profile the
    TensorRT EP builds for the shapes it has seen and rebuilds the engine, blocking the
    instance, for the first request outside them: the profile spans 1..max_batch x
    1..the longest length the tokenizer sends, its opt is a shape served, and every warmup
    lies inside it. FP16 sets trt_layer_norm_fp32_fallback (trt-ep: Pow layers directly
    followed by a Reduce, the variance of a decomposed LayerNorm, run in FP32)."""
    manifest, repo = repos[key]
    for name, c in encoders(repo).items():
        trt = trt_settings(c)
        assert trt is not None, name
        if c.platform == "onnxruntime_onnx":
            assert set(trt) <= ORT_TRT_KEYS, f"{name}: unknown to the onnxruntime backend: {set(trt) - ORT_TRT_KEYS}"
        max_seq = int(manifest["models"][name.removesuffix("_encoder")]["max_seq_length"])
        tokenizer = configs(repo).get(name.replace("_encoder", "_tokenizer"))
        if tokenizer is not None:  # the longest length the tokenizer sends (it pads after truncating)
            max_seq = runtimes.padded_length(max_seq, int(tokenizer.parameters["pad_to_multiple_of"].string_value))
        low, opt, high = (_profile(trt[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max"))
        assert low == (1, 1) and high == (c.max_batch_size, max_seq), name
        assert low <= opt <= high and opt in warmup_shapes(c), name
        assert (c.max_batch_size, max_seq) in warmup_shapes(c), f"{name}: the largest shape is built at load"
        for rows, seq in warmup_shapes(c):
            assert 1 <= rows <= high[0] and 1 <= seq <= high[1], (name, rows, seq)
        if trt["precision_mode"] == "FP16":
            assert trt.get("trt_layer_norm_fp32_fallback") in ("1", "true"), name


@pytest.mark.parametrize("key", [k for k in IDS if k.startswith("gpu")])
def test_tensorrt_cache_folders_can_be_created(repos, key):
    """trt-ep: ONNX Runtime creates only the last level of trt_engine_cache_path
    (std::filesystem::create_directory) and fails the session when it cannot. Each cache is
    one level under TRT_CACHE_ROOT, which every recipe provides; caches are per model and
    named by the model file's hash (engines are keyed by graph file name and structure, not
    weights, so a re-export must not find the previous export's engine)."""
    repo = repos[key][1]
    paths = []
    for name, c in encoders(repo).items():
        path = trt_settings(c)["trt_engine_cache_path"]
        assert str(Path(path).parent) == TRT_CACHE_ROOT, f"{name}: {path}"
        model_file = repo / name / "1" / (c.parameters["model_file"].string_value if c.backend == "python"
                                          else c.default_model_filename)
        assert Path(path).name == f"{name}-{sha256_file(model_file)[:12]}", name
        paths.append(path)
    assert len(set(paths)) == len(paths) == 2
    for recipe, folders in recipe_cache_folders().items():
        assert TRT_CACHE_ROOT in folders, f"{recipe} neither creates nor mounts {TRT_CACHE_ROOT}"


# --------------------------------------------------------------------------- recipes
def _dockerfile_runs() -> list[list[str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    runs = [line[len("RUN"):].strip() for line in text.splitlines() if line.startswith("RUN")]
    return [shlex.split(part) for run in runs for part in re.split(r"&&|;", run)]


def _readme_docker_command() -> str:
    text = (ROOT / "serve" / "README.md").read_text()
    section = text[text.index("# Serving on NVIDIA Triton images"):]  # the heading, at any level
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    command = re.search(r"^docker run .*?(?<!\\)$", block.replace("\\\n", " "), re.M | re.S)
    assert command, "the README's NVIDIA-image section has no docker run command"
    return command.group(0)


def _triton_yaml():
    yaml = pytest.importorskip("yaml")
    (deploy,) = [d for d in yaml.safe_load_all((DEPLOY / "triton.yaml").read_text()) if d and d["kind"] == "Deployment"]
    return deploy["spec"]["template"]["spec"]


def recipe_cache_folders() -> dict[str, set[str]]:
    """Folders each recipe creates or mounts in the serving container."""
    docker = {arg for cmd in _dockerfile_runs() if cmd[:1] == ["mkdir"] for arg in cmd[1:] if not arg.startswith("-")}
    spec = _triton_yaml()
    (triton,) = [c for c in spec["containers"] if c["name"] == "triton"]
    k8s = {m["mountPath"] for m in triton["volumeMounts"]}
    readme = set(re.findall(r"-v\s+\S+:(/[^\s:]+)", _readme_docker_command()))
    readme |= set(re.findall(r"mkdir -p ([^\s&;\"]+)", _readme_docker_command()))
    return {"Dockerfile": docker, "triton.yaml": k8s, "serve/README.md": readme}


def _pip_installs(words: list[str]) -> set[str]:
    """What a pip command installs: its named packages, and the pins of a `-r` file, which
    each recipe takes from this folder (the hash-locked image-requirements.txt)."""
    if "install" not in words:
        return set()
    args = words[words.index("install") + 1:]
    locked = {args[i + 1] for i, w in enumerate(args[:-1]) if w == "-r"}
    out = {w for w in args if not w.startswith("-") and w not in locked}
    for path in locked:
        text = re.sub(r"\\\n\s*", " ", (DEPLOY / Path(path).name).read_text())
        out |= {line.split()[0] for line in text.splitlines() if line and not line.startswith(("#", " "))}
    return out


def recipe_packages() -> dict[str, set[str]]:
    """pip packages each recipe installs into the serving container."""
    docker = set().union(*(_pip_installs(c) for c in _dockerfile_runs() if c[:1] in (["pip"], ["pip3"])))
    init = [c for c in _triton_yaml().get("initContainers", []) if c["name"] == "python-deps"]
    k8s = set().union(*(_pip_installs(c["command"]) for c in init))
    readme = set()
    for part in re.split(r"&&|;|\"|'", _readme_docker_command()):
        words = part.split()
        if words[:1] in (["pip"], ["pip3"]):
            readme |= _pip_installs(words)
    return {"Dockerfile": docker, "triton.yaml": k8s, "serve/README.md": readme}


@pytest.mark.parametrize("key", IDS)
def test_every_recipe_installs_what_the_python_models_import(repos, key):
    """The image has only Triton's python backend: every third-party module the python models
    of a repository import (ast of model.py, python_model_io.py, and the encoder runtime's own
    module) must come from the packages the manifest names, and every recipe for NVIDIA's
    image installs them (onnxruntime-trt is for the pip server on a GPU machine, cpu for
    the pip server here: their packages come from the venv, not these recipes)."""
    manifest, repo = repos[key]
    needed = set(manifest["image_packages"])
    names = {re.split(r"[=<>]", p)[0] for p in needed}
    for model_py in repo.glob("*/1/model.py"):
        for source in (model_py, model_py.with_name("python_model_io.py")):
            for module in _imports(source):
                if module in sys.stdlib_module_names or module in ("triton_python_backend_utils", "python_model_io",
                                                                  "runtimes"):
                    continue
                assert module in names, f"{source.relative_to(repo)} imports {module}, not in {sorted(names)}"
        config = text_format.Parse((model_py.parents[1] / "config.pbtxt").read_text(), mc.ModelConfig())
        runtime = config.parameters["runtime"].string_value if "runtime" in config.parameters else ""
        module = {"openvino": "openvino", "onnxruntime-trt": "onnxruntime-gpu", "onnxruntime": "onnxruntime",
                  "paddle": "paddlepaddle"}.get(runtime)
        assert module is None or module in names, f"{model_py.parent.parent.name}: runtime {runtime} needs {module}"
    if manifest["target"] == "cpu" or manifest["runtime"] == "onnxruntime-trt":
        return
    for recipe, installed in recipe_packages().items():
        assert needed <= installed, f"{recipe} does not install {sorted(needed - installed)}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_xeon_defaults_to_the_cpu_targets_python_encoder(repos):
    """The xeon target's encoder is the one the cpu target serves (and the tests run) here."""
    xeon, cpu = encoders(repos[IDS[0]][1]), encoders(repos[IDS[-1]][1])
    assert xeon.keys() == cpu.keys()
    for name in xeon:
        assert xeon[name] == cpu[name]
    assert read_manifest(repos[IDS[0]][1], "repo")["precision"] == read_manifest(repos[IDS[-1]][1], "repo")["precision"]


@pytest.mark.integration
def test_xeon_repository_serves_on_the_bundled_server(repos, exports):
    """The xeon default is run here, not only read: the real server loads the repository and
    its ensembles answer as each export's ONNX does in-process."""
    from ofaserve.serve.client import classify
    from ofaserve.serve.server import TritonServer, free_port
    from tests.test_serve_integration import SENTENCES, Reference

    manifest, repo = repos[IDS[0]]
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        answers = {m: classify(SENTENCES, url=server.grpc_url, model=m) for m in manifest["models"]}
    for (model, got), export in zip(answers.items(), exports):
        ref = Reference(export)
        for text, r in zip(SENTENCES, got):
            probs = [r["probs"][label] for label in ref.labels]
            assert max(abs(a - b) for a, b in zip(probs, ref.probs(text))) <= 1e-4, (model, text)


def _previous_xeon_encoder(config: mc.ModelConfig) -> None:
    """Turn a native openvino encoder into what the previous generator wrote for --target
    xeon (max_batch_size 16, [-1] inputs, dynamic batching, batch padding), without its
    warmups: a failed warmup makes Triton 2.51 tear the instance down, which crashes the
    server now and then (SIGSEGV in TritonBackendThread::StopBackendThread), so the test
    sends the requests instead."""
    config.max_batch_size = 16
    for tensor in list(config.input) + list(config.output):
        del tensor.dims[0]
    config.dynamic_batching.preferred_batch_size.append(16)
    config.parameters["ENABLE_BATCH_PADDING"].string_value = "YES"
    del config.model_warmup[:]


@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get("OFASERVE_OPENVINO_BACKEND"),
                    reason="needs Triton's openvino backend built for Triton 2.51: OFASERVE_OPENVINO_BACKEND=<dir> "
                           "holding libtriton_openvino.so")
def test_native_openvino_on_the_real_backend(exports, tmp_path):
    """Triton's own openvino backend (built from its r24.10 source against the openvino wheel) on
    the bundled 2.51 server: the --runtime openvino-native repository loads and answers as the
    export's ONNX does (bf16 where the CPU has it, hence the tolerance). The previous
    generator's encoder rejects a smaller batch, as openvino.cc's batch padding predicts (it
    pads into the request tensor, whose sequence axis is 0 until a full batch has set it),
    and from then on every batch: its batch_pad_size_ is never reset to 0."""
    from ofaserve.serve.client import classify
    from ofaserve.serve.server import TritonServer, free_port
    from tests.test_serve_integration import SENTENCES, Reference

    backend = Path(os.environ["OFASERVE_OPENVINO_BACKEND"])

    def server(repo: Path) -> TritonServer:
        return TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                            extra_backends=(backend,))

    manifest = build_repository(exports[:1], tmp_path / "new", target="xeon", runtime="openvino-native",
                                max_batch_size=16).to_dict()
    (model,) = manifest["models"]
    with server(tmp_path / "new") as srv:
        answers = classify(SENTENCES, url=srv.grpc_url, model=model, batch_size=3)
    ref = Reference(exports[0])
    for text, r in zip(SENTENCES, answers):
        assert max(abs(r["probs"][l] - p) for l, p in zip(ref.labels, ref.probs(text))) <= 1e-2, text

    build_repository(exports[:1], tmp_path / "old", target="xeon", runtime="openvino-native", max_batch_size=16)
    config_path = tmp_path / "old" / f"{model}_encoder" / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    _previous_xeon_encoder(config)
    config_path.write_text(text_format.MessageToString(config))
    rejected = r"unexpected total byte size \d+ for input '\w+', expecting 0"
    with server(tmp_path / "old") as srv:  # the first padded batch meets a tensor of shape [16, 0]
        with pytest.raises(OfaserveError, match=rejected):
            classify(SENTENCES[:1], url=srv.grpc_url, model=model)
        with pytest.raises(OfaserveError, match=rejected):  # the padding state sticks: full batches fail too
            classify((SENTENCES * 4)[:16], url=srv.grpc_url, model=model, batch_size=16)

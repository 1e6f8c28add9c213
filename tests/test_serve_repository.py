"""Model repository generation: configs parse back as ModelConfig and carry what Triton
needs for every target; repositories are self-contained and written atomically.
No server here (see test_serve_integration.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import read_manifest
from ofaserve.serve.repository import TRT_CACHE_ROOT, build_repository, runs_in_python_backend
from ofaserve.runtime import runtimes
from tests.test_serve_export_stub import serve_exports  # noqa: F401  (fixture)

TARGETS = [("cpu", "openvino"), ("cpu", "paddle"), ("cpu", "onnxruntime"), ("xeon", "openvino"),
           ("xeon", "openvino-native"), ("gpu", "onnxruntime"), ("gpu", "onnxruntime-trt")]


def load_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def model_names(exports: list[Path], name: str = "bert") -> list[str]:
    return [f"{name}_w{round(float(read_manifest(e, 'export')['width_mult']) * 100)}" for e in exports]


@pytest.fixture(scope="module")
def repos(serve_exports, tmp_path_factory):
    """One repository per (target, runtime), each holding both exports."""
    root = tmp_path_factory.mktemp("repos")
    return {(t, r): (build_repository(serve_exports, root / f"{t}-{r}", target=t, runtime=r).to_dict(), root / f"{t}-{r}")
            for t, r in TARGETS}


@pytest.mark.parametrize("target,runtime", TARGETS)
def test_every_config_parses_and_is_complete(repos, serve_exports, target, runtime):
    manifest, repo = repos[(target, runtime)]
    assert manifest["target"] == target and manifest["runtime"] == runtime
    names = model_names(serve_exports)
    expected = {f"{m}{s}" for m in names for s in ("", "_tokenizer", "_encoder", "_postprocess")}
    assert {p.name for p in repo.iterdir() if p.is_dir()} == expected
    for export, m in zip(serve_exports, names):
        em = read_manifest(export, "export")
        n = len(em["labels"])
        configs = {s: load_config(repo / f"{m}{s}") for s in ("", "_tokenizer", "_encoder", "_postprocess")}
        native_ov = runtime == "openvino-native"  # loads only without a batch dimension
        for suffix, cfg in configs.items():
            assert cfg.name == f"{m}{suffix}"
            assert cfg.max_batch_size == (0 if native_ov and suffix == "_encoder" else 64)
            assert cfg.version_policy.latest.num_versions == 1
            assert (repo / cfg.name / "1").is_dir()

        tok = configs["_tokenizer"]
        assert tok.backend == "python"
        assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in tok.input] == [("TEXT", "TYPE_STRING", [1])]
        assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in tok.output] == [
            ("input_ids", "TYPE_INT64", [-1]), ("token_type_ids", "TYPE_INT64", [-1])]
        assert tok.parameters["max_seq_length"].string_value == str(em["max_seq_length"])
        assert (repo / tok.name / "1" / "model.py").is_file() and (repo / tok.name / "1" / "tokenizer.json").is_file()

        enc = configs["_encoder"]
        seq = [-1, -1] if native_ov else [-1]
        assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in enc.input] == [
            ("input_ids", "TYPE_INT64", seq), ("token_type_ids", "TYPE_INT64", seq)]
        assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in enc.output] == [
            ("logits", "TYPE_FP32", [-1, n] if native_ov else [n])]
        if not native_ov:
            assert list(enc.dynamic_batching.preferred_batch_size) == [16]
            assert 0 < enc.dynamic_batching.max_queue_delay_microseconds <= 5000
        assert len(enc.model_warmup) >= 1
        for w in enc.model_warmup:
            assert set(w.inputs) == {"input_ids", "token_type_ids"}
            assert all(v.data_type == mc.TYPE_INT64 and v.zero_data for v in w.inputs.values())
        kind = enc.instance_group[0].kind
        assert kind == (mc.ModelInstanceGroup.KIND_GPU if target == "gpu" else mc.ModelInstanceGroup.KIND_CPU)
        files = {p.name for p in (repo / enc.name / "1").iterdir()}
        if runs_in_python_backend(target, runtime):
            assert enc.backend == "python"
            assert {"model.py", "runtimes.py"} <= files
            assert enc.parameters["runtime"].string_value == runtime
            model_file = repo / enc.name / "1" / enc.parameters["model_file"].string_value
            if runtime == "paddle":
                assert model_file.with_suffix(".pdiparams").is_file()
            else:
                assert model_file.is_file()
            assert all(i.allow_ragged_batch for i in enc.input)
        elif native_ov:
            assert enc.backend == "openvino" and enc.default_model_filename == "model.onnx"
            assert "model.onnx" in files and "model.py" not in files
            assert enc.parameters["RESHAPE_IO_LAYERS"].string_value == "YES"
            assert not any(i.allow_ragged_batch for i in enc.input)
        else:
            assert enc.platform == "onnxruntime_onnx" and "model.onnx" in files
            (acc,) = enc.optimization.execution_accelerators.gpu_execution_accelerator
            assert acc.name == "tensorrt"
            assert acc.parameters["precision_mode"] == "FP16"
            assert int(acc.parameters["max_workspace_size_bytes"]) > 0
            assert acc.parameters["trt_engine_cache_enable"] == "1" and acc.parameters["trt_engine_cache_path"]

        post = configs["_postprocess"]
        assert post.backend == "python"
        assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in post.output] == [
            ("LABEL", "TYPE_STRING", [1]), ("PROBS", "TYPE_FP32", [n])]
        assert json.loads(post.parameters["labels"].string_value) == em["labels"]

        ens = configs[""]
        assert ens.platform == "ensemble"
        assert [i.name for i in ens.input] == ["TEXT"] and [o.name for o in ens.output] == ["LABEL", "PROBS"]
        steps = ens.ensemble_scheduling.step
        assert [s.model_name for s in steps] == [f"{m}_tokenizer", f"{m}_encoder", f"{m}_postprocess"]
        assert dict(steps[1].input_map) == {"input_ids": "input_ids", "token_type_ids": "token_type_ids"}
        assert dict(steps[2].output_map) == {"LABEL": "LABEL", "PROBS": "PROBS"}


@pytest.mark.parametrize("target,runtime", TARGETS)
def test_repository_holds_no_host_paths(repos, serve_exports, target, runtime):
    _, repo = repos[(target, runtime)]
    forbidden = [str(repo.parent), str(Path.home()), "/work/", str(Path(__file__).resolve().parents[1])]
    forbidden += [str(e.resolve()) for e in serve_exports]
    for path in repo.rglob("*"):
        assert not path.is_symlink(), f"{path} is a symlink"
        if path.is_file():
            data = path.read_bytes()
            for f in forbidden:
                assert f.encode() not in data, f"{path} mentions host path {f}"
    for cfg_path in repo.glob("*/config.pbtxt"):  # the only absolute value allowed: the TRT
        cfg = text_format.Parse(cfg_path.read_text(), mc.ModelConfig())  # engine cache where it serves
        for key, value in cfg.parameters.items():
            assert not value.string_value.startswith("/") or value.string_value.startswith(TRT_CACHE_ROOT + "/"), \
                f"{cfg_path}: {key} is absolute"


def test_precision_and_threads_are_recorded(serve_exports, tmp_path, monkeypatch):
    from ofaserve.runtime import capabilities

    # a CPU with bf16, whichever runs the test: building the repository runs no model
    monkeypatch.setattr(capabilities, "current", lambda: capabilities.PROFILES["avx512_bf16_vnni"])
    build_repository(serve_exports[:1], tmp_path / "r", target="cpu", precision="bf16", instances=2, threads=1)
    (enc_dir,) = [p for p in (tmp_path / "r").iterdir() if p.name.endswith("_encoder")]
    cfg = load_config(enc_dir)
    assert cfg.parameters["precision"].string_value == "bf16"
    assert cfg.parameters["threads"].string_value == "1"
    assert cfg.instance_group[0].count == 2
    build_repository(serve_exports[:1], tmp_path / "x", target="xeon", precision="bf16")
    (enc_dir,) = [p for p in (tmp_path / "x").iterdir() if p.name.endswith("_encoder")]
    assert load_config(enc_dir).parameters["precision"].string_value == "bf16"
    manifest = build_repository(serve_exports[:1], tmp_path / "n", target="xeon", runtime="openvino-native").to_dict()
    (enc_dir,) = [p for p in (tmp_path / "n").iterdir() if p.name.endswith("_encoder")]
    assert manifest["precision"] == "cpu-default" and "HINT_BF16" not in load_config(enc_dir).parameters
    build_repository(serve_exports[:1], tmp_path / "n", target="xeon", runtime="openvino-native", precision="bf16")
    assert load_config(enc_dir).parameters["HINT_BF16"].string_value == "YES"


def test_output_is_replaced_atomically(serve_exports, tmp_path):
    out = tmp_path / "repo"
    build_repository(serve_exports[:1], out)
    before = sorted(p.name for p in out.iterdir())
    broken = tmp_path / "broken_export"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"stage": "export", "width_mult": 0.5}))
    with pytest.raises(OfaserveError, match="lacks"):
        build_repository([serve_exports[1], broken], out)
    assert sorted(p.name for p in out.iterdir()) == before  # previous repository untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers
    build_repository(serve_exports, out)  # a new repository replaces the old one whole
    assert len([p for p in out.iterdir() if p.is_dir()]) == 8


def test_refuses_to_clobber_a_foreign_folder(serve_exports, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OfaserveError, match="not an ofaserve repo output"):
        build_repository(serve_exports[:1], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs,message", [
    (dict(target="tpu"), "unknown target"),
    (dict(target="cpu", runtime="onnxruntime-trt"), "supports runtime"),
    (dict(target="xeon", runtime="paddle"), "supports runtime"),
    (dict(target="gpu", precision="bf16"), "supports precision"),
    (dict(target="cpu", runtime="onnxruntime", precision="bf16"), "fp32 or int8"),
    (dict(target="cpu", runtime="onnxruntime", precision="int8"), "int8 runs on runtime openvino"),
    (dict(target="cpu", runtime="paddle", precision="auto"), "auto runs on runtime openvino"),
    (dict(max_batch_size=0), "max_batch_size"),
    (dict(name="bad name!"), "model name"),
    (dict(text_pipeline="both"), "unknown text pipeline"),
    (dict(target="xeon", runtime="openvino-native", text_pipeline="fused"), "python backend"),
    (dict(target="xeon", runtime="openvino-native", precision="fp32"), "cannot pin fp32"),
    (dict(target="xeon", precision="cpu-default"), "cpu-default is for"),
    (dict(target="gpu", text_pipeline="fused"), "python backend"),
])
def test_bad_arguments_are_one_line_errors(serve_exports, tmp_path, kwargs, message):
    with pytest.raises(OfaserveError, match=message) as e:
        build_repository(serve_exports[:1], tmp_path / "r", **kwargs)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


def test_encoder_artifact_follows_runtime_and_precision(serve_exports, tmp_path):
    from ofaserve.core.manifests import ExportManifest
    from ofaserve.serve.repository import encoder_artifact
    arts = {"onnx": "a", "onnx_ort_fused": "b", "openvino_int8": "c.xml", "paddle_static": "d"}
    m = ExportManifest(artifacts=arts)
    assert encoder_artifact(m, "cpu", "onnxruntime", "fp32") == "onnx_ort_fused"
    assert encoder_artifact(m, "cpu", "openvino", "int8") == "openvino_int8"  # NNCF's INT8 IR
    with_packed_int8 = ExportManifest(artifacts={**arts, "onnx_packed": "e", "openvino_packed_int8": "f.xml"})
    assert encoder_artifact(with_packed_int8, "cpu", "openvino", "int8") == "openvino_packed_int8"
    assert encoder_artifact(m, "cpu", "openvino", "fp32") == "onnx"  # contrib ops: ORT only
    packed = ExportManifest(artifacts={**arts, "onnx_packed": "e"})
    assert encoder_artifact(packed, "cpu", "openvino", "bf16") == "onnx_packed"  # our python encoder packs
    assert encoder_artifact(packed, "xeon", "openvino", "fp32") == "onnx_packed"  # the same python encoder
    assert encoder_artifact(packed, "xeon", "openvino-native", "cpu-default") == "onnx"  # Triton's own cannot pack
    assert encoder_artifact(packed, "cpu", "onnxruntime", "fp32") == "onnx_ort_fused"
    assert encoder_artifact(m, "cpu", "paddle", "fp32") == "paddle_static"
    assert encoder_artifact(m, "gpu", "onnxruntime", "fp16") == "onnx"  # TRT builds FP16 from FP32 ONNX
    assert encoder_artifact(ExportManifest(artifacts={"onnx": "a"}), "cpu", "onnxruntime", "fp32") == "onnx"
    with pytest.raises(OfaserveError, match="shipped no INT8 IR"):
        encoder_artifact(ExportManifest(artifacts={"onnx": "a"}), "cpu", "openvino", "int8")
    manifest = build_repository(serve_exports, tmp_path / "r", runtime="onnxruntime").to_dict()
    for model, export in zip(manifest["models"], serve_exports):
        expected = "onnx_ort_fused" if read_manifest(export, "export")["artifacts"].get("onnx_ort_fused") else "onnx"
        assert manifest["models"][model]["encoder_artifact"] == expected


def test_two_exports_of_the_same_width_are_refused(serve_exports, tmp_path):
    with pytest.raises(OfaserveError, match="both export width"):
        build_repository([serve_exports[0], serve_exports[0]], tmp_path / "r")


def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(OfaserveError, match="does not exist"):
        build_repository([tmp_path / "nope"], tmp_path / "r")


# ---------------------------------------------------------------- runtimes in-process
@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, size=(3, 12)).astype(np.int64)
    ids[:, 0], ids[1, 7:] = 2, 0  # [CLS] first; row 1 padded
    return ids, np.zeros_like(ids)


@pytest.mark.parametrize("kind,artifact", [("openvino", "onnx"), ("paddle", "paddle_static"), ("onnxruntime", "onnx")])
def test_runtimes_agree_with_onnxruntime(serve_exports, batch, kind, artifact):
    export = serve_exports[1]  # always the stub: known vocabulary size
    art = read_manifest(export, "export")["artifacts"]
    reference = runtimes.load_runner("onnxruntime", export / art["onnx"])(*batch)
    logits = runtimes.load_runner(kind, export / art[artifact], "fp32", threads=1)(*batch)
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    np.testing.assert_allclose(logits, reference, atol=1e-5)


def test_runner_from_encoder_parameters(repos, batch):
    _, repo = repos[("cpu", "paddle")]
    enc = sorted(repo.glob("*_w67_encoder"))[0]
    params = {k: v.string_value for k, v in load_config(enc).parameters.items()}
    run = runtimes.load_runner(enc / "1", params)
    assert run(*batch).shape == (3, 2)


def test_runtime_rejects_what_it_cannot_do(tmp_path):
    with pytest.raises(runtimes.RuntimeConfigError, match="unknown runtime"):
        runtimes.load_runner("tensorflow", tmp_path / "m.onnx")
    with pytest.raises(runtimes.RuntimeConfigError, match="supports precision"):
        runtimes.load_runner("onnxruntime", tmp_path / "m.onnx", "bf16")
    with pytest.raises(runtimes.RuntimeConfigError, match="does not exist"):
        runtimes.load_runner("openvino", tmp_path / "m.onnx")


@pytest.mark.parametrize("ids,types,message", [
    (np.zeros((2, 4), np.int32), np.zeros((2, 4), np.int64), "INT64"),
    (np.zeros((4,), np.int64), np.zeros((4,), np.int64), r"\[batch, seq\]"),
    (np.zeros((2, 4), np.int64), np.zeros((2, 5), np.int64), "differ in shape"),
    (np.zeros((2, 0), np.int64), np.zeros((2, 0), np.int64), "empty sequence"),
    (np.zeros((0, 4), np.int64), np.zeros((0, 4), np.int64), "empty batch"),
    (np.zeros((1, 33), np.int64), np.zeros((1, 33), np.int64), "exceeds"),
    (np.array([[2, 500, 3]]), np.zeros((1, 3), np.int64), "out of range"),
    (np.array([[2, -1, 3]]), np.zeros((1, 3), np.int64), "out of range"),
    (np.array([[2, 5, 3]]), np.array([[0, 2, 0]]), "token_type_ids must be in"),
])
def test_check_inputs_explains_bad_batches(ids, types, message):
    problem = runtimes.check_inputs(ids, types, vocab_size=128, max_seq_length=32)
    assert problem is not None and "\n" not in problem
    assert __import__("re").search(message, problem)


def test_check_inputs_accepts_a_good_batch(batch):
    assert runtimes.check_inputs(*batch, vocab_size=128, max_seq_length=32) is None


def test_run_length_buckets_splits_sorted_equal_chunks_and_keeps_row_order():
    """3 equal-size chunks of length-sorted rows, each cut to its own longest row; results
    land back in the original row order. Equal lengths or small batches: one call."""
    rng = np.random.default_rng(0)
    lengths = rng.permutation([3] * 6 + [20] * 5 + [40] * 5)
    ids = np.zeros((16, 40), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, 100, n)
    calls = []

    def run(input_ids, token_type_ids):  # "logits" = the row's token sum, order-independent
        calls.append(input_ids.shape)
        return input_ids.sum(1, keepdims=True).astype(np.float32)

    out = runtimes.run_length_buckets(run, ids, np.zeros_like(ids), 3)
    assert calls == [(6, 3), (5, 20), (5, 40)]
    np.testing.assert_array_equal(out, ids.sum(1, keepdims=True))
    calls.clear()
    runtimes.run_length_buckets(run, np.ones((16, 40), np.int64), np.zeros((16, 40), np.int64), 3)
    runtimes.run_length_buckets(run, ids[:7], np.zeros_like(ids[:7]), 3)  # 7 rows: fewer than 4 per chunk
    assert calls == [(16, 40), (7, 40)]


def test_onnxruntime_threads_do_not_spin_between_calls():
    """A spinning ORT pool keeps burning cores after each call, which the server's other
    processes need (measured: it slowed later served requests by ~15%)."""
    opts = runtimes.ort_cpu_options(2)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)


# ---------------------------------------------------------------- sequence packing
def _padded(lengths, seq=None, seed=0):
    rng = np.random.default_rng(seed)
    seq = seq or max(lengths)
    ids = np.zeros((len(lengths), seq), dtype=np.int64)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(5, 100, size=n)
        ids[r, 0] = 2
    return ids, rng.integers(0, 2, size=ids.shape).astype(np.int64) * (ids != 0)


def test_pack_rows_keeps_every_token_once_with_restarting_positions():
    lengths = [30, 5, 12, 28, 3, 17, 9, 9, 26, 4, 11, 20, 7, 15, 6, 2]
    ids, types = _padded(lengths, seq=40)
    p = runtimes.pack_rows(ids, types)
    rows, width = p["input_ids"].shape
    assert width == 32 and rows * width < len(lengths) * 30  # packed below the padded batch
    flat = {k: v.reshape(-1) for k, v in p.items() if k != "cls_index"}
    for i, n in enumerate(lengths):
        at = int(p["cls_index"][i])
        np.testing.assert_array_equal(flat["input_ids"][at:at + n], ids[i, :n])
        np.testing.assert_array_equal(flat["token_type_ids"][at:at + n], types[i, :n])
        np.testing.assert_array_equal(flat["position_ids"][at:at + n], np.arange(n))
        seg = flat["segment_ids"][at:at + n]
        assert seg[0] > 0 and (seg == seg[0]).all()
        assert at // width == (at + n - 1) // width  # a sentence never crosses a row
    assert (p["segment_ids"] > 0).sum() == sum(lengths)  # nothing else is marked real
    assert (p["input_ids"][p["segment_ids"] == 0] == 0).all()


@pytest.mark.parametrize("lengths,seq,shape", [
    ([128] * 16, 128, (16, 128)),   # nothing to pack: the plain batch
    ([100] * 16, 100, (16, 100)),   # its own width saves 22% over 128 rows
    ([7], 7, (1, 7)),               # one sentence keeps its exact length
    ([40, 3], 40, (1, 64)),         # two sentences share a 64 row (40 + 3)
    ([20, 18], 20, (2, 20)),        # a small batch that cannot share keeps its exact width
    ([60] + [10] * 15, 60, (4, 64)),  # 210 tokens in 64-wide rows
])
def test_pack_rows_widths(lengths, seq, shape):
    assert runtimes.pack_rows(*_padded(lengths, seq))["input_ids"].shape == shape


@pytest.mark.parametrize("kind", ["openvino", "onnxruntime"])
def test_packed_runner_equals_the_plain_graph(serve_exports, kind):
    export = serve_exports[0]  # the real tiny export: it has the packed graph
    art = read_manifest(export, "export")["artifacts"]
    ids, types = _padded([9, 2, 31, 5, 17, 17, 4, 12, 30, 6], seq=32, seed=3)
    types[:] = 0
    ids[2, 7] = ids[4, 1] = 0  # a pad id inside a sentence is masked like the plain graph masks it
    plain = runtimes.load_runner("onnxruntime", export / art["onnx"])
    packed = runtimes.load_runner(kind, export / art["onnx_packed"], "fp32", threads=1)
    assert packed.packed and not getattr(plain, "packed", False)
    np.testing.assert_allclose(packed(ids, types), plain(ids, types), atol=1e-5)


def test_packed_encoder_runs_one_call(repos, serve_exports):
    """The packed graph is served where the export has one, in the precision that
    `--precision auto` chose on this CPU (INT8 wins the timing where VNNI or AMX make it fast)."""
    manifest, repo = repos[("cpu", "openvino")]
    for model, export in zip(manifest["models"], serve_exports):
        has_packed = "onnx_packed" in read_manifest(export, "export")["artifacts"]
        served = manifest["models"][model]
        int8 = served["precision"] == "int8"
        expected = {(True, False): "onnx_packed", (True, True): "openvino_packed_int8",
                    (False, False): "onnx", (False, True): "openvino_int8"}[(has_packed, int8)]
        assert served["encoder_artifact"] == expected, served["precision"]
        params = load_config(repo / f"{model}_encoder").parameters
        assert params["length_buckets"].string_value == ("1" if has_packed else "3")


# ---------------------------------------------------------------- every command's --help
@pytest.mark.parametrize("command", ["compress", "export", "repo", "serve", "classify", "bench", "demo"])
def test_every_command_explains_its_flags(command, capsys):
    """argparse formats help lazily: a stray '%' in one flag's help breaks only --help."""
    import ofaserve.cli

    with pytest.raises(SystemExit) as exit_info:
        ofaserve.cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--" in out


@pytest.mark.parametrize("module,argv", [("ofaserve.benchmarks.reliability.cli", ["--help"]),
                                         ("benchmarks.records.compare", ["--help"]),
                                         ("benchmarks.records.accuracy", ["--help"]),
                                         ("benchmarks.records.served_accuracy", ["--help"]),
                                         ("benchmarks.records.task_run", ["--help"]),
                                         ("benchmarks.records.compress_measure", ["--help"]),
                                         ("benchmarks.records.gpu_torch", ["pack", "--help"]),
                                         ("benchmarks.records.gpu_torch", ["run", "--help"])])
def test_every_benchmark_tool_explains_its_flags(module, argv, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_record_makers_clone_the_checkout():
    """The install and demo records clone the repository they sit in (benchmarks/records/ is
    two folders below it)."""
    from benchmarks.records import install_time

    assert (install_time.REPO / "pyproject.toml").is_file() and (install_time.REPO / ".git").exists()


def test_openvino_encoder_instances_get_every_core_the_others_a_share(serve_exports, tmp_path, monkeypatch):
    from ofaserve.runtime import runtimes
    from ofaserve.serve.repository import default_encoder_threads

    monkeypatch.setattr(runtimes, "default_threads", lambda: 8)
    assert default_encoder_threads("openvino", 2) == 8
    assert default_encoder_threads("onnxruntime", 2) == 4 and default_encoder_threads("paddle", 16) == 1
    build_repository(serve_exports[:1], tmp_path / "r", target="cpu", precision="fp32")
    (enc_dir,) = [p for p in (tmp_path / "r").iterdir() if p.name.endswith("_encoder")]
    assert load_config(enc_dir).parameters["threads"].string_value == "8"
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["encoder_threads"] == 8

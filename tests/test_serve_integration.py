"""End to end on the REAL Triton server bundled with nvidia-pytriton: a cpu repository
from tiny exports, gRPC classification checked against the exported ONNX run in-process,
bad inputs, failure reporting and a clean shutdown. One server for the module."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import read_manifest
from ofaserve.serve.client import classify
from ofaserve.serve.repository import build_repository
from ofaserve.serve.server import TritonServer, free_port
from tests.test_serve_export_stub import serve_exports  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

SENTENCES = ["the movie was great fun", "a boring plot and bad acting .", "it is not very good , but the story is !",
             "film"]


def ports() -> dict:
    return dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Reference:
    """The export's ONNX + tokenizer.json run in-process, one sentence at a time, unpadded."""

    def __init__(self, export: Path):
        import onnxruntime as ort
        from tokenizers import Tokenizer
        m = read_manifest(export, "export")
        self.labels = m["labels"]
        self.tok = Tokenizer.from_file(str(export / m["artifacts"]["tokenizer"]))
        self.tok.enable_truncation(max_length=m["max_seq_length"])
        self.tok.no_padding()
        self.sess = ort.InferenceSession(str(export / m["artifacts"]["onnx"]), providers=["CPUExecutionProvider"])

    def probs(self, text: str) -> np.ndarray:
        enc = self.tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        (logits,) = self.sess.run(["logits"], {"input_ids": ids, "token_type_ids": np.array([enc.type_ids], np.int64)})
        return softmax(logits[0])


@pytest.fixture(scope="module")
def repo(serve_exports, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "model_repository"
    # fp32 pinned: answers are compared with the exported f32 ONNX within 1e-4
    manifest = build_repository(serve_exports, out, target="cpu", precision="fp32").to_dict()
    return out, manifest


@pytest.fixture(scope="module")
def small_repo(serve_exports, tmp_path_factory):
    """One width only: fewer stubs to start where the test is about the process, not models."""
    out = tmp_path_factory.mktemp("serve_small") / "model_repository"
    build_repository(serve_exports[1:], out, target="cpu", precision="fp32")
    return out


@pytest.fixture(scope="module")
def server(repo):
    srv = TritonServer(repo[0], **ports())
    t0 = time.monotonic()
    srv.start(timeout=180)
    srv.startup_s = time.monotonic() - t0
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.grpc as grpcclient
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def models(repo, serve_exports):
    """(ensemble name, Reference) per export."""
    names = list(repo[1]["models"])
    return {n: Reference(e) for n, e in zip(names, serve_exports)}


def infer(client, model, inputs: dict):
    """Call ``model`` with numpy ``inputs``; returns the result or raises InferenceServerException."""
    from tritonclient.grpc import InferInput
    from tritonclient.utils import np_to_triton_dtype
    reqs = []
    for name, arr in inputs.items():
        dtype = "BYTES" if arr.dtype == object else np_to_triton_dtype(arr.dtype)
        i = InferInput(name, list(arr.shape), dtype)
        i.set_data_from_numpy(arr)
        reqs.append(i)
    return client.infer(model, reqs, client_timeout=60)


def text_batch(*texts) -> np.ndarray:
    return np.array([t if isinstance(t, bytes) else t.encode() for t in texts], dtype=object).reshape(-1, 1)


# ------------------------------------------------------------------------------ health
def test_server_and_every_model_ready(server, client, repo):
    assert server.is_ready() and client.is_server_live() and client.is_server_ready()
    ready = server.models_ready()
    assert len(ready) == 8 and all(ready.values()), ready
    assert client.get_server_metadata().version == "2.51.0"
    assert server.startup_s < 60


def test_ensemble_metadata(client, models):
    for name, ref in models.items():
        meta = client.get_model_metadata(name)
        assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("TEXT", "BYTES", [-1, 1])]
        assert [(o.name, o.datatype, list(o.shape)) for o in meta.outputs] == [
            ("LABEL", "BYTES", [-1, 1]), ("PROBS", "FP32", [-1, len(ref.labels)])]


def test_metrics_endpoint(server):
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        assert "nv_inference_request_success" in r.read().decode()


def test_binds_loopback_only(server):
    listening = {c.laddr for c in psutil.Process(server.process.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert {a.port for a in listening} == set(server.ports.values())
    assert all(a.ip in ("127.0.0.1", "::ffff:127.0.0.1") for a in listening), listening  # gRPC: v4-mapped


# ------------------------------------------------------------------------------ parity
def test_classify_matches_exported_onnx(server, models):
    for name, ref in models.items():
        results = classify(SENTENCES, url=server.grpc_url, model=name, batch_size=3, labels=ref.labels)
        assert len(results) == len(SENTENCES)
        for text, r in zip(SENTENCES, results):
            expected = ref.probs(text)
            got = np.array([r["probs"][l] for l in ref.labels])
            assert np.abs(got - expected).max() <= 1e-4, (name, text)
            assert r["label"] == ref.labels[int(expected.argmax())]


def test_mixed_length_batch_matches_exported_onnx(server, models, repo):
    """A batch of short and long sentences is packed several to a row (the real tiny
    export's packed graph) or run as length-sorted chunks (the stub export, no packed
    graph: length_buckets=3): every row must still equal the unpadded reference."""
    assert {m["encoder_artifact"] for m in repo[1]["models"].values()} == {"onnx_packed", "onnx"}
    texts = [("good film " * (1 + 8 * (i % 2))).strip() + f" {i}" for i in range(16)]
    for name, ref in models.items():
        results = classify(texts, url=server.grpc_url, model=name, batch_size=16, labels=ref.labels)
        for text, r in zip(texts, results):
            got = np.array([r["probs"][l] for l in ref.labels])
            assert np.abs(got - ref.probs(text)).max() <= 1e-4, (name, text)


def test_concurrent_requests_of_different_lengths(server, client, models):
    """Requests of different lengths batched together (ragged encoder) still give each
    sentence its own unpadded result."""
    name, ref = next(iter(models.items()))
    from tests.test_serve_batching import _send_concurrently

    texts = [" ".join(["good"] * k) + " movie" for k in range(1, 17)]
    results = _send_concurrently(client, name, texts)
    for got, t in zip(results, texts):
        assert not isinstance(got, Exception), got
        assert np.abs(got - ref.probs(t)).max() <= 1e-4


# ------------------------------------------------------------------------------ bad input
def _ok(client, model, ref):
    r = infer(client, model, {"TEXT": text_batch("great film")})
    assert np.abs(r.as_numpy("PROBS")[0] - ref.probs("great film")).max() <= 1e-4


@pytest.mark.parametrize("text", [
    "x" * 10_000,                       # truncated to max_seq_length
    ("good movie " * 2000)[:10_000],
    b"caf\xc3\xa9 \xff\xfe not utf-8 \xc3",  # invalid UTF-8: replaced, not fatal
    "😀🎬 电影很好 映画 ñandú",           # emoji / CJK: [UNK]s and pieces
])
def test_odd_but_valid_text_is_classified(client, models, text):
    name, ref = next(iter(models.items()))
    r = infer(client, name, {"TEXT": text_batch(text)})
    decoded = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    assert np.abs(r.as_numpy("PROBS")[0] - ref.probs(decoded)).max() <= 1e-4
    _ok(client, name, ref)


@pytest.mark.parametrize("texts", [("",), ("   \t\n ",), ("fine", "")])
def test_empty_text_is_a_request_error(client, models, texts):
    from tritonclient.utils import InferenceServerException
    name, ref = next(iter(models.items()))
    with pytest.raises(InferenceServerException, match="empty or whitespace"):
        infer(client, name, {"TEXT": text_batch(*texts)})
    _ok(client, name, ref)


BAD_ENCODER_INPUTS = [
    # (input_ids, token_type_ids, expected message)
    (np.array([[2, 10**6, 3]], np.int64), None, "out of range"),
    (np.array([[2, -7, 3]], np.int64), None, "out of range"),
    (np.full((1, 1000), 5, np.int64), None, "exceeds"),
    (np.array([[2, 5, 3]], np.int64), np.zeros((1, 4), np.int64), "differ in shape"),
    (np.array([[2, 5, 3]], np.int64), np.array([[0, 9, 0]], np.int64), "token_type_ids must be in"),
    (np.array([[2, 5, 3]], np.int32), None, "INT64|data-type|datatype"),   # Triton rejects
    (np.array([2, 5, 3], np.int64), None, "shape|dims"),                   # rank 1: Triton rejects
]


@pytest.mark.parametrize("ids,types,message", BAD_ENCODER_INPUTS)
def test_bad_encoder_input_is_a_request_error(client, models, ids, types, message):
    from tritonclient.utils import InferenceServerException
    name, ref = next(iter(models.items()))
    types = np.zeros_like(ids) if types is None else types
    with pytest.raises(InferenceServerException, match=message):
        infer(client, f"{name}_encoder", {"input_ids": ids, "token_type_ids": types})
    good = np.array([[2, 5, 3]], np.int64)
    assert infer(client, f"{name}_encoder", {"input_ids": good, "token_type_ids": np.zeros_like(good)}
                 ).as_numpy("logits").shape == (1, len(ref.labels))
    _ok(client, name, ref)


def test_non_finite_logits_are_a_request_error(client, models):
    from tritonclient.utils import InferenceServerException
    name, ref = next(iter(models.items()))
    with pytest.raises(InferenceServerException, match="non-finite"):
        infer(client, f"{name}_postprocess", {"logits": np.array([[np.nan, 1.0]], np.float32)})
    _ok(client, name, ref)


# ------------------------------------------------------------------------------ CLI / errors
def test_classify_cli(server, models, capsys, tmp_path):
    from ofaserve.serve.cli import classify_main
    name, ref = next(iter(models.items()))
    f = tmp_path / "in.txt"
    f.write_text("great film\n\nbad plot\n")
    assert classify_main(["a good story", "--file", str(f), "--url", server.grpc_url, "--model", name]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [l.split("\t")[2] for l in lines] == ["a good story", "great film", "bad plot"]
    for line in lines:  # label<TAB>name=p  name=p<TAB>text
        label, probs, text = line.split("\t")
        printed = dict(kv.split("=") for kv in probs.split("  "))
        expected = ref.probs(text)
        assert list(printed) == ref.labels, line
        got = np.array([float(printed[l]) for l in ref.labels])
        assert np.abs(got - expected).max() <= 1e-4 + 0.5e-4, line  # parity + half the 4th printed decimal
        assert label == ref.labels[int(expected.argmax())], line
    assert classify_main(["x", "--url", server.grpc_url, "--model", "nope"]) == 2
    assert "error: model 'nope' is not ready" in capsys.readouterr().err


def test_port_in_use_is_reported_before_launch(server, repo):
    other = TritonServer(repo[0], grpc_port=server.ports["grpc"], http_port=free_port(), metrics_port=free_port())
    with pytest.raises(OfaserveError, match=f"grpc port {server.ports['grpc']} .* already in use"):
        other.start()
    assert other.process is None


def test_model_that_fails_to_load_reports_the_server_message(small_repo, tmp_path):
    out = tmp_path / "broken_repo"
    shutil.copytree(small_repo, out)
    (tok_dir,) = out.glob("*_tokenizer")
    (tok_dir / "1" / "tokenizer.json").unlink()
    srv = TritonServer(out, **ports())
    with pytest.raises(OfaserveError) as e:
        srv.start(timeout=120)
    message = str(e.value)
    assert tok_dir.name in message and ("tokenizer.json" in message or "No such file" in message), message
    assert srv.process is None and srv.workdir is None


def _start_serve_cli(repo_dir: Path):
    """`ofaserve serve` in a subprocess; returns (process, its Triton work dir) once ready."""
    p = ports()
    cmd = [sys.executable, "-c", "import sys; from serve.cli import serve_main; sys.exit(serve_main(sys.argv[1:]))",
           "--model_repository", str(repo_dir), "--grpc_port", str(p["grpc_port"]), "--http_port", str(p["http_port"]),
           "--metrics_port", str(p["metrics_port"]), "--poll", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            pytest.fail("serve CLI never became ready:\n" + "".join(lines) + proc.stderr.read())
        lines.append(line)
        if line.startswith("server log:"):
            break
    assert any(l.startswith("Triton ready") for l in lines)
    return proc, str(Path(lines[-1].split(":", 1)[1].strip()).parent)


def test_serve_cli_starts_and_stops_on_sigint(small_repo):
    proc, workdir = _start_serve_cli(small_repo)
    try:
        assert _processes_mentioning(workdir)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Triton stopped" in out
        assert not _processes_mentioning(workdir)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_cli_exits_nonzero_when_a_model_dies(small_repo):
    proc, workdir = _start_serve_cli(small_repo)
    try:
        stub = next(pid for pid in _processes_mentioning(workdir)
                    if "_encoder/1/model.py" in " ".join(psutil.Process(pid).cmdline()))
        os.kill(stub, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert err.startswith("error: model(s) no longer ready:") and "_encoder" in err
        assert not _processes_mentioning(workdir)
    finally:
        if proc.poll() is None:
            proc.kill()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(text in a for a in (p.info["cmdline"] or [])):
            found.append(p.info["pid"])
    return found


# An export's INT8 artifact -> the runtime that serves it
INT8_ARTIFACTS = {"openvino_int8": "openvino", "onnx_int8": "onnxruntime"}


def _with_int8(export: Path, folder: Path) -> tuple[Path, str]:
    """(export, runtime) for the INT8 artifact ``export`` ships; when it ships none, a copy
    with an INT8 ONNX made by ONNX Runtime's dynamic quantization, so the INT8 serving path
    runs whatever the accuracy gate decided for this tiny model."""
    m = read_manifest(export, "export")
    for artifact, runtime in INT8_ARTIFACTS.items():
        if m["artifacts"].get(artifact):
            return export, runtime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.copytree(export, folder)
    quantize_dynamic(str(folder / m["artifacts"]["onnx"]), str(folder / "onnx" / "model_int8.onnx"),
                     weight_type=QuantType.QInt8)
    m["artifacts"]["onnx_int8"] = "onnx/model_int8.onnx"
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder, "onnxruntime"


@pytest.mark.parametrize("runtime,precision,atol", [("paddle", "fp32", 1e-4), ("onnxruntime", "fp32", 1e-4),
                                                     ("shipped", "int8", 2e-2)])
def test_other_runtimes_serve_the_same_probabilities(serve_exports, tmp_path, runtime, precision, atol):
    export = serve_exports[0]
    if precision == "int8":
        export, runtime = _with_int8(export, tmp_path / "export")
    manifest = build_repository([export], tmp_path / "r", runtime=runtime, precision=precision).to_dict()
    (name,) = manifest["models"]
    ref = Reference(export)
    with TritonServer(tmp_path / "r", **ports()) as srv:
        results = classify(SENTENCES, url=srv.grpc_url, model=name)
    for text, r in zip(SENTENCES, results):
        got = np.array([r["probs"][l] for l in ref.labels])
        assert np.abs(got - ref.probs(text)).max() <= atol, (runtime, precision, text)


# ------------------------------------------------------------------------------ failure + shutdown
# Each of these breaks or stops a server, so each starts its own: they pass in any order,
# and the shared server of the other tests is never touched.
@pytest.fixture
def own_server(request):
    """A fresh server on the repository the test names (``repo`` or ``small_repo``), stopped at the end."""
    repo = request.getfixturevalue(request.param)
    srv = TritonServer(repo[0] if isinstance(repo, tuple) else repo, **ports())
    srv.start(timeout=180)
    yield srv
    srv.stop()


@pytest.mark.parametrize("own_server", ["repo"], indirect=True)
def test_dead_stub_makes_its_models_not_ready(own_server, models):
    """Triton keeps the server (and the model) 'ready' when a python stub dies; our
    per-model readiness must not."""
    import tritonclient.grpc as grpcclient

    first, second = list(models)
    stub = next(c for c in psutil.Process(own_server.process.pid).children(recursive=True)
                if f"{first}_encoder/1/model.py" in " ".join(c.cmdline()))
    os.kill(stub.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while own_server.models_ready()[f"{first}_encoder"] and time.monotonic() < deadline:
        time.sleep(0.2)
    ready = own_server.models_ready()
    assert not ready[f"{first}_encoder"] and not ready[first]
    assert ready[second] and ready[f"{second}_encoder"]
    c = grpcclient.InferenceServerClient(own_server.grpc_url)
    try:
        _ok(c, second, models[second])  # the other width still serves
    finally:
        c.close()


@pytest.mark.parametrize("own_server", ["small_repo"], indirect=True)
def test_stop_leaves_no_process_or_shared_memory(own_server):
    workdir, shm = str(own_server.workdir), set(own_server._shm)
    assert shm and _processes_mentioning(workdir)
    own_server.stop()
    assert not _processes_mentioning(workdir)
    assert not [s for s in shm if os.path.exists(s)]
    assert not os.path.exists(workdir)
    assert not own_server.is_ready() and not any(own_server.models_ready().values())

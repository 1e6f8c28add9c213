"""The fused text pipeline (one python model: tokenize + encode + softmax) on the real
Triton server: same probabilities as the exported ONNX, per-request errors for bad
text while the rest of the batch is served, labels for the client."""
from __future__ import annotations

import numpy as np
import pytest

from ofaserve.serve.client import classify
from ofaserve.serve.repository import build_repository
from ofaserve.serve.server import TritonServer
from tests.test_serve_export_stub import serve_exports  # noqa: F401  (fixture)
from tests.test_serve_integration import SENTENCES, Reference, infer, ports, text_batch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fused(serve_exports, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "model_repository"
    manifest = build_repository(serve_exports[1:], out, target="cpu", precision="fp32", text_pipeline="fused").to_dict()
    (name,) = manifest["models"]
    with TritonServer(out, **ports()) as srv:
        yield srv, name, Reference(serve_exports[1]), out


def test_layout_has_no_ensemble_steps(fused):
    _, name, _, repo = fused
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == [name, f"{name}_encoder"]
    for f in ("model.py", "runtimes.py", "python_model_io.py", "tokenizer.json", "model.onnx"):
        assert (repo / name / "1" / f).is_file(), f
    assert 'backend: "python"' in (repo / name / "config.pbtxt").read_text()


def test_fused_matches_exported_onnx(fused):
    srv, name, ref, _ = fused
    mixed = [("good film " * (1 + 8 * (i % 2))).strip() + f" {i}" for i in range(16)]  # length-bucketed
    for texts, batch in ((SENTENCES, 3), (mixed, 16)):
        results = classify(texts, url=srv.grpc_url, model=name, batch_size=batch)  # labels from the config
        for text, r in zip(texts, results):
            expected = ref.probs(text)
            got = np.array([r["probs"][l] for l in ref.labels])
            assert np.abs(got - expected).max() <= 1e-4, text
            assert r["label"] == ref.labels[int(expected.argmax())]


def test_fused_bad_text_is_a_request_error_and_server_stays_up(fused):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
    srv, name, ref, _ = fused
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="empty or whitespace"):
            infer(c, name, {"TEXT": text_batch("fine", "   ")})
        with pytest.raises(InferenceServerException, match="shape"):
            infer(c, name, {"TEXT": np.array([b"a", b"b"], dtype=object).reshape(1, 2)})
        with pytest.raises(InferenceServerException, match="exceeds this model's limit of .* bytes per text"):
            infer(c, name, {"TEXT": text_batch("x" * 200_000, "a good film")})  # refused, not cut
        limit = int(c.get_model_config(name).config.parameters["max_text_bytes"].string_value)
        out = infer(c, name, {"TEXT": text_batch("x" * limit, "a good film")})  # at the limit: cut by the tokenizer
        assert out.as_numpy("PROBS").shape == (2, len(ref.labels))
        assert c.is_model_ready(name)
    finally:
        c.close()

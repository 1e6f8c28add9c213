"""What the served model does with batches, on the REAL Triton server bundled with
nvidia-pytriton and the tiny export's packed encoder (tests/conftest.py):

- any mix of sentence lengths and token types sent to the encoder in one request comes
  back as each sentence's lone, unpadded logits (the packing properties of
  tests/test_packing.py, through gRPC, the python backend and the server's runner);
- concurrent single-sentence requests are merged by Triton's dynamic batcher (its own
  statistics: fewer executions than inferences), and each answer equals the answer the
  same sentence gets alone;
- the configured max batch is served whole and one row more is a clean request error.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings

from ofaserve.core.manifests import read_manifest
from ofaserve.serve.repository import build_repository
from ofaserve.serve.server import TritonServer
from tests.conftest import examples
from tests.test_packing import MAX_ROWS, Alone, assert_matches_alone, padded, sentences, specs, with_edge_cases
from tests.test_serve_integration import infer, ports, text_batch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tiny_export_dir, tmp_path_factory):
    """(server, ensemble name, repository manifest, export manifest) for the tiny export alone."""
    out = tmp_path_factory.mktemp("batching") / "model_repository"
    # fp32 pinned: the property is equality with the f32 graph, whatever precision is fastest here
    manifest = build_repository([tiny_export_dir], out, target="cpu", precision="fp32").to_dict()
    assert manifest["max_batch_size"] == MAX_ROWS  # the strategies draw up to this many rows
    (name,) = manifest["models"]
    assert manifest["models"][name]["encoder_artifact"] == "onnx_packed"
    with TritonServer(out, **ports()) as srv:
        yield srv, name, manifest, read_manifest(tiny_export_dir, stage="export")


@pytest.fixture(scope="module")
def client(served):
    import tritonclient.grpc as grpcclient
    c = grpcclient.InferenceServerClient(served[0].grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def alone(served, tiny_export_dir):
    return Alone(tiny_export_dir / served[3]["artifacts"]["onnx"])


@settings(max_examples=examples(10))
@with_edge_cases
@given(spec=specs())
def test_served_packed_encoder_equals_each_sentence_alone(served, client, alone, spec):
    _, name, _, export = served
    sents = sentences(spec, vocab_size=export["vocab_size"], pad_id=export["pad_token_id"])
    ids, types = padded(sents, export["pad_token_id"])
    got = infer(client, f"{name}_encoder", {"input_ids": ids, "token_type_ids": types}).as_numpy("logits")
    assert_matches_alone(got, alone(sents), str(spec))


def _texts(export_dir, n: int, seed: int = 0) -> list[str]:
    """``n`` different sentences of 1..40 words from the export's own vocabulary."""
    words = [w for w in (export_dir / "tokenizer" / "vocab.txt").read_text().split() if w.isalpha()]
    rng = np.random.default_rng(seed)
    return [f"{i} " + " ".join(rng.choice(words, size=int(rng.integers(1, 41)))) for i in range(n)]


def _counts(client, model: str) -> tuple[int, int]:
    """(inferences, executions) Triton has counted for ``model`` since it loaded."""
    (stats,) = client.get_inference_statistics(model_name=model).model_stats
    return stats.inference_count, stats.execution_count


def _send_concurrently(client, model: str, texts: list[str], timeout_s: float = 60) -> list:
    """One single-sentence request per text, all in flight at once; PROBS per text."""
    from tritonclient.grpc import InferInput

    results: dict[int, object] = {}
    done = threading.Event()

    def callback(i):
        def cb(result, error):
            results[i] = error or result.as_numpy("PROBS")[0]
            if len(results) == len(texts):
                done.set()
        return cb

    for i, text in enumerate(texts):
        inp = InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(text_batch(text))
        client.async_infer(model, [inp], callback(i))
    assert done.wait(timeout_s), f"{len(texts) - len(results)} requests unanswered after {timeout_s} s"
    return [results[i] for i in range(len(texts))]


def test_dynamic_batcher_merges_concurrent_requests(served, client, tiny_export_dir):
    _, name, manifest, _ = served
    texts = _texts(tiny_export_dir, manifest["max_batch_size"] // 2)
    lone = [infer(client, name, {"TEXT": text_batch(t)}).as_numpy("PROBS")[0] for t in texts]  # one at a time
    before = _counts(client, f"{name}_encoder")
    answers = _send_concurrently(client, name, texts)
    inferences, executions = np.subtract(_counts(client, f"{name}_encoder"), before)
    assert inferences == len(texts)
    assert executions < inferences, f"no batch formed: {executions} executions for {inferences} requests"
    for text, got, want in zip(texts, answers, lone):
        assert not isinstance(got, Exception), got
        assert np.abs(got - want).max() <= 1e-4, text


def test_max_batch_is_served_and_one_more_row_is_a_request_error(served, client, alone):
    from tritonclient.utils import InferenceServerException

    _, name, manifest, export = served
    limit = manifest["max_batch_size"]
    ids = np.tile(np.array([[2, 3]], np.int64), (limit, 1))  # [CLS] [SEP] per row
    logits = infer(client, f"{name}_encoder", {"input_ids": ids, "token_type_ids": np.zeros_like(ids)}
                   ).as_numpy("logits")
    assert_matches_alone(logits, alone([(row, np.zeros_like(row)) for row in ids]))
    assert infer(client, name, {"TEXT": text_batch(*["a film"] * limit)}).as_numpy("PROBS").shape[0] == limit
    over = np.tile(ids[:1], (limit + 1, 1))
    for model, inputs in ((f"{name}_encoder", {"input_ids": over, "token_type_ids": np.zeros_like(over)}),
                          (name, {"TEXT": text_batch(*["a film"] * (limit + 1))})):
        with pytest.raises(InferenceServerException, match=f"batch-size must be <= {limit}"):
            infer(client, model, inputs)
    assert client.is_model_ready(name) and client.is_model_ready(f"{name}_encoder")
    assert infer(client, name, {"TEXT": text_batch("a film")}).as_numpy("PROBS").shape[0] == 1

"""A sentence-pair classifier and a regression model served on the REAL bundled Triton
server over gRPC (TEXT + TEXT_PAIR in; LABEL + PROBS or SCORE out), ensemble and fused,
answers equal to the export's own runner on the same inputs, and bad inputs refused with
the server still up."""
from __future__ import annotations

import numpy as np
import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import read_manifest
from ofaserve.serve.client import classify
from ofaserve.serve.repository import build_repository
from ofaserve.serve.server import TritonServer, free_port

pytestmark = pytest.mark.integration

PAIRS = [("the movie was great fun", "a boring plot and bad acting ."),
         ("it is not very good , but the story is !", "film"),
         ("a gorgeous , witty , seductive movie .", "the acting is wonderful"),
         ("nothing happens", "nothing happens at all, ever, in any scene of this film " * 20)]  # truncated pair


def _reference(export_dir):
    """The export's ONNX graph in-process (ONNX Runtime), pairs tokenized by its tokenizer.json."""
    from ofaserve.core.tokenizer import encode_batch, load_tokenizer
    from ofaserve.export.artifact_logits import onnxruntime

    m = read_manifest(export_dir, "export")
    tok = load_tokenizer(export_dir / m["artifacts"]["tokenizer"], m["max_seq_length"])
    run = onnxruntime(export_dir / m["artifacts"]["onnx"])
    return lambda pairs: run(*encode_batch(tok, list(pairs)))


@pytest.fixture(scope="module")
def server(tiny_pair_export_dir, tiny_regression_export_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_tasks")
    repos = {}
    for kind, export in (("pair", tiny_pair_export_dir), ("reg", tiny_regression_export_dir)):
        for pipeline in ("ensemble", "fused"):
            out = root / f"{kind}_{pipeline}"
            build_repository([export], out, name=f"{kind}_{pipeline}", precision="fp32", text_pipeline=pipeline)
            repos[(kind, pipeline)] = out
    merged = root / "all"
    merged.mkdir()
    for out in repos.values():  # one server for all four: each repository's models side by side
        for model in out.iterdir():
            if model.is_dir():
                model.rename(merged / model.name)
    srv = TritonServer(merged, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    srv.start(timeout=240)
    yield srv
    srv.stop()


@pytest.mark.parametrize("pipeline", ["ensemble", "fused"])
def test_pair_classifier_answers_as_the_export(server, tiny_pair_export_dir, pipeline):
    got = classify([a for a, _ in PAIRS], url=server.grpc_url, model=f"pair_{pipeline}_w75",
                   text_pairs=[b for _, b in PAIRS], batch_size=3)
    logits = _reference(tiny_pair_export_dir)(PAIRS)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = read_manifest(tiny_pair_export_dir, "export")["labels"]
    assert [r["label"] for r in got] == [labels[i] for i in logits.argmax(1)]
    assert np.abs(np.array([[r["probs"][n] for n in labels] for r in got]) - probs).max() <= 1e-4


@pytest.mark.parametrize("pipeline", ["ensemble", "fused"])
def test_regression_model_answers_scores_as_the_export(server, tiny_regression_export_dir, pipeline):
    got = classify([a for a, _ in PAIRS], url=server.grpc_url, model=f"reg_{pipeline}_w75",
                   text_pairs=[b for _, b in PAIRS])
    want = _reference(tiny_regression_export_dir)(PAIRS)[:, 0]
    assert all(set(r) == {"score"} for r in got)
    assert np.abs(np.array([r["score"] for r in got]) - want).max() <= 1e-4


def _raw_infer(server, model: str, inputs: dict[str, list[bytes]]):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        request = []
        for name, rows in inputs.items():
            batch = np.array(rows, dtype=object).reshape(-1, 1)
            inp = grpcclient.InferInput(name, list(batch.shape), "BYTES")
            inp.set_data_from_numpy(batch)
            request.append(inp)
        return client.infer(model, request)
    finally:
        client.close()


@pytest.mark.parametrize("pipeline", ["ensemble", "fused"])
def test_bad_pair_requests_are_refused_and_the_server_stays_up(server, pipeline):
    from tritonclient.utils import InferenceServerException

    model = f"pair_{pipeline}_w75"
    # Triton refuses the first two itself (TEXT_PAIR is a required input of the same batch
    # size); our model refuses the third
    cases = {"no TEXT_PAIR": ({"TEXT": [b"a", b"b"]}, "missing required input(s) ['TEXT_PAIR']"),
             "fewer second sentences": ({"TEXT": [b"a", b"b"], "TEXT_PAIR": [b"c"]}, "batch size does not match"),
             "an empty second sentence": ({"TEXT": [b"a"], "TEXT_PAIR": [b"   "]},
                                          "TEXT_PAIR[0] is empty or whitespace only")}
    for case, (inputs, message) in cases.items():
        with pytest.raises(InferenceServerException) as e:
            _raw_infer(server, model, inputs)
        assert message in e.value.message(), (case, e.value.message())
    with pytest.raises(OfaserveError, match="reads sentence pairs"):
        classify(["only one sentence"], url=server.grpc_url, model=model)
    with pytest.raises(OfaserveError, match="1 first sentences but 2 second ones"):
        classify(["a"], url=server.grpc_url, model=model, text_pairs=["b", "c"])
    server.check_health()  # every model still ready
    assert len(classify(["still"], url=server.grpc_url, model=model, text_pairs=["answering"])) == 1


def test_classify_cli_sends_pairs_and_prints_scores(server, tmp_path, capsys):
    from ofaserve.serve.cli import classify_main

    assert classify_main(["--url", server.grpc_url, "--model", "reg_ensemble_w75",
                          "--pair", "a fine film", "a great film", "--pair", "dull", "boring"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(len(l.split("\t")) == 3 and float(l.split("\t")[0]) == float(l.split("\t")[0])
                                   for l in lines)
    rows = tmp_path / "pairs.tsv"
    rows.write_text("a fine film\ta great film\ndull\tboring\n")
    assert classify_main(["--url", server.grpc_url, "--model", "pair_fused_w75", "--file", str(rows)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith(("same\t", "different\t"))
    assert classify_main(["--url", server.grpc_url, "--model", "pair_fused_w75", "one sentence"]) == 2
    assert "reads sentence pairs" in capsys.readouterr().err


@pytest.mark.parametrize("kind,compress", [("pair", "tiny_pair_compress_dir"), ("reg", "tiny_regression_compress_dir")])
def test_bench_sends_the_tasks_own_pairs(server, kind, compress, request, tmp_path):
    """The bench's real-text workload is the task's own dev pairs (TEXT and TEXT_PAIR), and
    a regression model's answers are checked as SCORE."""
    import json

    from ofaserve.benchmarks.run import main

    out = tmp_path / "bench"
    rc = main(["--url", server.grpc_url, "--models", f"{kind}_ensemble_w75", "--real_text", "--no_fixed",
               "--compress_dir", str(request.getfixturevalue(compress)), "--requests", "4", "--rounds", "1",
               "--concurrency", "1", "--warmup", "1", "--baseline_requests", "0", "--output_dir", str(out),
               "--no_progress"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    (r,) = rep["results"]
    assert r["workload"] == "real" and r["accounting"]["ok"] == r["accounting"]["sent"] and r["accounting"]["errors"] == 0
    info = rep["workloads"]["real"]
    assert info["pairs"] is True and info["outputs"] == (["SCORE"] if kind == "reg" else ["LABEL", "PROBS"])

"""Request-size limits: `ofaserve repo --max_text_bytes / --max_request_bytes` (defaults from
what the tokenizer keeps) written into the text models' configs and the repository manifest;
on the REAL Triton 2.51 server a request over either is refused with one clear error before
any of its text is decoded, the server stays up and good answers stay the same; the client
(`ofaserve classify`) refuses a too-long text before sending and splits a batch that would be
too large. The record of what oversized requests still cost is checked against its JSON."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import given, settings, strategies as st
from tritonclient.grpc import model_config_pb2 as mc

from ofaserve.benchmarks.reliability import probes
from ofaserve.benchmarks.reliability.faults import free_ports
from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import ExportManifest, RepoManifest
from ofaserve.core.tasks import TaskSpec
from ofaserve.serve.client import TextModel, classify, request_rows
from ofaserve.serve.repository import (MIN_TEXT_BYTES, SOURCES, TEXT_BYTES_PER_TOKEN, TextLimits, build_repository,
                                      text_limits)
from ofaserve.serve.server import TritonServer
from tests.conftest import examples
from tests.test_serve_integration import Reference, infer, text_batch

LIMIT_TEXT, LIMIT_REQUEST = 2000, 5000  # small limits for the served tests, as `ofaserve repo` flags


def _manifest(max_seq_length: int, pair: bool = False) -> ExportManifest:
    return ExportManifest(max_seq_length=max_seq_length, labels=["a", "b"],
                          task_spec=TaskSpec("t", labels=("a", "b"), pair=pair))


def _params(repo: Path, name: str) -> dict[str, str]:
    cfg = text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())
    return {k: v.string_value for k, v in cfg.parameters.items()}


# ------------------------------------------------------------------------------ defaults and configs
def test_the_default_per_text_is_what_the_tokenizer_keeps():
    """100 bytes per token (a character is at least one byte), the same figure as the served
    models' truncation (python_model_io.text_char_limit), never below a 128-token export's."""
    source = (SOURCES / "python_model_io.py").read_text()
    assert re.search(rf"return {TEXT_BYTES_PER_TOKEN} \* int\(max_seq_length\)", source)
    assert MIN_TEXT_BYTES == TEXT_BYTES_PER_TOKEN * 128
    assert text_limits(_manifest(128), 64) == (x := text_limits(_manifest(32), 64))  # the floor
    assert x.max_text_bytes == MIN_TEXT_BYTES and x.max_request_bytes == 64 * MIN_TEXT_BYTES
    big = text_limits(_manifest(512), 16)
    assert big.max_text_bytes == TEXT_BYTES_PER_TOKEN * 512 and big.max_request_bytes == 16 * big.max_text_bytes
    pair = text_limits(_manifest(128, pair=True), 64)  # both sentences of every row
    assert pair.max_request_bytes == 2 * 64 * pair.max_text_bytes


def test_given_limits_win_and_must_agree():
    assert text_limits(_manifest(128), 64, max_text_bytes=1000) == TextLimits(1000, 64_000)
    assert text_limits(_manifest(128), 64, max_request_bytes=5000) == TextLimits(5000, 5000)  # a text fits a request
    assert text_limits(_manifest(128), 64, max_text_bytes=100, max_request_bytes=5000) == TextLimits(100, 5000)
    with pytest.raises(OfaserveError, match="cannot be larger than the request"):
        text_limits(_manifest(128), 64, max_text_bytes=6000, max_request_bytes=5000)


@pytest.mark.parametrize("pipeline", ["ensemble", "fused"])
def test_limits_are_in_the_text_models_configs_and_the_manifest(tiny_export_dir, tmp_path, pipeline):
    m = build_repository([tiny_export_dir], tmp_path / "r", precision="fp32", text_pipeline=pipeline,
                         max_text_bytes=LIMIT_TEXT, max_request_bytes=LIMIT_REQUEST).to_dict()
    (model,) = m["models"]
    assert m["models"][model]["text_limits"] == {"max_text_bytes": LIMIT_TEXT, "max_request_bytes": LIMIT_REQUEST}
    # the model that checks them, and the one a client calls (the ensemble carries them for clients)
    checked = [model] + ([f"{model}_tokenizer"] if pipeline == "ensemble" else [])
    for name in checked:
        p = _params(tmp_path / "r", name)
        assert (p["max_text_bytes"], p["max_request_bytes"]) == (str(LIMIT_TEXT), str(LIMIT_REQUEST)), name
    assert "max_text_bytes" not in _params(tmp_path / "r", f"{model}_encoder")  # token ids: no text
    read = RepoManifest.read(tmp_path / "r").models[model].text_limits  # typed when read back
    assert read == TextLimits(LIMIT_TEXT, LIMIT_REQUEST)


@pytest.mark.parametrize("flag", ["--max_text_bytes", "--max_request_bytes"])
def test_repo_cli_refuses_a_limit_below_one(tiny_export_dir, tmp_path, capsys, flag):
    from ofaserve.serve.cli import repo_main
    assert repo_main(["--export_dir", str(tiny_export_dir), "--output", str(tmp_path / "r"), flag, "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {flag[2:]} must be >= 1, got 0"]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ the client's split
@settings(max_examples=examples(60))
@given(sizes=st.lists(st.integers(0, 300), max_size=40), batch_size=st.integers(1, 8),
       per_request=st.one_of(st.none(), st.integers(300, 1200)))
def test_request_rows_respect_both_limits_and_keep_every_row_in_order(sizes, batch_size, per_request):
    rows = [(b"x" * n,) for n in sizes]
    spans = request_rows(rows, batch_size, "m", TextModel(["TEXT"], [], 300, per_request))
    assert [i for s in spans for i in s] == list(range(len(rows)))
    for s in spans:
        assert 1 <= len(s) <= batch_size
        assert per_request is None or sum(sizes[i] for i in s) <= per_request
    if per_request is not None and spans:  # no request stops short when the next row would still fit
        for a, b in zip(spans, spans[1:]):
            assert len(a) == batch_size or sum(sizes[i] for i in a) + sizes[b.start] > per_request


def test_request_rows_refuse_a_too_long_text_before_sending():
    info = TextModel(["TEXT", "TEXT_PAIR"], [], 10, 15)
    with pytest.raises(OfaserveError, match=r"text 2 of 2 is 11 bytes, which exceeds m's limit of 10 bytes per text"):
        request_rows([(b"a", b"b"), (b"a", b"y" * 11)], 4, "m", info)
    with pytest.raises(OfaserveError, match=r"row 1 of 1 is 16 bytes of text, which exceeds m's limit of 15 bytes per "
                                            r"request"):
        request_rows([(b"a" * 8, b"b" * 8)], 4, "m", info)


# ------------------------------------------------------------------------------ on the real server
@pytest.fixture(scope="module", params=["ensemble", "fused"])
def served(request, tiny_export_dir, tmp_path_factory):
    """(server, model, Reference) of a repository with small limits."""
    repo = tmp_path_factory.mktemp(f"limits_{request.param}") / "repo"
    m = build_repository([tiny_export_dir], repo, precision="fp32", text_pipeline=request.param,
                         max_text_bytes=LIMIT_TEXT, max_request_bytes=LIMIT_REQUEST).to_dict()
    (model,) = m["models"]
    ports = free_ports()
    srv = TritonServer(repo, grpc_port=ports["grpc"], http_port=ports["http"], metrics_port=ports["metrics"])
    srv.start(timeout=180)
    yield srv, model, Reference(tiny_export_dir)
    srv.stop()


@pytest.fixture(scope="module")
def grpc(served):
    import tritonclient.grpc as grpcclient
    c = grpcclient.InferenceServerClient(served[0].grpc_url)
    yield c
    c.close()


def _text(n_bytes: int, seed: str = "a fine film ") -> str:
    return (seed * (n_bytes // len(seed) + 1))[:n_bytes]


def _refused(grpc, model, *texts) -> str:
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException) as e:
        infer(grpc, model, {"TEXT": text_batch(*texts)})
    return e.value.message()


def _counts(grpc, model) -> tuple[int, int]:
    s = grpc.get_inference_statistics(model).model_stats[0].inference_stats
    return s.success.count, s.fail.count



@pytest.mark.integration
def test_a_text_at_the_limit_is_answered_one_byte_more_is_refused(served, grpc):
    srv, model, ref = served
    at = _text(LIMIT_TEXT)
    probs = infer(grpc, model, {"TEXT": text_batch("good", at)}).as_numpy("PROBS")
    assert np.abs(probs[1] - ref.probs(at)).max() <= 1e-4
    message = _refused(grpc, model, "good", at + "!")
    assert (f"TEXT[1] is {LIMIT_TEXT + 1:,} bytes, which exceeds this model's limit of {LIMIT_TEXT:,} bytes per text "
            "(max_text_bytes in its config)") in message, message


@pytest.mark.integration
def test_the_limit_counts_bytes_and_the_request_total(served, grpc):
    srv, model, ref = served
    wide = "é" * (LIMIT_TEXT // 2 + 1)  # fewer characters than the limit, more bytes
    assert len(wide) < LIMIT_TEXT < len(wide.encode())
    assert "TEXT[0] is" in _refused(grpc, model, wide)
    rows = [_text(LIMIT_TEXT - 1, f"{i} film ") for i in range(3)]  # each fits, together they do not
    total = sum(len(r.encode()) for r in rows)
    message = _refused(grpc, model, *rows)
    assert (f"this request holds {total:,} bytes of text, which exceeds this model's limit of {LIMIT_REQUEST:,} "
            "bytes per request (max_request_bytes in its config)") in message, message


@pytest.mark.integration
def test_the_size_is_refused_before_any_text_is_decoded(served, grpc):
    """An empty row (refused once decoded) next to an oversized one, and bytes that are not
    UTF-8 at all: the size error comes first, so no row was decoded."""
    srv, model, ref = served
    assert "exceeds this model's limit" in _refused(grpc, model, "", _text(LIMIT_TEXT + 1))
    assert "exceeds this model's limit" in _refused(grpc, model, b"\xff\xfe" * LIMIT_TEXT)
    assert "empty or whitespace" in _refused(grpc, model, "", "fine")  # the decoded check still runs after


@pytest.mark.integration
def test_refused_requests_leave_the_server_up_and_answers_unchanged(served, grpc):
    srv, model, ref = served
    before = infer(grpc, model, {"TEXT": text_batch("a great film", "dull")}).as_numpy("PROBS")
    for _ in range(5):
        _refused(grpc, model, *[_text(LIMIT_TEXT + 1)] * 4)
    assert all(srv.models_ready().values())
    after = infer(grpc, model, {"TEXT": text_batch("a great film", "dull")}).as_numpy("PROBS")
    assert np.abs(after - before).max() == 0


@pytest.mark.integration
def test_classify_refuses_a_too_long_text_before_sending(served, grpc):
    srv, model, ref = served
    before = _counts(grpc, model)
    with pytest.raises(OfaserveError, match=rf"text 2 of 3 is {LIMIT_TEXT + 1:,} bytes, which exceeds {model}'s limit "
                                            rf"of {LIMIT_TEXT:,} bytes per text"):
        classify(["fine", _text(LIMIT_TEXT + 1), "dull"], url=srv.grpc_url, model=model)
    assert _counts(grpc, model) == before  # nothing reached the server


@pytest.mark.integration
def test_classify_splits_a_batch_the_request_limit_would_refuse(served, grpc):
    srv, model, ref = served
    texts = [_text(1500, f"{i} good film ") for i in range(8)]  # 12,000 bytes: over 5,000 in one request
    expected = request_rows([(t.encode(),) for t in texts], 16, model, TextModel(["TEXT"], [], LIMIT_TEXT,
                                                                                  LIMIT_REQUEST))
    assert len(expected) > 1
    before = _counts(grpc, model)
    results = classify(texts, url=srv.grpc_url, model=model, batch_size=16, labels=ref.labels)
    after = _counts(grpc, model)
    assert (after[0] - before[0], after[1] - before[1]) == (len(expected), 0)
    for text, r in zip(texts, results):
        assert np.abs(np.array([r["probs"][l] for l in ref.labels]) - ref.probs(text)).max() <= 1e-4


@pytest.mark.integration
def test_classify_cli_says_which_line_is_too_long(served, tmp_path, capsys):
    from ofaserve.serve.cli import classify_main
    srv, model, _ = served
    f = tmp_path / "in.txt"
    f.write_text(f"fine\n{_text(LIMIT_TEXT + 1)}\ndull\n")
    assert classify_main(["--file", str(f), "--url", srv.grpc_url, "--model", model]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: text 2 of 3 is {LIMIT_TEXT + 1:,} bytes"), err


@pytest.mark.integration
def test_a_pair_model_counts_both_sentences(tiny_pair_export_dir, tmp_path):
    from tritonclient.utils import InferenceServerException
    import tritonclient.grpc as grpcclient

    m = build_repository([tiny_pair_export_dir], tmp_path / "r", precision="fp32", max_text_bytes=LIMIT_TEXT,
                         max_request_bytes=LIMIT_REQUEST).to_dict()
    (model,) = m["models"]
    ports = free_ports()
    with TritonServer(tmp_path / "r", grpc_port=ports["grpc"], http_port=ports["http"],
                      metrics_port=ports["metrics"]) as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            ok = infer(c, model, {"TEXT": text_batch(_text(LIMIT_TEXT)), "TEXT_PAIR": text_batch("fine")})
            assert ok.as_numpy("PROBS").shape[0] == 1
            first, second = [_text(LIMIT_TEXT - 1)] * 2, [_text(LIMIT_TEXT - 1, "a dull one ")] * 2
            with pytest.raises(InferenceServerException, match="this request holds"):  # 4 texts together
                infer(c, model, {"TEXT": text_batch(*first), "TEXT_PAIR": text_batch(*second)})
            with pytest.raises(InferenceServerException, match=r"TEXT_PAIR\[0\] is"):
                infer(c, model, {"TEXT": text_batch("fine"), "TEXT_PAIR": text_batch(_text(LIMIT_TEXT + 1))})
            with pytest.raises(OfaserveError, match="text 1 of 1"):  # the client checks the second sentence too
                classify(["fine"], url=srv.grpc_url, model=model, text_pairs=[_text(LIMIT_TEXT + 1)])
        finally:
            c.close()


# ------------------------------------------------------------------------------ the record
def test_oversized_record_is_the_rendering_of_its_json():
    """benchmarks/results/oversized_requests.md holds what its JSON renders to (no figure by
    hand); the recorded flood was refused with the limits and answered without them."""
    from ofaserve.benchmarks.reliability.report import to_markdown

    record = probes.ROOT / "benchmarks" / "results" / "oversized_requests.json"
    r = json.loads(record.read_text())
    assert to_markdown(r) == record.with_suffix(".md").read_text()
    assert r["oversized"] and all(o["ok"] for o in r["oversized"])
    assert r["machine"]["cpu"] and "--scenarios oversized" in r["command"]

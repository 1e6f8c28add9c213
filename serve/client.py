"""gRPC client for the served text models: text (or text pairs) in; a label and class
probabilities, or a score, out."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.serve.addresses import DEFAULT_URL
from ofaserve.serve.server import admin_headers

if TYPE_CHECKING:
    from tritonclient.grpc import InferenceServerClient

DEFAULT_MODEL = "bert_w67"


def _connect(url: str):
    import tritonclient.grpc as grpcclient
    try:
        return grpcclient.InferenceServerClient(url)
    except Exception as e:
        raise OfaserveError(f"cannot connect to Triton at {url}: {e}") from e


def _check_model(client, url: str, model: str) -> None:
    from tritonclient.utils import InferenceServerException
    try:
        ready = client.is_model_ready(model)
    except InferenceServerException as e:
        raise OfaserveError(f"Triton at {url} is not reachable ({e.message()}): is `ofaserve serve` running?") from e
    if not ready:
        try:  # the index is a restricted API: the key of a local server is in its key file
            names = sorted({m.name for m in client.get_model_repository_index(headers=admin_headers(url)).models})
        except InferenceServerException:
            names = []
        raise OfaserveError(f"model {model!r} is not ready on {url}"
                            + (f"; served models: {', '.join(names)}" if names else ""))


@dataclass(frozen=True)
class TextModel:
    """What a served text model reads and answers, from its config: input names (TEXT, and
    TEXT_PAIR for a pair model), output names (LABEL and PROBS, or SCORE) and the byte limits
    its text models enforce (``ofaserve repo --max_text_bytes / --max_request_bytes``; None
    for a model whose config names none)."""
    inputs: list[str]
    outputs: list[str]
    max_text_bytes: int | None
    max_request_bytes: int | None


def text_model(client, model: str) -> TextModel:
    cfg = client.get_model_config(model, as_json=True)["config"]
    params = cfg.get("parameters", {})

    def limit(key: str) -> int | None:
        value = params.get(key, {}).get("string_value")
        return int(value) if value else None

    return TextModel([i["name"] for i in cfg.get("input", [])], [o["name"] for o in cfg.get("output", [])],
                     limit("max_text_bytes"), limit("max_request_bytes"))


def request_rows(rows: list[tuple[bytes, ...]], batch_size: int, model: str, info: TextModel) -> list[range]:
    """``rows`` (each a text, or a text and its pair) cut into consecutive requests of at most
    ``batch_size`` rows and ``info.max_request_bytes`` bytes of text; a text over
    ``info.max_text_bytes`` (or a row over the request limit by itself) is refused here, before
    anything is sent, with the limit the server would refuse it by."""
    per_text, per_request = info.max_text_bytes, info.max_request_bytes
    batches, start, size = [], 0, 0
    for i, row in enumerate(rows):
        longest = max(len(t) for t in row)
        if per_text is not None and longest > per_text:
            raise OfaserveError(f"text {i + 1} of {len(rows)} is {longest:,} bytes, which exceeds {model}'s limit of "
                                f"{per_text:,} bytes per text (max_text_bytes in its config): shorten it, or rebuild "
                                "the repository with a larger ofaserve repo --max_text_bytes")
        row_size = sum(len(t) for t in row)
        if per_request is not None and row_size > per_request:
            raise OfaserveError(f"row {i + 1} of {len(rows)} is {row_size:,} bytes of text, which exceeds {model}'s "
                                f"limit of {per_request:,} bytes per request (max_request_bytes in its config)")
        if i > start and (i - start == batch_size or (per_request is not None and size + row_size > per_request)):
            batches.append(range(start, i))
            start, size = i, 0
        size += row_size
    return batches + [range(start, len(rows))] if rows else batches


def _as_bytes(texts: Iterable[str | bytes]) -> list[bytes]:
    return [t if isinstance(t, bytes) else str(t).encode("utf-8") for t in texts]


def classify(texts: Iterable[str | bytes], url: str = DEFAULT_URL, model: str = DEFAULT_MODEL,
             batch_size: int = 16, labels: list[str] | None = None, timeout: float | None = 60.0,
             client: InferenceServerClient | None = None,
             text_pairs: Iterable[str | bytes] | None = None) -> list[dict]:
    """Send ``texts`` (with ``text_pairs``, one second sentence each, for a sentence-pair model)
    in batches of ``batch_size`` rows (fewer where the model's max_request_bytes needs; a text
    over its max_text_bytes is refused before anything is sent).

    Returns one dict per text, in order: for a classifier ``{"label": str, "probs": {label:
    p}}`` (the label name from the model's LABEL output; ``probs`` keyed by ``labels``, default
    the label list in the model's config), for a regression model ``{"score": float}``.

    ``url`` is the server's gRPC address (``TritonServer.grpc_url``), ``model`` a text model
    it serves (``bert_w67``; the names are the keys of the repository manifest's ``models``);
    pass ``client`` (a ``tritonclient.grpc.InferenceServerClient``) to reuse a connection.
    Raises: ``OfaserveError`` when the server cannot be reached or the model is not ready
    (naming the served models), when pairs are given to a single-sentence model or not given
    to a pair model, when a text exceeds the model's ``max_text_bytes``, and when the server
    refuses a request (its message, with the rows it held).
    """
    from tritonclient.grpc import InferRequestedOutput
    from tritonclient.utils import InferenceServerException

    texts = _as_bytes(texts)
    pairs = None if text_pairs is None else _as_bytes(text_pairs)
    if not texts:
        return []
    if batch_size < 1:
        raise OfaserveError(f"batch_size must be >= 1, got {batch_size}")
    if pairs is not None and len(pairs) != len(texts):
        raise OfaserveError(f"{len(texts)} first sentences but {len(pairs)} second ones: give one pair per row")
    own = client is None
    client = client or _connect(url)
    try:
        _check_model(client, url, model)
        info = text_model(client, model)
        _check_pairs(info, model, pairs is not None)
        batches = request_rows(list(zip(texts, pairs)) if pairs is not None else [(t,) for t in texts],
                               batch_size, model, info)
        regression = "SCORE" in info.outputs
        labels = None if regression else (labels or model_labels(client, model))
        requested = [InferRequestedOutput(o) for o in (["SCORE"] if regression else ["LABEL", "PROBS"])]
        results = []
        for span in batches:
            try:
                response = client.infer(model, _request(texts, pairs, span), outputs=requested,
                                        client_timeout=timeout)
            except InferenceServerException as e:
                raise OfaserveError(f"{model} rejected rows {span.start}..{span.stop - 1}: {e.message()}") from e
            results += _answers(response, regression, labels)
        return results
    finally:
        if own:
            client.close()


def _check_pairs(info: TextModel, model: str, has_pairs: bool) -> None:
    """Pairs for a pair model, single sentences for the others: refused before anything is sent."""
    if "TEXT_PAIR" in info.inputs and not has_pairs:
        raise OfaserveError(f"{model} reads sentence pairs: pass a second sentence per text (--pair A B, or a "
                            "file of 'first<TAB>second' lines)")
    if has_pairs and "TEXT_PAIR" not in info.inputs:
        raise OfaserveError(f"{model} reads single sentences, not pairs: drop the second sentences")


def _request(texts: list[bytes], pairs: list[bytes] | None, span: range) -> list:
    """The BYTES inputs of one request: rows ``span`` of TEXT (and TEXT_PAIR), one per row."""
    from tritonclient.grpc import InferInput

    rows = {"TEXT": texts[span.start:span.stop]}
    if pairs is not None:
        rows["TEXT_PAIR"] = pairs[span.start:span.stop]
    request = []
    for name, values in rows.items():
        batch = np.array(values, dtype=object).reshape(-1, 1)
        inp = InferInput(name, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        request.append(inp)
    return request


def _answers(response, regression: bool, labels: list[str] | None) -> list[dict]:
    """One answer per row of a response: ``{"score"}``, or ``{"label", "probs"}`` keyed by
    ``labels`` (by class index where the model names none)."""
    if regression:
        return [{"score": float(v)} for v in response.as_numpy("SCORE").reshape(-1)]
    label_out = response.as_numpy("LABEL").reshape(-1)
    probs = response.as_numpy("PROBS")
    names = labels or [str(i) for i in range(probs.shape[1])]
    return [{"label": lab.decode("utf-8") if isinstance(lab, bytes) else str(lab),
             "probs": {n: float(p) for n, p in zip(names, row)}} for lab, row in zip(label_out, probs)]


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file (one sentence per line)."""
    path = Path(path)
    if not path.is_file():
        raise OfaserveError(f"input file {path} does not exist")
    return [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]


def read_rows(path: str | os.PathLike) -> tuple[list[str], list[str] | None]:
    """(sentences, second sentences or None) of a UTF-8 file: one sentence per line, or one
    pair per line as 'first<TAB>second' (every line, for a sentence-pair model)."""
    lines = read_lines(path)
    tabs = {line.count("\t") for line in lines}
    if tabs == {0} or not lines:
        return lines, None
    if tabs == {1}:
        firsts, seconds = zip(*(line.split("\t") for line in lines))
        return list(firsts), list(seconds)
    raise OfaserveError(f"{path}: give one sentence per line, or one 'first<TAB>second' pair per line "
                        f"(found lines with {sorted(tabs)} tabs)")


def model_labels(client, model: str) -> list[str] | None:
    """Label names from the config of the postprocess step (ensemble) or of the fused text
    model itself (so probabilities get names)."""
    import json
    for name in (f"{model}_postprocess", model):
        try:
            cfg = client.get_model_config(name, as_json=True)["config"]
            return json.loads(cfg["parameters"]["labels"]["string_value"])
        except Exception:
            continue
    return None

"""gRPC client for the served ensembles: text in, label and class probabilities out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ofaserve.core.errors import OfaserveError

DEFAULT_URL = "127.0.0.1:8001"
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
        from ofaserve.serve.server import admin_headers
        try:  # the index is a restricted API: the key of a local server is in its key file
            names = sorted({m.name for m in client.get_model_repository_index(headers=admin_headers(url)).models})
        except InferenceServerException:
            names = []
        raise OfaserveError(f"model {model!r} is not ready on {url}"
                            + (f"; served models: {', '.join(names)}" if names else ""))


def classify(texts: Iterable[str | bytes], url: str = DEFAULT_URL, model: str = DEFAULT_MODEL,
             batch_size: int = 16, labels: list[str] | None = None, timeout: float | None = 60.0,
             client=None) -> list[dict]:
    """Classify ``texts`` in batches of ``batch_size``: ``[{"label": str, "probs": {label: p}}]``.

    Label names come from the model's LABEL output; ``probs`` is keyed by ``labels``
    (default: the label list in the model's postprocess config, else ``"0", "1", ...``).
    """
    from tritonclient.grpc import InferInput, InferRequestedOutput
    from tritonclient.utils import InferenceServerException

    texts = [t if isinstance(t, bytes) else str(t).encode("utf-8") for t in texts]
    if not texts:
        return []
    if batch_size < 1:
        raise OfaserveError(f"batch_size must be >= 1, got {batch_size}")
    own = client is None
    client = client or _connect(url)
    try:
        _check_model(client, url, model)
        labels = labels or model_labels(client, model)
        results = []
        outputs = [InferRequestedOutput("LABEL"), InferRequestedOutput("PROBS")]
        for start in range(0, len(texts), batch_size):
            batch = np.array(texts[start:start + batch_size], dtype=object).reshape(-1, 1)
            inp = InferInput("TEXT", list(batch.shape), "BYTES")
            inp.set_data_from_numpy(batch)
            try:
                response = client.infer(model, [inp], outputs=outputs, client_timeout=timeout)
            except InferenceServerException as e:
                raise OfaserveError(f"{model} rejected sentences {start}..{start + len(batch) - 1}: {e.message()}") from e
            label_out = response.as_numpy("LABEL").reshape(-1)
            probs = response.as_numpy("PROBS")
            names = labels or [str(i) for i in range(probs.shape[1])]
            for lab, row in zip(label_out, probs):
                results.append({"label": lab.decode("utf-8") if isinstance(lab, bytes) else str(lab),
                                "probs": {n: float(p) for n, p in zip(names, row)}})
        return results
    finally:
        if own:
            client.close()


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file (one sentence per line)."""
    path = Path(path)
    if not path.is_file():
        raise OfaserveError(f"input file {path} does not exist")
    return [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]


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

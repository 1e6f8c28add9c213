"""What every ofaserve python-backend model reads and answers: config parameters, request
texts (decoded and validated), per-request errors, the tokenizer, labels and probabilities.

`ofaserve repo` copies this file next to each model.py, so every model folder of a
repository stays self-contained (no import of the ofaserve package inside Triton).
"""
import numpy as np
import triton_python_backend_utils as pb_utils


def param(config, key, default=None):
    """A string parameter of config.pbtxt; a missing one without default fails the load."""
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if value is None:
        if default is None:
            raise pb_utils.TritonModelException(f"config.pbtxt lacks parameter {key!r}")
        return default
    return value


def string_params(config):
    """Every config.pbtxt parameter as {key: string}."""
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def runner_options(config, args, version_dir):
    """Extra keyword options of ``runtimes.runner_from_parameters`` for this instance: the
    TensorRT runtime needs its GPU, engine cache and the shape range to build for."""
    if param(config, "runtime") != "onnxruntime-trt":
        return {}
    return {"device_id": int(args.get("model_instance_device_id", 0) or 0),
            "cache_dir": str(version_dir / param(config, "trt_cache_dir", "trt_cache")),
            "max_batch": int(config.get("max_batch_size", 64)) or 64,
            "max_seq": int(param(config, "max_seq_length"))}


def text_char_limit(max_seq_length):
    """Characters of one text kept before tokenizing: tokens never span 100 characters in
    sane text, so longer input cannot change the result and only costs work."""
    return 100 * int(max_seq_length)


def request_error(message, code_name="INVALID_ARG"):
    """A per-request error with a status code where this Triton version supports codes."""
    code = getattr(pb_utils.TritonError, code_name, None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


def load_tokenizer(path, max_seq_length, pad_id, pad_to_multiple_of=None):
    """The export's tokenizer.json with truncation to ``max_seq_length`` and padding of a
    batch to its longest row (optionally rounded up to a multiple)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    if tok.post_processor is None:
        raise pb_utils.TritonModelException("tokenizer.json has no post-processor: [CLS]/[SEP] would be missing")
    pad_token = tok.id_to_token(pad_id)
    if pad_token is None:
        raise pb_utils.TritonModelException(f"pad_token_id {pad_id} is not in the vocabulary")
    tok.enable_truncation(max_length=max_seq_length)
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_to_multiple_of=pad_to_multiple_of or None)
    return tok


def text_limits(config):
    """(max_text_bytes, max_request_bytes) from config.pbtxt: the bytes one text may hold, and
    the bytes all the texts of one request may hold together (``ofaserve repo`` writes both)."""
    return int(param(config, "max_text_bytes")), int(param(config, "max_request_bytes"))


def _raw_rows(request, name):
    """The rows of BYTES input ``name`` as they arrived (1-D object array of bytes), None when
    absent, or an error (str)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    raw = tensor.as_numpy()
    if raw.ndim != 2 or raw.shape[1] != 1:
        return f"{name} must have shape [batch, 1], got {list(raw.shape)}"
    return raw.reshape(-1)


def _byte_size(item):
    return len(item) if isinstance(item, bytes) else len(str(item).encode("utf-8"))


def size_error(inputs, limits):
    """Why the texts of one request are too large (str), or None. ``inputs`` maps input names
    to their raw rows; ``limits`` is (max_text_bytes, max_request_bytes). Only the lengths of
    the raw bytes are read: nothing is decoded or copied for a request refused here."""
    max_text, max_request = limits
    sizes = {name: [_byte_size(item) for item in rows] for name, rows in inputs.items()}
    total = sum(sum(s) for s in sizes.values())
    if total > max_request:
        return (f"this request holds {total:,} bytes of text, which exceeds this model's limit of {max_request:,} "
                "bytes per request (max_request_bytes in its config): send fewer or shorter texts per request")
    for name, row_sizes in sizes.items():
        for i, size in enumerate(row_sizes):
            if size > max_text:
                return (f"{name}[{i}] is {size:,} bytes, which exceeds this model's limit of {max_text:,} bytes "
                        "per text (max_text_bytes in its config): shorten it")
    return None


def _decoded(name, rows, max_chars):
    """The rows decoded (list of str), or an error (str).

    Bytes that are not valid UTF-8 become U+FFFD instead of failing the request; text
    longer than ``max_chars`` (see ``text_char_limit``) is cut before tokenizing, which
    bounds the tokenizer's work where max_text_bytes allows more than it keeps."""
    texts = []
    for i, item in enumerate(rows):
        text = item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
        if not text.strip():
            return f"{name}[{i}] is empty or whitespace only: nothing to classify"
        texts.append(text[:max_chars])
    return texts


def request_texts(request, max_chars, limits, pair=False):
    """What one request asks to classify: a list of sentences (TEXT), or for a sentence-pair
    model a list of (TEXT, TEXT_PAIR) tuples, row by row; or an error message (str). A request
    over ``limits`` (see ``text_limits``) is refused before any of its text is decoded."""
    names = ("TEXT", "TEXT_PAIR") if pair else ("TEXT",)
    inputs = {}
    for name in names:
        rows = _raw_rows(request, name)
        if rows is None:
            return ("missing input TEXT_PAIR: this model reads sentence pairs (TEXT and TEXT_PAIR, one row each)"
                    if name == "TEXT_PAIR" else "missing input TEXT")
        if isinstance(rows, str):
            return rows
        inputs[name] = rows
    if pair and len(inputs["TEXT_PAIR"]) != len(inputs["TEXT"]):
        return (f"TEXT has {len(inputs['TEXT'])} rows but TEXT_PAIR has {len(inputs['TEXT_PAIR'])}: "
                "one second sentence per first")
    too_large = size_error(inputs, limits)
    if too_large:
        return too_large
    decoded = []
    for name, rows in inputs.items():
        texts = _decoded(name, rows, max_chars)
        if isinstance(texts, str):
            return texts
        decoded.append(texts)
    return decoded[0] if not pair else list(zip(*decoded))


def is_regression(config):
    """The model scores (one output, SCORE) rather than classifies (LABEL, PROBS)."""
    return param(config, "task_type", "classification") == "regression"


def is_pair(config):
    return param(config, "text_pair", "false") == "true"


def score_outputs(logits):
    """SCORE [n,1] float32 from a one-output encoder, or an error message."""
    if logits.ndim != 2 or logits.shape[1] != 1:
        return f"a regression encoder gives one output per row, got shape {list(logits.shape)}"
    if not np.isfinite(logits).all():
        return "the encoder produced non-finite scores"
    return logits.astype(np.float32)


def task_outputs(logits, labels):
    """The output tensors of a text model or postprocess step: SCORE for a regression model
    (``labels`` None), LABEL and PROBS for a classifier; or an error message."""
    if labels is None:
        result = score_outputs(logits)
        return result if isinstance(result, str) else [pb_utils.Tensor("SCORE", result)]
    result = classify_outputs(logits, labels)
    if isinstance(result, str):
        return result
    label, probs = result
    return [pb_utils.Tensor("LABEL", label), pb_utils.Tensor("PROBS", probs)]


def label_names(config):
    """The label names (as a bytes array for TYPE_STRING outputs) from parameter 'labels'."""
    import json

    return np.array([l.encode("utf-8") for l in json.loads(param(config, "labels"))], dtype=object)


def classify_outputs(logits, labels):
    """(LABEL [n,1] bytes, PROBS [n,k] float32) from logits, or an error message."""
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        return f"logits must have shape [batch, {len(labels)}], got {list(logits.shape)}"
    if not np.isfinite(logits).all():
        return "the encoder produced non-finite logits"
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)  # stable softmax
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    return labels[probs.argmax(axis=1)].reshape(-1, 1), probs.astype(np.float32)

"""A tiny export folder for the serve tests, shaped exactly like `ofaserve export` output.

The serve tests prefer the shared ``tiny_export_dir`` fixture (tests/conftest.py) when it
exists; until then (or to get a second width for side-by-side repositories) they build
one here: a random 2-layer, 64-wide PaddleNLP BERT, saved static and converted to ONNX.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ofaserve.core.files import files_sha256
from ofaserve.core.manifests import read_manifest, write_manifest

LABELS = ["rotten", "fresh"]
MAX_SEQ_LENGTH = 32

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ["the", "a", "movie", "film", "is", "was", "good", "bad", "great", "boring", "fun",
          "and", "but", "not", "very", "plot", "acting", "story", "it", "this", ",", ".", "!", "?"]


def tiny_vocab(size: int = 128) -> list[str]:
    """Specials, words, letters and ##letters: enough for WordPiece to cover any ASCII word."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = _SPECIAL + _WORDS + letters + [f"##{c}" for c in letters] + [str(d) for d in range(10)]
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    assert len(vocab) == size
    return vocab


def make_tiny_export(out: Path, width_mult: float = 1.0, seed: int = 0) -> Path:
    """Write a complete export folder (manifest, static model, ONNX, tokenizer) to ``out``."""
    import paddle
    import paddle2onnx
    import onnx
    from paddle.static import InputSpec
    from tokenizers import BertWordPieceTokenizer

    from ofaserve.compress.bert import build_classifier, tiny_config

    out = Path(out)
    (out / "static").mkdir(parents=True, exist_ok=True)
    (out / "onnx").mkdir(exist_ok=True)
    (out / "tokenizer").mkdir(exist_ok=True)

    paddle.seed(seed)
    config = tiny_config(num_labels=len(LABELS), vocab_size=128)
    model = build_classifier(config)
    model.eval()
    static = paddle.jit.to_static(model, input_spec=[
        InputSpec([None, None], "int64", "input_ids"),
        InputSpec([None, None], "int64", "token_type_ids")], full_graph=True)
    paddle.jit.save(static, str(out / "static" / "model"))

    onnx_path = out / "onnx" / "model.onnx"
    paddle2onnx.export(str(out / "static" / "model.json"), str(out / "static" / "model.pdiparams"),
                       str(onnx_path), opset_version=14)
    proto = onnx.load(str(onnx_path))
    old = proto.graph.output[0].name
    for node in proto.graph.node:  # rename the single graph output to `logits`
        node.output[:] = ["logits" if o == old else o for o in node.output]
    proto.graph.output[0].name = "logits"
    onnx.save(proto, str(onnx_path))

    vocab_path = out / "tokenizer" / "vocab.txt"
    vocab_path.write_text("\n".join(tiny_vocab()) + "\n")
    BertWordPieceTokenizer(str(vocab_path), lowercase=True).save(str(out / "tokenizer" / "tokenizer.json"))

    write_manifest(out, "export", width_mult=width_mult, model_type="bert", labels=LABELS,
                   max_seq_length=MAX_SEQ_LENGTH, do_lower_case=True, pad_token_id=0,
                   vocab_size=config["vocab_size"],
                   artifacts={"sub_model": "sub_model", "paddle_static": "static/model",
                              "onnx": "onnx/model.onnx", "tokenizer": "tokenizer/tokenizer.json",
                              "vocab": "tokenizer/vocab.txt"},
                   files_sha256=files_sha256(out))
    return out


@pytest.fixture(scope="session")
def serve_exports(request, tmp_path_factory) -> list[Path]:
    """Two exports of different widths: the shared ``tiny_export_dir`` (when conftest
    provides it, else a stub) plus a stub at another width, for side-by-side repositories."""
    try:
        first = Path(request.getfixturevalue("tiny_export_dir"))
    except pytest.FixtureLookupError:
        first = make_tiny_export(tmp_path_factory.mktemp("export_w100"), width_mult=1.0)
    width = float(read_manifest(first, stage="export")["width_mult"])
    other = 0.6667 if round(width * 100) != 67 else 1.0
    second = make_tiny_export(tmp_path_factory.mktemp("export_other"), width_mult=other, seed=1)
    return [first, second]


def test_stub_export_is_a_valid_export(serve_exports):
    import onnxruntime as ort

    stub_export_dir = serve_exports[1]
    manifest = read_manifest(stub_export_dir, stage="export")
    sess = ort.InferenceSession(str(stub_export_dir / manifest["artifacts"]["onnx"]))
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "token_type_ids"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    ids = np.array([[2, 7, 8, 3, 0]], dtype=np.int64)
    (logits,) = sess.run(None, {"input_ids": ids, "token_type_ids": np.zeros_like(ids)})
    assert logits.shape == (1, len(LABELS))
    assert json.loads((stub_export_dir / "tokenizer" / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"

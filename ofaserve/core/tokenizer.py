"""The WordPiece tokenizer, one way to build it and one way to load it.

Training builds it from ``vocab.txt``; every later stage loads the ``tokenizer.json``
the compress stage saved, so training, export parity, serving and benchmarks tokenize
identically. (The Triton python models carry their own copy of the loader in
``serve/triton_models/python_model_io.py``: generated repositories import nothing from
this package.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ofaserve.core.errors import OfaserveError


def make_tokenizer(vocab_file: str | Path, lowercase: bool = True, max_seq_length: int = 128):
    """A fast WordPiece tokenizer (HF ``tokenizers``) with BERT's [CLS]/[SEP] template.

    The same tokenizer file is shipped to the server, so training and serving
    tokenize identically.
    """
    from tokenizers import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase)
    tok.enable_truncation(max_length=max_seq_length)
    return tok


def encode_batch(tokenizer, texts: list[str] | list[tuple[str, str]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and segment ids padded to the longest input of this batch; ``texts`` are
    sentences, or (text, text_pair) tuples encoded as [CLS] a [SEP] b [SEP] with segment ids."""
    encs = tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encs)
    ids = np.full((len(encs), width), pad_id, dtype=np.int64)
    types = np.zeros((len(encs), width), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        types[i, : len(e.type_ids)] = e.type_ids
    return ids, types


def load_tokenizer(path: str | Path, max_seq_length: int):
    """The saved ``tokenizer.json``, truncating at ``max_seq_length``, no padding."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise OfaserveError(f"tokenizer file {path} is missing: re-run the stage that wrote it")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise OfaserveError(f"{path} is not a readable tokenizer file ({e})") from e
    tok.no_padding()
    tok.enable_truncation(max_length=int(max_seq_length))
    return tok

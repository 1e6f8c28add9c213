"""Sequence packing as properties: any mix of sentence lengths and token types, packed
several to a row by ``pack_rows`` and run through the export's packed graph on ONNX
Runtime and OpenVINO (the serving encoder's own runners), gives every sentence the
logits the plain graph gives it run alone and unpadded.

Random and adversarial batches (hypothesis, the profile in tests/conftest.py) plus the
edge cases: sentences of exactly max_seq_length, the configured max batch of 2-token
sentences, lengths at the 32/64/128 row widths, token_type_ids that are not all zero,
pad ids inside a sentence. The same batches go through the real server in
tests/test_serve_batching.py.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ofaserve.core.manifests import read_manifest
from ofaserve.runtime.runtimes import PACK_WIDTHS, load_runner, pack_rows
from tests.conftest import TINY_MAX_SEQ_LENGTH, examples

MAX_ROWS = 64  # the repository's default max_batch_size: the most rows one encoder call gets
ATOL = 1e-4    # the project's parity tolerance for logits
CLS, SEP, FIRST_WORD = 2, 3, 5  # the tiny vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK], then words
# lengths where a row width is exactly filled, one short or one over, and the shortest sentences
EDGE_LENGTHS = sorted({1, 2, 3} | {w + d for w in PACK_WIDTHS for d in (-1, 0, 1) if w + d <= TINY_MAX_SEQ_LENGTH})


class Spec(NamedTuple):
    """A batch as hypothesis draws it: sentence lengths plus a seed for their tokens."""
    lengths: tuple[int, ...]
    seed: int


def specs(max_rows: int = MAX_ROWS, max_len: int = TINY_MAX_SEQ_LENGTH) -> st.SearchStrategy[Spec]:
    """Batches of 1..max_rows sentences; lengths uniform or at the row-width edges, or all equal."""
    length = st.one_of(st.integers(1, max_len), st.sampled_from([n for n in EDGE_LENGTHS if n <= max_len]))
    mixed = st.lists(length, min_size=1, max_size=max_rows)
    same = st.tuples(length, st.integers(1, max_rows)).map(lambda t: [t[0]] * t[1])
    return st.builds(Spec, st.one_of(mixed, same).map(tuple), st.integers(0, 2 ** 32 - 1))


# The edge cases, run as explicit examples on every run whatever hypothesis draws.
EDGE_SPECS = [
    Spec((TINY_MAX_SEQ_LENGTH,) * 3, 0),                  # sentences exactly max_seq_length long
    Spec((2,) * MAX_ROWS, 1),                             # the max batch of 2-token sentences
    Spec((32, 32, 32, 32, 33), 2),                        # rows of 32 exactly filled, then one over
    Spec((64, 64, 65, 63, 1), 3),
    Spec((127, 1, 128), 4),
    Spec(tuple(EDGE_LENGTHS), 5),
    Spec((1,), 6),                                        # one [CLS]-only sentence
]


def with_edge_cases(test):
    """``test`` (which takes ``spec``) also runs on every one of EDGE_SPECS."""
    for spec in reversed(EDGE_SPECS):
        test = example(spec=spec)(test)
    return test


def sentences(spec: Spec, vocab_size: int, pad_id: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, token_type_ids) per sentence: [CLS] words [SEP]; token types all zero, a
    sentence pair (0s then 1s) or random; now and then pad ids inside the sentence (the
    graph masks them as keys). The last token is never a pad: it marks the length."""
    rng = np.random.default_rng(spec.seed)
    out = []
    for length in spec.lengths:
        ids = rng.integers(FIRST_WORD, vocab_size, size=length, dtype=np.int64)
        ids[0] = CLS
        if length > 1:
            ids[-1] = SEP
        if length > 3 and rng.random() < 0.25:
            ids[rng.integers(1, length - 1, size=max(1, length // 8))] = pad_id
        kind = rng.integers(3)
        if kind == 0:
            types = np.zeros(length, np.int64)
        elif kind == 1:
            types = (np.arange(length) >= rng.integers(1, length + 1)).astype(np.int64)
        else:
            types = rng.integers(0, 2, size=length, dtype=np.int64)
        out.append((ids, types))
    return out


def padded(sents: list[tuple[np.ndarray, np.ndarray]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The batch as a client sends it: rows padded to the longest sentence."""
    width = max(len(ids) for ids, _ in sents)
    ids = np.full((len(sents), width), pad_id, np.int64)
    types = np.zeros((len(sents), width), np.int64)
    for r, (i, t) in enumerate(sents):
        ids[r, :len(i)], types[r, :len(t)] = i, t
    return ids, types


class Alone:
    """The plain exported graph in ONNX Runtime, one sentence per call, unpadded."""

    def __init__(self, onnx_path):
        import onnxruntime as ort
        self.sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def __call__(self, sents) -> np.ndarray:
        return np.concatenate([self.sess.run(["logits"], {"input_ids": i[None], "token_type_ids": t[None]})[0]
                               for i, t in sents])


def assert_matches_alone(got: np.ndarray, alone: np.ndarray, what: str = "") -> None:
    """Within ATOL of the lone logits, and the same label wherever the lone top two logits
    are further apart than 2 x ATOL (closer than that, ATOL itself allows a flip)."""
    assert got.shape == alone.shape, (what, got.shape, alone.shape)
    diff = np.abs(got - alone).max(axis=1)
    assert diff.max() <= ATOL, (what, float(diff.max()), int(diff.argmax()))
    top2 = np.sort(alone, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * ATOL
    assert (got.argmax(1) == alone.argmax(1))[clear].all(), what


@pytest.fixture(scope="module")
def export(tiny_export_dir):
    m = read_manifest(tiny_export_dir, stage="export")
    assert m["max_seq_length"] == TINY_MAX_SEQ_LENGTH and "onnx_packed" in m["artifacts"]
    return tiny_export_dir, m


@pytest.fixture(scope="module")
def alone(export):
    folder, m = export
    return Alone(folder / m["artifacts"]["onnx"])


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def packed_runner(request, export):
    folder, m = export
    run = load_runner(request.param, folder / m["artifacts"]["onnx_packed"], "fp32", threads=2,
                      pad_id=m["pad_token_id"])
    assert getattr(run, "packed", False), "the runner did not recognise the packed graph"
    return request.param, run


@settings(max_examples=examples(200))
@with_edge_cases
@given(spec=specs())
def test_pack_rows_lays_out_every_sentence(spec):
    """Each sentence appears once, whole, at its cls_index: positions restart at 0, one
    segment id of its own within the row, its token types kept; rows are no wider than
    a pack width or the longest sentence."""
    sents = sentences(spec, vocab_size=128)
    ids, types = padded(sents)
    p = pack_rows(ids, types)
    rows, width = p["input_ids"].shape
    assert width in PACK_WIDTHS or width == max(spec.lengths)
    flat = {k: v.reshape(-1) for k, v in p.items() if k != "cls_index"}
    seen = set()
    for (i, t), at in zip(sents, p["cls_index"]):
        span = slice(int(at), int(at) + len(i))
        assert int(at) % width + len(i) <= width  # the sentence does not run into the next row
        np.testing.assert_array_equal(flat["input_ids"][span], i)
        np.testing.assert_array_equal(flat["token_type_ids"][span], t)
        np.testing.assert_array_equal(flat["position_ids"][span], np.arange(len(i)))
        (segment,) = set(flat["segment_ids"][span].tolist())
        assert segment > 0 and (int(at) // width, segment) not in seen
        seen.add((int(at) // width, segment))
    assert int((p["segment_ids"] > 0).sum()) == sum(spec.lengths)  # nothing else is marked as a sentence


@settings(max_examples=examples(50))
@with_edge_cases
@given(spec=specs())
def test_packed_runner_equals_each_sentence_alone(packed_runner, alone, export, spec):
    kind, run = packed_runner
    sents = sentences(spec, vocab_size=export[1]["vocab_size"], pad_id=export[1]["pad_token_id"])
    assert_matches_alone(run(*padded(sents, export[1]["pad_token_id"])), alone(sents), f"{kind} {spec}")

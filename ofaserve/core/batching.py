"""Batches of a split for training and scoring: dynamically padded, optionally length-bucketed,
and the logits of a whole split in input order."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ofaserve.core.tasks import Split
from ofaserve.core.tokenizer import encode_batch

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _lengths(split: Split) -> list[int]:
    """Characters per input (both sentences of a pair): a cheap stand-in for token counts."""
    if split.text_pairs is None:
        return [len(t) for t in split.texts]
    return [len(a) + len(b) for a, b in zip(split.texts, split.text_pairs)]


EVAL_BATCH_SIZE = 64  # predict()'s batches (what compress.step_budget prices an evaluation pass on)


def batches(split: Split, batch_size: int, *, tokenizer, shuffle: bool = False, seed: int = 0,
            length_sorted: bool = False, bucket: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                            np.ndarray]]:
    """Yield (input_ids, token_type_ids, labels, indices) numpy batches, dynamically padded.

    ``length_sorted`` (eval): all inputs sorted by length, least padding.
    ``shuffle`` + ``bucket=k`` (training): shuffle, sort each chunk of k batches by
    length, then shuffle the batch order. Batches pad to ~the median length instead of
    the longest of 32 random sentences, which cuts the training FLOPs spent on padding
    while keeping the data order random.
    """
    order = np.arange(len(split))
    rng = np.random.default_rng(seed)
    if shuffle:
        rng.shuffle(order)
    elif length_sorted:
        order = np.argsort(_lengths(split), kind="stable")
    groups = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and bucket > 1:
        lengths = _lengths(split)
        groups = []
        chunk = batch_size * bucket
        for start in range(0, len(order), chunk):
            part = order[start: start + chunk]
            part = part[np.argsort([lengths[i] for i in part], kind="stable")]
            groups += [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(groups)
    for idx in groups:
        ids, types = encode_batch(tokenizer, split.inputs(idx))
        yield ids, types, split.labels[idx], idx


def predict(logits_fn: Logits, split: Split, tokenizer, batch_size: int = EVAL_BATCH_SIZE) -> np.ndarray:
    """The model's outputs for every input of ``split``, in input order (length-sorted
    batches: less padding)."""
    out = None
    for ids, types, _, idx in batches(split, batch_size, length_sorted=True, tokenizer=tokenizer):
        logits = logits_fn(ids, types)
        if out is None:
            out = np.zeros((len(split), logits.shape[-1]), dtype=np.float32)
        out[idx] = logits
    return out

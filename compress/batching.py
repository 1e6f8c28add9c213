"""Training and evaluation batches: dynamically padded, optionally length-bucketed."""
from __future__ import annotations

import numpy as np

from ofaserve.core.tokenizer import encode_batch


def batches(texts: list[str], labels: np.ndarray, batch_size: int, *, shuffle: bool = False,
            seed: int = 0, length_sorted: bool = False, tokenizer=None, bucket: int = 0):
    """Yield (input_ids, token_type_ids, labels, indices) numpy batches, dynamically padded.

    ``length_sorted`` (eval): all sentences sorted by length, least padding.
    ``shuffle`` + ``bucket=k`` (training): shuffle, sort each chunk of k batches by
    length, then shuffle the batch order. Batches pad to ~the median length instead of
    the longest of 32 random sentences, which cuts training FLOPs by ~1.5x here while
    keeping the data order random.
    """
    order = np.arange(len(texts))
    rng = np.random.default_rng(seed)
    if shuffle:
        rng.shuffle(order)
    elif length_sorted:
        order = np.argsort([len(t) for t in texts], kind="stable")
    groups = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and bucket > 1:
        groups = []
        chunk = batch_size * bucket
        for start in range(0, len(order), chunk):
            part = order[start: start + chunk]
            part = part[np.argsort([len(texts[i]) for i in part], kind="stable")]
            groups += [part[i: i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(groups)
    for idx in groups:
        ids, types = encode_batch(tokenizer, [texts[i] for i in idx])
        yield ids, types, labels[idx], idx

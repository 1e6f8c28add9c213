"""Request payloads for the benchmark: seeded fixed-length token batches and real text.

``fixed``: batch x seq_len random token ids (the seed tutorial's batch-16 x seq-128
setting) sent straight to the ``{m}_encoder`` model. ``real``: dev inputs of the task
(sentences, or sentence pairs) sent as text to the ``{m}`` text model (tokenized
server-side, padded to the batch's longest input). Both are built once from the seed and reused for every model, so
full width and compressed see exactly the same inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ofaserve.core.tasks import Split


@dataclass
class Workload:
    name: str                      # "fixed" | "real"
    batch_size: int
    batches: list[Any]             # fixed: (input_ids, token_type_ids); real: list[str] or list[(str, str)]
    info: dict[str, Any] = field(default_factory=dict)

    def batch(self, i: int) -> Any:
        return self.batches[i % len(self.batches)]


def fixed_workload(batch_size: int, seq_len: int, vocab_size: int, seed: int,
                   n_batches: int = 8) -> Workload:
    """``n_batches`` distinct batches of random ids in [first, vocab_size), no padding.

    Token values do not change the cost of a BERT forward (embedding gathers), only the
    shape does; ids avoid the special tokens (0..~103 for the BERT vocab) where possible
    so no position reads as padding.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError("batch_size and seq_len must be >= 1")
    if vocab_size < 2:
        raise ValueError("vocab_size must be >= 2")
    rng = np.random.default_rng(seed)
    low = 1000 if vocab_size > 2000 else 5 if vocab_size > 10 else 1
    batches = []
    for _ in range(n_batches):
        ids = rng.integers(low, vocab_size, size=(batch_size, seq_len), dtype=np.int64)
        batches.append((ids, np.zeros_like(ids)))
    return Workload("fixed", batch_size, batches,
                    {"seq_len": seq_len, "vocab_size": vocab_size, "id_range": [low, vocab_size],
                     "n_distinct_batches": n_batches, "seed": seed})


def real_text_workload(dev: Split, batch_size: int, seed: int, source: str = "", max_batches: int | None = None,
                       outputs: tuple[str, ...] = ("LABEL", "PROBS")) -> Workload:
    """Shuffle (seeded) and cut the dev inputs (sentences, or pairs for a pair task) into full
    batches of ``batch_size``; ``outputs``: what the text model answers (SCORE for regression)."""
    if len(dev) < batch_size:
        raise ValueError(f"need at least {batch_size} sentences for one batch, got {len(dev)}")
    order = np.random.default_rng(seed).permutation(len(dev))
    n = len(dev) // batch_size
    if max_batches:
        n = min(n, max_batches)
    batches = [dev.inputs(order[i * batch_size:(i + 1) * batch_size]) for i in range(n)]
    words = [sum(len(s.split()) for s in (x if isinstance(x, tuple) else (x,))) for b in batches for x in b]
    return Workload("real", batch_size, batches,
                    {"source": source, "n_sentences": n * batch_size, "n_distinct_batches": n,
                     "pairs": dev.text_pairs is not None, "outputs": list(outputs),
                     "mean_words": float(np.mean(words)), "seed": seed})


def text_tensors(batch: list[str] | list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """The text model's inputs, BYTES [batch, 1] each: TEXT, and TEXT_PAIR for pairs."""
    def column(values) -> np.ndarray:
        return np.array([[v.encode("utf-8")] for v in values], dtype=object)
    if batch and isinstance(batch[0], tuple):
        return {"TEXT": column(a for a, _ in batch), "TEXT_PAIR": column(b for _, b in batch)}
    return {"TEXT": column(batch)}

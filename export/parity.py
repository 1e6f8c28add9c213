"""Parity: every exported artifact against the supernet at its width, on real dev sentences."""
from __future__ import annotations

from typing import Any

import numpy as np

from ofaserve.core.batching import predict
from ofaserve.core.errors import OfaserveError
from ofaserve.core.metrics import score
from ofaserve.core.tasks import Split, TaskSpec
from ofaserve.export import artifact_logits

PARITY_TOL = 1e-4
# How far the exported graph's dev score may be from compress's: none for metrics of the
# predicted classes (the same graph gives the same argmax), float noise for correlations
# of scores that differ by up to PARITY_TOL.
DEV_METRIC_TOL = {"accuracy": 1e-6, "f1": 1e-6, "matthews": 1e-6, "pearson": 1e-4, "spearman": 1e-4}


def dev_metric_tolerance(metric: str) -> float:
    return DEV_METRIC_TOL[metric]


class ParityError(OfaserveError):
    """An exported artifact disagrees with the supernet; ``table`` says where."""

    def __init__(self, message: str, table: str):
        super().__init__(message)
        self.table = table


def parity_inputs(dev: Split, tokenizer, pad_id: int, max_positions: int) -> dict[str, tuple]:
    """Real dev inputs (sentences, or pairs with their segment ids) at 16 x 128 and 3 x 37
    (capped at the model's positions), with padding."""
    encoded = [tokenizer.encode(*x) if isinstance(x, tuple) else tokenizer.encode(x)
               for x in dev.inputs(range(min(512, len(dev))))]
    encs, segments = [e.ids for e in encoded], [e.type_ids for e in encoded]
    if not encs:
        raise OfaserveError("no dev sentences to check parity on")
    order = sorted(range(len(encs)), key=lambda i: len(encs[i]))
    out = {}
    for b, s in ((16, 128), (3, 37)):
        s = min(s, max_positions)
        if b == 3:
            pick = [order[-1], order[0], order[len(order) // 2]]  # longest (truncated), shortest, median
        else:
            pick = ([order[-1 - i] for i in range(min(b // 2, len(order)))]  # the longest: late positions
                    + [i % len(encs) for i in range(b - min(b // 2, len(order)))])
        ids = np.full((b, s), pad_id, dtype=np.int64)
        types = np.zeros_like(ids)
        for r, i in enumerate(pick):
            row = encs[i][:s]
            ids[r, : len(row)] = row
            types[r, : len(row)] = segments[i][:s]
        out[f"{b}x{s}"] = (ids, types)
    return out


def run_parity(fns: dict[str, artifact_logits.LogitsFn], inputs: dict[str, tuple], tol: float) -> tuple[dict, str, bool]:
    """Every runtime vs the first (the supernet at this width)."""
    ref_name = next(iter(fns))
    result: dict[str, Any] = {"reference": ref_name, "tolerance": tol, "shapes": {}}
    ok = True
    rows = []
    for shape, (ids, types) in inputs.items():
        ref = fns[ref_name](ids, types)
        entry = {"pad_fraction": float(np.mean(ids == 0)), "max_abs_diff": {}, "argmax_agree": {}}
        for name, fn in fns.items():
            if name == ref_name:
                continue
            got = fn(ids, types)
            if got.shape != ref.shape:
                diff = float("inf")
            else:
                diff = float(np.abs(got - ref).max())
            agree = float(np.mean(got.argmax(-1) == ref.argmax(-1))) if got.shape == ref.shape else 0.0
            entry["max_abs_diff"][name] = diff
            entry["argmax_agree"][name] = agree
            good = diff <= tol
            ok &= good
            rows.append(f"| {shape} | {name} | {diff:.3e} | {agree:.3f} | {'ok' if good else 'FAIL'} |")
        result["shapes"][shape] = entry
    table = "\n".join([f"| shape | runtime (vs {ref_name}) | max abs logits diff | argmax agree | <= {tol:g} |",
                       "|---|---|---|---|---|"] + rows)
    result["ok"] = ok
    result["max_abs_diff"] = max((d for e in result["shapes"].values() for d in e["max_abs_diff"].values()),
                                 default=0.0)
    return result, table, ok


def dev_eval(fn, dev: Split, tokenizer, spec: TaskSpec) -> tuple[dict, np.ndarray]:
    """(the task's metrics, the outputs) of logits function ``fn`` on ``dev``."""
    outputs = predict(fn, dev, tokenizer)
    return score(spec, outputs, dev.labels), outputs

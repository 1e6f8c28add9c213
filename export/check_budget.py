"""``--time_budget_s`` and ``--parity_runtimes`` for export: check what is served, on as
much of dev as the time allows.

The contract of an export is kept whatever the budget: every runtime that is checked
gives the supernet's logits on the parity batches, and dev accuracy through the ONNX graph
equals compress's on the whole dev set. That first dev pass is also the measurement: its
seconds per sentence price the later dev passes (the packed graph's check and each
precision variant's gate), which then run on an evenly spread subset of dev sized to the
time left. Without a budget every pass sees the whole dev set, as before.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.time_budget import fit_count
from ofaserve.core.tasks import Split

# Runtimes the parity check can run, besides the supernet it compares them with.
PARITY_RUNTIMES = ("sub_model", "paddle_static", "onnx", "onnx_ort_fused", "openvino_f32", "onnx_packed",
                   "openvino_packed")
# Below this many sentences the variants' gate (<= 0.5 points of accuracy) would turn on
# one or two sentences; the budget is overrun instead, and the record says so.
MIN_DEV_SENTENCES = 300
# NNCF's quantization runs the FP32 graph over its calibration sentences several times
# (statistics, SmoothQuant, bias correction): priced as this many first dev passes.
INT8_CALIBRATION_PASSES = 2.0


def check_parity_runtimes(names: list[str] | None) -> None:
    unknown = sorted(set(names or ()) - set(PARITY_RUNTIMES))
    if unknown:
        raise OfaserveError(f"--parity_runtimes: unknown runtime(s) {unknown}; choose from {list(PARITY_RUNTIMES)}")


def runtimes_to_check(available: list[str], asked: list[str] | None, eval_runtime: str) -> list[str]:
    """The supernet (the reference), the runtime of the dev-accuracy check, and the asked
    ones that this export has; all of them when nothing was asked."""
    if asked is None:
        return list(available)
    keep = {"supernet", eval_runtime, *asked}
    return [n for n in available if n in keep]


@dataclass
class LaterDev:
    """The dev sentences of the passes after the first: all of dev, or an even spread."""
    dev: Split
    index: np.ndarray | None  # None: the whole dev set
    record: dict[str, Any] | None

    def logits(self, full: np.ndarray) -> np.ndarray:
        return full if self.index is None else full[self.index]

    def same_share(self, split: Split | None) -> Split | None:
        """Another split (the test set the variants report once) cut to the same share as dev."""
        if split is None or self.index is None:
            return split
        return split.take(spread(len(split), max(1, round(len(split) * len(self.index) / self.record["dev_total"]))))


def spread(n_total: int, n: int) -> np.ndarray:
    """``n`` indices evenly spread over ``range(n_total)``, in order (dev is stored in its
    split's order, so a spread keeps its mix of movies and lengths)."""
    return np.unique(np.linspace(0, n_total - 1, num=n).round().astype(int))


class ExportCheckBudget:
    """The clock of one export under ``--time_budget_s``."""

    def __init__(self, budget_s: float):
        self.budget_s, self.t0 = float(budget_s), time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def later_dev(self, dev: Split, first_pass_s: float, passes: float) -> LaterDev:
        """Size the dev subset of ``passes`` later passes from the first pass's speed."""
        n_total = len(dev)
        each = first_pass_s / max(1, n_total)
        left = self.budget_s - self.elapsed()
        lo = min(MIN_DEV_SENTENCES, n_total)
        n = fit_count(left, each * passes, lo=lo, hi=n_total) if passes else n_total
        at_floor = bool(passes) and fit_count(left, each * passes, lo=0) < lo
        record = {"time_budget_s": self.budget_s, "elapsed_s": round(self.elapsed(), 1),
                  "first_dev_pass_s": round(first_pass_s, 2), "s_per_sentence": round(each, 5),
                  "later_passes": passes, "dev_sentences": n, "dev_total": n_total}
        if n >= n_total:
            return LaterDev(dev, None, record)
        idx = spread(n_total, n)
        record["dev_sentences"], record["at_floor"] = int(len(idx)), at_floor
        record["cut"] = (f"later dev passes on {len(idx)} of {n_total} sentences: {passes:g} passes at "
                         f"{each * 1000:.1f} ms/sentence in {max(0.0, left):.0f} s left"
                         + (f"; kept the minimum of {lo} sentences (the time left allowed fewer)" if at_floor else ""))
        return LaterDev(dev.take(idx), idx, record)


def later_passes(*, packed: bool, fp16: bool, bf16: bool, int8: bool, precisions: bool,
                 test_ratio: float = 0.0) -> float:
    """Dev passes after the first one, in first-pass units; the servable variants are also
    run once on the test set (``test_ratio``: its size over dev's)."""
    n = float(packed)
    if precisions:
        n += fp16 + bf16 + (2 + INT8_CALIBRATION_PASSES if int8 else 0)
        n += test_ratio * (1 + bf16 + (2 if int8 else 0))
    return n

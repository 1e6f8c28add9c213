"""A task's metrics, from the model's outputs: the GLUE set, computed by scikit-learn and scipy.

``score(spec, outputs, labels)`` gives every metric a task reports (``TaskSpec.metrics``;
the first is its main metric) plus ``n``. ``outputs`` are what the model returns: logits
[n, classes] for classification, scores [n, 1] (or [n]) for regression.
``paired_bootstrap`` is the interval of a difference in the main metric between two
models scored on the same inputs (resampling the inputs, both models together).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.tasks import TaskSpec, TaskType

BOOTSTRAP_SAMPLES = 2000
_CHUNK = 100  # bootstrap index rows drawn at a time


def predictions(spec: TaskSpec, outputs: np.ndarray) -> np.ndarray:
    """Class ids (argmax of the logits) or scores (the one output) per input."""
    outputs = np.asarray(outputs)
    if spec.type == TaskType.REGRESSION:
        return outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64)
    return outputs.argmax(-1)


# scikit-learn and scipy are imported on first use, not with this module: importing
# scikit-learn sets OpenMP environment variables, and a stage's CLI sets paddle's CPU
# threads before anything like that may happen (tests/test_packaging.py).
def _accuracy(labels, pred, classes: int) -> float:
    from sklearn.metrics import accuracy_score
    return float(accuracy_score(labels, pred))


def _f1(labels, pred, classes: int) -> float:
    """F1 of class 1 for two classes (MRPC, QQP: 'duplicate'), else the macro average."""
    from sklearn.metrics import f1_score
    return float(f1_score(labels, pred, average="binary" if classes == 2 else "macro"))


def _matthews(labels, pred, classes: int) -> float:
    from sklearn.metrics import matthews_corrcoef
    return float(matthews_corrcoef(labels, pred))


def _correlation(name: str) -> Callable[[np.ndarray, np.ndarray, int], float]:
    def metric(labels, pred, classes: int) -> float:
        from scipy import stats
        if np.std(pred) == 0 or np.std(labels) == 0:
            return 0.0  # a constant answer correlates with nothing (scipy warns and gives nan)
        return float(getattr(stats, name)(labels, pred)[0])
    return metric


# metric name -> fn(labels, predictions of ``predictions``, number of classes)
METRICS: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
    "accuracy": _accuracy, "f1": _f1, "matthews": _matthews,
    "pearson": _correlation("pearsonr"), "spearman": _correlation("spearmanr"),
}
CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")


def check_metrics(spec: TaskSpec) -> None:
    allowed = CLASSIFICATION_METRICS if spec.type == TaskType.CLASSIFICATION else REGRESSION_METRICS
    bad = [m for m in spec.metrics if m not in allowed]
    if bad or not spec.metrics:
        raise OfaserveError(f"task {spec.name} ({spec.type}): metrics must be among {', '.join(allowed)}, "
                            f"got {list(spec.metrics)}")


def score(spec: TaskSpec, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """Every metric ``spec`` reports, and ``n`` (the number of inputs scored)."""
    labels = np.asarray(labels)
    pred = predictions(spec, outputs)
    if len(pred) != len(labels):
        raise OfaserveError(f"{len(pred)} outputs for {len(labels)} labels")
    return {**{m: METRICS[m](labels, pred, len(spec.labels)) for m in spec.metrics}, "n": int(len(labels))}


def paired_bootstrap(spec: TaskSpec, outputs_a: np.ndarray, outputs_b: np.ndarray, labels: np.ndarray,
                     n: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, float | list[float] | str]:
    """95% percentile interval of main_metric(a) - main_metric(b) over the same inputs:
    each resample draws inputs with replacement and scores both models on them."""
    metric, classes = METRICS[spec.main_metric], len(spec.labels)
    labels = np.asarray(labels)
    pa, pb = predictions(spec, outputs_a), predictions(spec, outputs_b)
    rng = np.random.default_rng(seed)
    differences = _resampled_differences(spec.main_metric, labels, pa, pb, classes)
    diffs: list[float] = []
    for start in range(0, n, _CHUNK):  # the index rows in chunks: one stream, bounded memory
        diffs.extend(differences(rng.integers(0, len(labels), size=(min(_CHUNK, n - start), len(labels)))))
    return {"metric": spec.main_metric, "diff": metric(labels, pa, classes) - metric(labels, pb, classes),
            "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}


def _resampled_differences(name: str, labels: np.ndarray, pa: np.ndarray, pb: np.ndarray,
                           classes: int) -> Callable[[np.ndarray], list[float]]:
    """fn(rows): metric(a) - metric(b) on each resample (a row of input indices). Accuracy is
    the mean of per-input hits, found once here, so every row of a chunk is scored at once:
    the figures of ``accuracy_score`` (sums of 0/1 are exact) without its per-call cost."""
    if name == "accuracy":
        hits_a, hits_b = (pa == labels).astype(np.float64), (pb == labels).astype(np.float64)
        return lambda rows: (hits_a[rows].mean(axis=1) - hits_b[rows].mean(axis=1)).tolist()
    metric = METRICS[name]
    return lambda rows: [metric(labels[idx], pa[idx], classes) - metric(labels[idx], pb[idx], classes)
                         for idx in rows]

"""A task's metrics and the paired bootstrap of its main metric."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from ofaserve.core.errors import OfaserveError
from ofaserve.core.metrics import check_metrics, paired_bootstrap, predictions, score
from ofaserve.core.tasks import Split, TaskSpec, TaskType

BINARY = TaskSpec("t", labels=("no", "yes"))


def _logits(pred: np.ndarray, classes: int = 2) -> np.ndarray:
    out = np.zeros((len(pred), classes), dtype=np.float32)
    out[np.arange(len(pred)), pred] = 1.0
    return out


def test_classification_metrics_are_the_libraries():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    spec = TaskSpec("t", labels=("a", "b"), metrics=("matthews", "accuracy", "f1"))
    got = score(spec, _logits(p), y)
    assert got == {"matthews": matthews_corrcoef(y, p), "accuracy": float(np.mean(y == p)),
                   "f1": f1_score(y, p), "n": 300}
    three = TaskSpec("t3", labels=("a", "b", "c"))
    y3, p3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert score(three, _logits(p3, 3), y3)["f1"] == f1_score(y3, p3, average="macro")


def test_regression_metrics_and_outputs():
    spec = TaskSpec("sts", TaskType.REGRESSION, metrics=("pearson", "spearman"))
    rng = np.random.default_rng(2)
    y = rng.uniform(0, 5, 200)
    out = (y + rng.normal(0, 1, 200)).astype(np.float32)[:, None]  # [n, 1], as a one-output head gives
    got = score(spec, out, y)
    assert got["pearson"] == pytest.approx(stats.pearsonr(y, out[:, 0])[0], abs=1e-9)
    assert got["spearman"] == pytest.approx(stats.spearmanr(y, out[:, 0])[0], abs=1e-9)
    assert score(spec, np.ones((200, 1)), y)["pearson"] == 0.0  # a constant answer: 0, not nan
    assert predictions(spec, out).shape == (200,)


def test_a_metric_the_task_type_has_not_is_refused():
    with pytest.raises(OfaserveError, match="metrics must be among pearson, spearman"):
        check_metrics(TaskSpec("sts", TaskType.REGRESSION, metrics=("accuracy",)))
    with pytest.raises(OfaserveError, match="at least two classes"):
        TaskSpec("one", labels=("only",))


def test_paired_bootstrap_of_accuracy_is_the_mean_difference_resampled():
    """For accuracy, resampling scores equals resampling per-input correctness (the
    vectorised form), with the same random stream."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    a = np.where(rng.random(400) < 0.8, y, 1 - y)
    b = np.where(rng.random(400) < 0.75, y, 1 - y)
    got = paired_bootstrap(BINARY, _logits(a), _logits(b), y, n=500)
    idx = np.random.default_rng(0).integers(0, 400, size=(500, 400))
    ca, cb = (a == y).astype(float), (b == y).astype(float)
    diffs = ca[idx].mean(1) - cb[idx].mean(1)
    assert got["metric"] == "accuracy" and got["diff"] == pytest.approx(ca.mean() - cb.mean())
    assert got["ci95"] == pytest.approx([np.percentile(diffs, 2.5), np.percentile(diffs, 97.5)])
    assert got["ci95"][0] < got["diff"] < got["ci95"][1]


def test_resampled_accuracy_at_once_equals_scikit_learn_per_resample():
    from ofaserve.core.metrics import METRICS, _resampled_differences

    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 250)
    a, b = np.where(rng.random(250) < 0.7, y, (y + 1) % 3), np.where(rng.random(250) < 0.6, y, (y + 2) % 3)
    rows = rng.integers(0, 250, size=(40, 250))
    acc = METRICS["accuracy"]  # scikit-learn's accuracy_score
    want = [acc(y[i], a[i], 3) - acc(y[i], b[i], 3) for i in rows]
    assert _resampled_differences("accuracy", y, a, b, 3)(rows) == want  # exactly: sums of 0/1


def test_paired_bootstrap_of_a_correlation_brackets_it():
    spec = TaskSpec("sts", TaskType.REGRESSION, metrics=("pearson", "spearman"))
    rng = np.random.default_rng(4)
    y = rng.uniform(0, 5, 300)
    good, worse = y + rng.normal(0, 0.5, 300), y + rng.normal(0, 2.0, 300)
    got = paired_bootstrap(spec, good[:, None], worse[:, None], y, n=300)
    assert got["metric"] == "pearson" and 0 < got["ci95"][0] < got["diff"] < got["ci95"][1]


def test_split_take_and_inputs_keep_pairs_aligned():
    s = Split(["a", "b", "c"], np.array([0, 1, 0]), ["x", "y", "z"])
    t = s.take([2, 0])
    assert t.texts == ["c", "a"] and t.text_pairs == ["z", "x"] and t.labels.tolist() == [0, 0]
    assert s.inputs([1]) == [("b", "y")] and Split(["a"], np.array([1])).inputs() == ["a"]
    assert len(s.take(slice(0, 2))) == 2

"""Task data: GLUE's own files for the tutorial's eight tasks, the user's CSV/TSV files
(pairs, regression), and one clear error for what does not fit."""
from __future__ import annotations

import numpy as np
import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import CompressManifest
from ofaserve.core.tasks import GLUE_TASKS, TaskType, load_task
from ofaserve.testing import tiny_pair_task_files, write_csv, write_glue_task

EXPECTED = {  # task: (type, pair, labels, metrics, dev splits)
    "cola": (TaskType.CLASSIFICATION, False, ("0", "1"), ("matthews", "accuracy"), ["dev"]),
    "sst-2": (TaskType.CLASSIFICATION, False, ("0", "1"), ("accuracy",), ["dev"]),
    "mrpc": (TaskType.CLASSIFICATION, True, ("0", "1"), ("f1", "accuracy"), ["dev"]),
    "sts-b": (TaskType.REGRESSION, True, (), ("pearson", "spearman"), ["dev"]),
    "qqp": (TaskType.CLASSIFICATION, True, ("0", "1"), ("accuracy", "f1"), ["dev"]),
    "mnli": (TaskType.CLASSIFICATION, True, ("contradiction", "entailment", "neutral"), ("accuracy",),
             ["dev", "dev_mismatched"]),
    "qnli": (TaskType.CLASSIFICATION, True, ("entailment", "not_entailment"), ("accuracy",), ["dev"]),
    "rte": (TaskType.CLASSIFICATION, True, ("entailment", "not_entailment"), ("accuracy",), ["dev"]),
}


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_each_glue_task_reads_glues_own_layout(task, tmp_path):
    folder = write_glue_task(tmp_path / task, task, n_train=40, n_dev=20)
    data = load_task(task.upper(), data_dir=str(folder))  # the tutorial's --task_name spelling
    kind, pair, labels, metrics, devs = EXPECTED[task]
    assert (data.spec.type, data.spec.pair, data.spec.labels, data.spec.metrics) == (kind, pair, labels, metrics)
    assert sorted(data.splits) == sorted(["train", *devs])
    assert len(data.split("train")) == 40 and all(len(data.split(d)) == 20 for d in devs)
    dev = data.split("dev")
    assert (dev.text_pairs is not None) == pair
    # GLUE's quotes are text: a sentence with an unbalanced quote stays whole, no field swallowed
    assert dev.texts[0].endswith(' "quoted') and '\t' not in dev.texts[0]
    if kind == TaskType.REGRESSION:
        assert dev.labels.dtype == np.float32 and 0 <= dev.labels.min() <= dev.labels.max() <= 5
    else:
        assert dev.labels.dtype == np.int64 and set(dev.labels.tolist()) <= set(range(len(labels)))
    line = (folder / ("dev_matched.tsv" if task == "mnli" else "dev.tsv")).read_text().splitlines()[
        0 if task == "cola" else 1].split("\t")
    first = line[{"cola": 3, "sst-2": 0, "mrpc": 3, "sts-b": 7, "qqp": 3, "mnli": 8, "qnli": 1, "rte": 1}[task]]
    assert dev.texts[0] == first


def test_glue_aliases_and_missing_data_dir(tmp_path):
    folder = write_glue_task(tmp_path / "sst", "sst-2", n_train=10, n_dev=10)
    assert load_task("SST2", data_dir=str(folder)).name == "sst-2"
    with pytest.raises(OfaserveError, match="needs --data_dir"):
        load_task("QQP")
    with pytest.raises(OfaserveError, match="fewer than GLUE's mrpc layout needs"):
        load_task("mrpc", data_dir=str(folder))  # sst-2's files under mrpc's name
    with pytest.raises(OfaserveError, match="is a regression task"):
        load_task("sts-b", data_dir=str(folder), task_type="classification")


def test_a_file_of_another_layout_is_refused(tmp_path):
    folder = write_glue_task(tmp_path / "sst", "sst-2", n_train=20, n_dev=10)
    with pytest.raises(OfaserveError, match="fewer than GLUE's qqp layout needs"):
        load_task("qqp", data_dir=str(folder))
    mnli = write_glue_task(tmp_path / "mnli", "mnli", n_train=10, n_dev=5)
    (mnli / "dev_matched.tsv").unlink()
    with pytest.raises(OfaserveError, match="dev_matched.tsv does not exist"):
        load_task("mnli", data_dir=str(mnli))


def test_a_few_malformed_rows_are_skipped_many_are_an_error(tmp_path):
    folder = write_glue_task(tmp_path / "qqp", "qqp", n_train=60, n_dev=10)
    train = folder / "train.tsv"
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines + ["123\t4\t5\ta question without its pair"]) + "\n")
    assert len(load_task("qqp", data_dir=str(folder)).split("train")) == 60
    train.write_text("\n".join(lines[:1] + [l.rsplit("\t", 2)[0] for l in lines[1:]]) + "\n")
    with pytest.raises(OfaserveError, match="rows do not have the 6 columns"):
        load_task("qqp", data_dir=str(folder))


def test_csv_pairs_and_regression(tmp_path):
    train, dev, _ = tiny_pair_task_files(tmp_path / "pair", n_train=30, n_dev=12)
    data = load_task(None, str(train), str(dev))
    assert data.spec.pair and data.spec.labels == ("different", "same") and len(data.split("dev").text_pairs) == 12
    train, dev, _ = tiny_pair_task_files(tmp_path / "reg", n_train=30, n_dev=12, regression=True)
    data = load_task(None, str(train), str(dev), task_type="regression")
    assert data.spec.type == TaskType.REGRESSION and data.spec.metrics == ("pearson", "spearman")
    assert data.split("train").labels.dtype == np.float32


def test_scores_read_as_classes_are_an_error(tmp_path):
    train, dev, _ = tiny_pair_task_files(tmp_path / "reg", n_train=30, n_dev=12, regression=True)
    with pytest.raises(OfaserveError, match="look like scores .* pass --task_type regression"):
        load_task(None, str(train), str(dev))
    ints = write_csv(tmp_path / "stars.csv", ["a", "b", "c", "d"], ["1", "2", "3", "1"])
    assert load_task(None, str(ints), str(ints)).spec.labels == ("1", "2", "3")  # a few whole numbers: classes
    words = write_csv(tmp_path / "words.csv", ["a", "b"], ["x", "y"])
    with pytest.raises(OfaserveError, match="regression labels must be numbers"):
        load_task(None, str(words), str(words), task_type="regression")


def test_every_file_needs_the_same_columns(tmp_path):
    train, _, _ = tiny_pair_task_files(tmp_path / "pair", n_train=10, n_dev=4)
    single = write_csv(tmp_path / "single.csv", ["a", "b"], ["same", "different"])
    with pytest.raises(OfaserveError, match="`text_pair` is in .* but not in"):
        load_task(None, str(train), str(single))


def test_later_stages_reload_the_split_compress_used(tmp_path):
    folder = write_glue_task(tmp_path / "mnli", "mnli", n_train=12, n_dev=8)
    manifest = CompressManifest(task="mnli", labels=["contradiction", "entailment", "neutral"],
                                options={"task_name": "MNLI", "data_dir": str(folder)})
    assert len(manifest.split("dev_mismatched")) == 8 and manifest.split().text_pairs is not None


def test_a_manifest_loads_its_task_once_for_all_its_splits(tmp_path, monkeypatch):
    from ofaserve.core import manifests

    folder = write_glue_task(tmp_path / "mnli", "mnli", n_train=12, n_dev=8)
    loads = []
    real = manifests.load_task
    monkeypatch.setattr(manifests, "load_task", lambda *a, **k: loads.append(a) or real(*a, **k))
    manifest = CompressManifest(task="mnli", labels=["contradiction", "entailment", "neutral"],
                                options={"task_name": "MNLI", "data_dir": str(folder)})
    assert len(manifest.split("train")) == 12 and len(manifest.split("dev")) == 8
    assert manifest.has_split("dev_mismatched") and not manifest.has_split("no_such_split")
    assert len(loads) == 1
    assert "_task_data" not in manifest.to_dict()

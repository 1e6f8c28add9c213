"""The shared names (runtimes, precisions, targets, widths): parsed once, one spelling each,
and the import-free copy in runtime/runtimes.py pinned to them."""
from __future__ import annotations

import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.vocabulary import Precision, Runtime, Target, TextPipeline
from ofaserve.core.width import AUTO, Width, parse_width_choice
from ofaserve.runtime import runtimes


def test_runtimes_py_table_is_the_vocabulary():
    """runtimes.py is copied into repositories and imports nothing from ofaserve: its own
    table must name exactly the vocabulary's in-process runtimes and executing precisions."""
    assert set(runtimes.KINDS) == {r.value for r in Runtime} - {Runtime.OPENVINO_NATIVE.value}
    for kind, (precisions, _artifact) in runtimes.KINDS.items():
        assert all(Precision.parse(p).executes and Precision.parse(p) == p for p in precisions), kind
    for alias, name in runtimes._PRECISION_ALIASES.items():
        assert Precision.parse(alias) == name


@pytest.mark.parametrize("text,member", [("fp32", Precision.FP32), ("F32", Precision.FP32), ("float16", Precision.FP16),
                                         ("bfloat16", Precision.BF16), (" int8 ", Precision.INT8),
                                         ("auto", Precision.AUTO)])
def test_precision_aliases(text, member):
    assert Precision.parse(text) is member and Precision.parse(member) is member


@pytest.mark.parametrize("text,member", [("ort", Runtime.ONNXRUNTIME), ("ov", Runtime.OPENVINO),
                                         ("paddle_inference", Runtime.PADDLE), ("trt", Runtime.ONNXRUNTIME_TRT),
                                         ("openvino-native", Runtime.OPENVINO_NATIVE)])
def test_runtime_aliases(text, member):
    assert Runtime.parse(text) is member


def test_unknown_names_are_one_clear_error():
    with pytest.raises(OfaserveError, match="unknown precision 'int3': choose one of fp32, fp16, bf16, int8"):
        Precision.parse("int3")
    with pytest.raises(OfaserveError, match="unknown target 'tpu'"):
        Target.parse("tpu")
    with pytest.raises(OfaserveError, match="unknown text pipeline 'chain'"):
        TextPipeline.parse("chain")


def test_names_are_plain_strings_in_files():
    import json
    assert json.dumps({"p": Precision.BF16, "r": Runtime.ONNXRUNTIME_TRT}) == '{"p": "bf16", "r": "onnxruntime-trt"}'
    assert f"{Target.GPU}" == "gpu" and Precision.INT8 == "int8"
    assert [p for p in Precision if p.executes] == ["fp32", "fp16", "bf16", "int8"]


@pytest.mark.parametrize("text,key,model", [(1.0, "1.0", "bert_w100"), ("0.6667", "0.6667", "bert_w67"),
                                            (0.6666666666666666, "0.6667", "bert_w67"), ("2/3", "0.6667", "bert_w67"),
                                            ("0.5", "0.5", "bert_w50"), (0.8333333333333334, "0.8333", "bert_w83")])
def test_width_owns_its_spellings(text, key, model):
    w = Width.parse(text)
    assert w.key == key and w.model_name("bert") == model and str(w) == key


def test_width_is_checked_and_matched_once():
    trained = [1.0, 0.8333333333333334, 0.6666666666666666, 0.5]
    assert Width.parse("0.6667").among(trained).value == 0.6666666666666666
    with pytest.raises(OfaserveError, match="width 0.7 was not trained: choose one of 1.0, 0.8333, 0.6667, 0.5"):
        Width.parse("0.7").among(trained)
    for bad in ("0", "1.5", "-0.5", "wide", "1/0"):
        with pytest.raises(OfaserveError, match="width"):
            Width.parse(bad)
    assert parse_width_choice("auto") == AUTO and parse_width_choice("AUTO") == AUTO
    assert parse_width_choice(0.5) == Width(0.5)

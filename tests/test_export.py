"""The export stage on a real (tiny) compress output: parity chain, fresh-process reload,
sizes, atomic output, and every bad input giving one clear error."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.vocabulary import DropBound
from ofaserve.runtime import capabilities
from ofaserve.core.subnet import Subnet
from ofaserve.core.manifests import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _ids(vocab: int = 128, batch: int = 4, seq: int = 19, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, seq), dtype=np.int64)
    ids[:, 0] = 2
    ids[1, 12:] = 0  # real padding
    ids[2, 5:] = 0
    return ids, np.zeros_like(ids)


# ----------------------------------------------------------------------------- the good path
def test_manifest_and_layout(tiny_export_dir):
    m = read_manifest(tiny_export_dir, stage="export")
    assert m["width_mult"] == 0.75 and m["model_type"] == "bert" and m["num_labels"] == 2
    assert m["labels"] == read_manifest(m["source"]["compress_dir"], stage="compress")["labels"]
    for key in ("sub_model", "paddle_static", "onnx", "onnx_ort_fused", "onnx_fp16", "tokenizer", "vocab"):
        assert key in m["artifacts"], key
    for rel in (m["artifacts"]["onnx"], m["artifacts"]["onnx_fp16"], m["artifacts"]["tokenizer"],
                m["artifacts"]["vocab"], "sub_model/model_state.pdparams", "sub_model/model_config.json",
                "static/model.pdiparams"):
        assert (tiny_export_dir / rel).is_file(), rel
    assert all(isinstance(v, str) and (tiny_export_dir / v).exists() for k, v in m["artifacts"].items()
               if k != "paddle_static")  # that one is a path prefix (model.json / model.pdiparams)
    assert all((tiny_export_dir / f).is_file() for f in m["paddle_static_files"])
    assert m["sub_config"]["num_heads"] == [3, 3] and m["sub_config"]["intermediate_size"] == [96, 96]
    assert m["source"]["sha256"] and m["dev_score"]["value"] is not None
    assert not [p for p in tiny_export_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_parity_chain(tiny_export_dir):
    p = read_manifest(tiny_export_dir, stage="export")["parity"]
    assert p["ok"] and p["reference"] == "supernet"
    assert set(p["shapes"]) == {"16x128", "3x37"}
    assert p["shapes"]["3x37"]["pad_fraction"] > 0
    for shape in p["shapes"].values():
        assert set(shape["max_abs_diff"]) == {"sub_model", "paddle_static", "onnx", "onnx_ort_fused", "openvino_f32",
                                              "onnx_packed", "openvino_packed"}
        assert max(shape["max_abs_diff"].values()) <= 1e-4
        assert shape["max_abs_diff"]["sub_model"] == 0.0
    assert p["dev_score"]["abs_diff"] <= 1e-6 and p["dev_score"]["metric"] == "accuracy"
    # the whole dev set through the packed graph (batches of 64, many sentences per row)
    assert p["packed_dev"]["max_abs_diff_vs_onnx"] <= 1e-4 and p["packed_dev"]["predictions_agreeing"] == 1.0


def test_packed_graph_runs_sentences_side_by_side(tiny_export_dir):
    """Two sentences in one row (positions restart, segments 1 and 2, [CLS] indices) give
    each sentence exactly the logits the plain graph gives it alone, unpadded."""
    import onnxruntime as ort

    m = read_manifest(tiny_export_dir, stage="export")
    plain = ort.InferenceSession(str(tiny_export_dir / m["artifacts"]["onnx"]), providers=["CPUExecutionProvider"])
    packed = ort.InferenceSession(str(tiny_export_dir / m["artifacts"]["onnx_packed"]),
                                  providers=["CPUExecutionProvider"])
    assert [i.name for i in packed.get_inputs()] == ["input_ids", "token_type_ids", "position_ids", "segment_ids",
                                                     "cls_index"]
    a, b = [2, 17, 40, 9, 3], [2, 50, 60, 70, 80, 90, 3]
    row = np.array([a + b + [0, 0, 0, 0]], dtype=np.int64)  # 16 wide, 4 pad
    feeds = {"input_ids": row, "token_type_ids": np.zeros_like(row),
             "position_ids": np.array([list(range(5)) + list(range(7)) + [0] * 4], dtype=np.int64),
             "segment_ids": np.array([[1] * 5 + [2] * 7 + [0] * 4], dtype=np.int64),
             "cls_index": np.array([5, 0], dtype=np.int64)}  # b first: output follows cls_index
    (got,) = packed.run(["logits"], feeds)
    assert got.shape == (2, 2)
    for out_row, sentence in ((0, b), (1, a)):
        ids = np.array([sentence], dtype=np.int64)
        (alone,) = plain.run(["logits"], {"input_ids": ids, "token_type_ids": np.zeros_like(ids)})
        assert np.abs(got[out_row] - alone[0]).max() <= 1e-5


def test_onnx_contract_and_fusion(tiny_export_dir):
    import onnxruntime as ort

    m = read_manifest(tiny_export_dir, stage="export")
    assert m["onnx"]["ort_fusion"]["attention_fused"] == 2 and m["onnx"]["rewrite"]["applied"]
    ids, types = _ids(batch=5, seq=11)
    outs = []
    for key in ("onnx", "onnx_ort_fused", "onnx_fp16"):
        sess = ort.InferenceSession(str(tiny_export_dir / m["artifacts"][key]), providers=["CPUExecutionProvider"])
        assert [(i.name, i.type) for i in sess.get_inputs()] == [("input_ids", "tensor(int64)"),
                                                                ("token_type_ids", "tensor(int64)")]
        assert [(o.name, o.type) for o in sess.get_outputs()] == [("logits", "tensor(float)")]
        (logits,) = sess.run(None, {"input_ids": ids, "token_type_ids": types})
        assert logits.shape == (5, 2) and logits.dtype == np.float32
        outs.append(logits)
    assert np.abs(outs[0] - outs[1]).max() <= 1e-4
    assert np.abs(outs[0] - outs[2]).max() <= 5e-3  # fp16


# Unit roundoff: bf16 keeps 8 significant bits, f32 24. A model run in bf16 differs from
# f32 by about U_BF16 relative to the size of its logits, two f32 runtimes by a few U_F32:
# a gap of 2^16. The bounds split it, each far from both ends, so "bf16" that silently ran
# f32 fails, and so does "fp32" that silently ran bf16.
U_BF16, U_F32 = 2.0 ** -8, 2.0 ** -24
F32_MAX_REL = 2 ** 8 * U_F32      # f32 vs f32: at most 256 unit roundoffs
BF16_MIN_REL = U_BF16 / 16        # bf16 vs f32: at least 1/16 of bf16's unit roundoff ...
BF16_MAX_REL = 16 * U_BF16        # ... and at most 16 of them (bf16 ran, and ran sanely)


def _openvino_bf16_capable() -> tuple[bool, list[str]]:
    import openvino as ov

    caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return "BF16" in caps, caps


def _precision_runs(tiny_export_dir, bf16: bool = False):
    """f32 logits (ONNX Runtime, OpenVINO) of one padded batch, and with ``bf16`` OpenVINO's
    bf16 logits (which only a CPU with bf16 can give: elsewhere the runner refuses)."""
    from ofaserve.runtime.runtimes import load_runner

    path = tiny_export_dir / read_manifest(tiny_export_dir, stage="export")["artifacts"]["onnx"]
    ids, types = _ids(batch=16, seq=128, seed=5)
    runs = [("ort_f32", "onnxruntime", "fp32"), ("ov_f32", "openvino", "fp32")] + (
        [("ov_bf16", "openvino", "bf16")] if bf16 else [])
    return {name: load_runner(kind, path, precision, threads=2)(ids, types) for name, kind, precision in runs}


def test_openvino_fp32_runner_runs_f32(tiny_export_dir):
    """On a bf16 CPU OpenVINO runs bf16 unless told otherwise: the fp32 runner must pin f32
    (on any CPU: where there is no bf16 the pin changes nothing and the test still holds)."""
    out = _precision_runs(tiny_export_dir)
    scale = float(np.abs(out["ort_f32"]).max())
    assert np.abs(out["ov_f32"] - out["ort_f32"]).max() <= F32_MAX_REL * scale


def test_openvino_runners_leave_their_threads_unpinned(tiny_export_dir):
    """Each Triton python-backend instance is a process of its own: pinned OpenVINO runtimes
    in two of them bind their threads to the same cores (benchmarks/results/cpu_pinning.md)."""
    from ofaserve.runtime.runtimes import load_runner

    path = tiny_export_dir / read_manifest(tiny_export_dir, stage="export")["artifacts"]["onnx"]
    assert load_runner("openvino", path, "fp32", threads=1).executed["cpu_pinning"] is False


def test_openvino_bf16_runner_runs_bf16(tiny_export_dir):
    """Where the CPU has bf16, the bf16 runner's logits differ from f32 in the same runtime
    by what bf16 rounding gives (not by float noise: then it silently ran f32)."""
    import openvino as ov

    capable, caps = _openvino_bf16_capable()
    if not capable:
        pytest.skip(f"no bf16 on this CPU (OpenVINO OPTIMIZATION_CAPABILITIES {caps}): bf16 would run as f32")
    path = tiny_export_dir / read_manifest(tiny_export_dir, stage="export")["artifacts"]["onnx"]
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    out = _precision_runs(tiny_export_dir, bf16=True)
    scale = float(np.abs(out["ov_f32"]).max())
    diff = float(np.abs(out["ov_bf16"] - out["ov_f32"]).max())
    assert BF16_MIN_REL * scale <= diff <= BF16_MAX_REL * scale, (diff, scale)


def test_precision_records_match_the_artifacts_and_gates(tiny_compress_dir, tiny_export_dir):
    """The recorded dev accuracy and agreement of the FP16 and bf16 variants are what their
    artifacts give now, and every gated variant ships exactly when it meets both limits."""
    from ofaserve.export import parity, precisions, source
    from ofaserve.export.artifact_logits import onnxruntime, openvino

    m = read_manifest(tiny_export_dir, stage="export")
    pr, arts = m["precisions"], m["artifacts"]
    src = source.load_compress_output(tiny_compress_dir)
    dev = source.load_dev(src)
    tok, _ = source.load_tokenizer(src, src.manifest.max_seq_length)
    fp32, fp32_logits = parity.dev_eval(onnxruntime(tiny_export_dir / arts["onnx"]), dev, tok, src.spec)
    assert pr["fp32"]["accuracy"] == fp32["accuracy"]
    runs = {"onnx_fp16": lambda: onnxruntime(tiny_export_dir / arts["onnx_fp16"])}
    if capabilities.current().bf16:  # what the export decided by
        runs["openvino_bf16"] = lambda: openvino(tiny_export_dir / arts["onnx"], "bf16")
    for name, make in runs.items():
        got, logits = parity.dev_eval(make(), dev, tok, src.spec)
        assert pr[name]["accuracy"] == got["accuracy"], name
        assert pr[name]["delta_vs_fp32"] == pytest.approx(got["accuracy"] - fp32["accuracy"], abs=1e-12), name
        assert pr[name]["agreement_with_fp32"] == float(np.mean(logits.argmax(-1) == fp32_logits.argmax(-1))), name
    gated = {name: r for name, r in pr.items() if "shipped" in r}
    assert gated, "no precision variant went through the gate"
    for name, r in gated.items():
        assert (r["max_drop"], r["min_agreement"]) == (precisions.INT8_MAX_DROP, precisions.INT8_MIN_AGREEMENT)
        meets = r["delta_vs_fp32"] >= -r["max_drop"] and r["agreement_with_fp32"] >= r["min_agreement"]
        assert r["shipped"] == meets, (name, r)


def test_sub_model_reload_in_fresh_process(tiny_export_dir, tmp_path):
    import onnxruntime as ort

    ids, types = _ids()
    np.save(tmp_path / "ids.npy", ids)
    code = (
        "import sys, numpy as np, paddle\n"
        "from ofaserve.export import load_sub_model\n"
        f"m = load_sub_model({str(tiny_export_dir / 'sub_model')!r})\n"
        f"ids = np.load({str(tmp_path / 'ids.npy')!r})\n"
        "with paddle.no_grad():\n"
        "    out = m(paddle.to_tensor(ids), paddle.to_tensor(np.zeros_like(ids))).numpy()\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out)\n"
        "import paddle.nn as nn\n"
        "from paddlenlp.transformers import BertModel\n"
        "mha = nn.MultiHeadAttention\n"
        "assert mha.forward.__module__.startswith('paddle.nn') and mha._prepare_qkv.__module__.startswith('paddle.nn')\n"
        "assert BertModel.forward.__module__ == 'paddlenlp.transformers.bert.modeling', 'an OFA patch is active'\n"
        "print([l.self_attn.num_heads for l in m.bert.encoder.layers])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[3, 3]"
    fresh = np.load(tmp_path / "out.npy")
    onnx_path = tiny_export_dir / "onnx" / "model.onnx"
    (ref,) = ort.InferenceSession(str(onnx_path)).run(None, {"input_ids": ids, "token_type_ids": types})
    assert np.abs(fresh - ref).max() <= 1e-5


def test_supernet_matches_fresh_sub_model(tiny_compress_dir, tiny_export_dir):
    """The reference itself: supernet at 0.75 == the reloaded sub model, bit for bit."""
    from ofaserve.export.source import build_supernet, load_compress_output
    from ofaserve.export.artifact_logits import dygraph
    from ofaserve.compress.submodel import load_sub_model

    sn = build_supernet(load_compress_output(tiny_compress_dir))
    ids, types = _ids(seed=3)
    ref = sn.logits_numpy(ids, types, 0.75)
    got = dygraph(load_sub_model(tiny_export_dir / "sub_model"))(ids, types)
    assert np.array_equal(ref, got)
    assert np.abs(sn.logits_numpy(ids, types, 1.0) - got).max() > 1e-4  # the width really differs


def test_loader_refuses_wrong_head_count(tiny_export_dir, tmp_path):
    from ofaserve.compress.submodel import load_sub_model

    sub = tmp_path / "sub"
    shutil.copytree(tiny_export_dir / "sub_model", sub)
    cfg = json.loads((sub / "model_config.json").read_text())
    cfg["layers"][0]["num_heads"] = 4  # the tutorial bug: full-width head count left in the config
    (sub / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(OfaserveError, match="wrong shape"):
        load_sub_model(sub)
    (sub / "model_config.json").write_text("{not json")
    with pytest.raises(OfaserveError, match="not valid JSON"):
        load_sub_model(sub)


# ----------------------------------------------------------------------------- sizes
def test_param_counts(tiny_checkpoint, tiny_export_dir):
    import paddle
    from safetensors.numpy import load_file

    m = read_manifest(tiny_export_dir, stage="export")
    state = paddle.load(str(tiny_export_dir / "sub_model" / "model_state.pdparams"))
    assert m["params"]["total"] == sum(int(np.prod(v.shape)) for v in state.values())
    assert m["params"]["encoder"] == sum(int(np.prod(v.shape)) for k, v in state.items() if ".encoder." in k)
    # full width = the pretrained checkpoint's tensors (less its position_ids buffer) + the classifier
    hf = load_file(str(tiny_checkpoint[0] / "model.safetensors"))
    hidden, labels = hf["pooler.dense.bias"].size, m["num_labels"]
    assert m["params"]["full_width_total"] == sum(v.size for k, v in hf.items() if k != "embeddings.position_ids"
                                                  ) + hidden * labels + labels
    assert 0.74 < m["params"]["encoder_fraction"] < 0.76


def test_minilm_sizes_analytic():
    """DESIGN 2.7 / 5: MiniLM-L6 at 0.6667: 22.71M -> 19.17M params (encoder 10.65M -> 7.10M),
    45.9 -> 30.6 GFLOP at 16 x 128."""
    from ofaserve.compress.bert import paddle_config
    from ofaserve.compress.submodel import count_params_config, flops, full_width_config

    base = paddle_config(dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                              intermediate_size=1536), num_labels=2)
    full = full_width_config(base)
    sub = json.loads(json.dumps(full))
    for layer in sub["layers"]:
        layer["num_heads"], layer["intermediate_size"] = int(12 * 0.6666666666666666), int(0.6666666666666666 * 1536)
    assert sub["layers"][0] == {"num_heads": 8, "head_dim": 32, "intermediate_size": 1024}
    pf, ps = count_params_config(full), count_params_config(sub)
    assert round(pf["total"] / 1e6, 2) == 22.71 and round(ps["total"] / 1e6, 2) == 19.17
    assert round(pf["encoder"] / 1e6, 2) == 10.65 and round(ps["encoder"] / 1e6, 2) == 7.10
    assert round(flops(full) / 1e9, 1) == 45.9 and round(flops(sub) / 1e9, 1) == 30.6


# ----------------------------------------------------------------------------- atomic output
def test_parity_failure_leaves_previous_export_intact(tiny_compress_dir, tiny_export_dir, tmp_path, capsys):
    from ofaserve.export.cli import main

    out = tmp_path / "exp"
    shutil.copytree(tiny_export_dir, out)
    before = _tree_digest(out)
    # 1e-12 is below ONNX Runtime's float noise: a genuine parity failure at the ONNX step
    rc = main(["--model_name_or_path", str(tiny_compress_dir), "--output_dir", str(out), "--width_mult", "0.5",
               "--tolerance", "1e-12", "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "parity check failed" in err and "FAIL" in err
    assert _tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


# ----------------------------------------------------------------------------- bad inputs
def _broken_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _run_bad(args: list[str], capsys) -> str:
    from ofaserve.export.cli import main

    rc = main(args + ["--no_progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("case", ["missing_ckpt", "garbage_ckpt", "garbage_ckpt_no_sha", "untrained_width",
                                  "export_dir_as_input", "other_model_type", "no_manifest", "opset", "auto_no_rule"])
def test_bad_input_one_line_error(case, tiny_compress_dir, tiny_export_dir, tmp_path, capsys):
    src = tiny_compress_dir
    extra: list[str] = []
    width = "0.75"
    expect = ""
    if case in ("missing_ckpt", "garbage_ckpt", "garbage_ckpt_no_sha", "other_model_type", "no_manifest"):
        src = _broken_copy(tiny_compress_dir, tmp_path / "compress")
        ckpt = src / "supernet" / "model_state.pdparams"
        mpath = src / "manifest.json"
        m = json.loads(mpath.read_text())
        if case == "missing_ckpt":
            ckpt.unlink()
            expect = "missing"
        elif case == "garbage_ckpt":
            ckpt.write_bytes(b"\x00garbage" * 100)
            expect = "sha256"
        elif case == "garbage_ckpt_no_sha":
            ckpt.write_bytes(ckpt.read_bytes()[:200])
            m.pop("checkpoint_sha256")
            mpath.write_text(json.dumps(m))
            expect = "cannot read the supernet checkpoint"
        elif case == "other_model_type":
            m["model_type"] = "ernie"
            mpath.write_text(json.dumps(m))
            expect = "ernie"
        else:
            mpath.unlink()
            expect = "manifest.json is missing"
    elif case == "untrained_width":
        width, expect = "0.6", "was not trained"
    elif case == "export_dir_as_input":
        src, expect = tiny_export_dir, "expected 'compress'"
    elif case == "opset":
        extra, expect = ["--opset", "13"], "opset"
    elif case == "auto_no_rule":
        width, expect = "auto", "exactly one of"
    out = tmp_path / "out"
    err = _run_bad(["--model_name_or_path", str(src), "--output_dir", str(out), "--width_mult", width] + extra, capsys)
    assert expect in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_dir(where, tiny_compress_dir, tmp_path, capsys):
    if where == "under_a_file":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "out"
    else:
        out = Path("/proc/ofaserve_export_test/out")
    err = _run_bad(["--model_name_or_path", str(tiny_compress_dir), "--output_dir", str(out)], capsys)
    assert "output dir" in err
    assert not out.exists()


def test_other_content_in_output_dir_is_refused(tiny_compress_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    err = _run_bad(["--model_name_or_path", str(tiny_compress_dir), "--output_dir", str(out)], capsys)
    assert "other content" in err and (out / "precious.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- width selection
def _with_results(src_dir: Path, dst: Path, teacher: float, accs: dict[str, float]) -> Path:
    shutil.copytree(src_dir, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["results"]["teacher"]["dev"]["accuracy"] = teacher
    for w, a in accs.items():
        m["results"]["widths"][w]["dev"]["accuracy"] = a
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_auto_width_by_accuracy(tiny_compress_dir, tmp_path):
    from ofaserve.export.selection import select_by_metric_drop
    from ofaserve.export.source import load_compress_output

    src = load_compress_output(_with_results(tiny_compress_dir, tmp_path / "c", 0.80,
                                             {"1.0": 0.81, "0.75": 0.797, "0.5": 0.78}))
    sub, sel = select_by_metric_drop(src, 0.005, DropBound.POINT)  # the drop itself: tests/test_drop_bound.py
    assert sub == Subnet.of(0.75) and sel["chosen"] == "0.75"
    assert select_by_metric_drop(src, 0.03, DropBound.POINT)[0] == Subnet.of(0.5)
    src2 = load_compress_output(_with_results(tiny_compress_dir, tmp_path / "d", 0.90,
                                              {"1.0": 0.81, "0.75": 0.797, "0.5": 0.78}))
    with pytest.raises(OfaserveError, match="no trained subnet"):
        select_by_metric_drop(src2, 0.005, DropBound.POINT)


def test_choose_within_budget():
    from ofaserve.export.selection import choose_within_budget

    rows = [{"width": "1.0", "width_mult": 1.0, "dev_score": 0.81, "latency_ms": 120.0},
            {"width": "0.75", "width_mult": 0.75, "dev_score": 0.80, "latency_ms": 90.0},
            {"width": "0.5", "width_mult": 0.5, "dev_score": 0.80, "latency_ms": 60.0}]
    assert choose_within_budget(rows, 200)["width"] == "1.0"
    assert choose_within_budget(rows, 100)["width"] == "0.5"  # accuracy tie: the narrower width
    with pytest.raises(OfaserveError, match="no trained subnet meets"):
        choose_within_budget(rows, 50)


def test_auto_width_by_latency_end_to_end(tiny_compress_dir, tmp_path, capsys):
    from ofaserve.export import export_subnet

    m = export_subnet(str(tiny_compress_dir), str(tmp_path / "auto"), "auto", latency_budget_ms=10_000,
                      runtime="onnxruntime", batch_size=2, seq_len=16, progress=False, precisions=False).to_dict()
    sel = m["selection"]
    assert sel["mode"] == "latency_budget" and len(sel["table"]) == 3
    assert all(r["latency_ms"] > 0 and r["meets_budget"] for r in sel["table"])
    best = max(r["dev_score"] for r in sel["table"])
    assert m["width_mult"] == min(r["width_mult"] for r in sel["table"] if r["dev_score"] == best)
    assert sel["chosen"] == m["width"]
    assert "| width | dev accuracy |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "auto").iterdir()) == ["manifest.json", "onnx", "static",
                                                                     "sub_model", "tokenizer"]
    with pytest.raises(OfaserveError, match="no trained subnet meets"):
        export_subnet(str(tiny_compress_dir), str(tmp_path / "auto2"), "auto", latency_budget_ms=1e-6,
                      runtime="openvino", batch_size=2, seq_len=16, progress=False, precisions=False)
    assert not (tmp_path / "auto2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto"]


def test_help_explains_every_flag():
    r = subprocess.run([sys.executable, "-m", "ofaserve.export", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0
    for flag in ("--model_type", "--model_name_or_path", "--max_seq_length", "--sub_model_output_dir",
                 "--static_sub_model", "--n_gpu", "--width_mult", "--onnx_model", "--no_onnx_model", "--opset",
                 "--output_dir", "--max_metric_drop", "--latency_budget_ms", "--batch_size", "--seq_len",
                 "--runtime"):
        assert flag in r.stdout, flag


# ----------------------------------------------------------------------------- options
def test_cli_tutorial_flags_and_opset(tiny_compress_dir, tmp_path, capsys):
    import onnx

    from ofaserve.export.cli import main

    out = tmp_path / "out"
    rc = main(["--model_type", "bert", "--model_name_or_path", str(tiny_compress_dir), "--output_dir", str(out),
               "--width_mult", "0.5", "--opset", "15", "--max_seq_length", "48", "--n_gpu", "1",
               "--sub_model_output_dir", str(tmp_path / "sub"), "--static_sub_model", str(tmp_path / "st" / "float"),
               "--no_precisions", "--no_progress"])
    assert rc == 0, capsys.readouterr().err
    m = read_manifest(out, stage="export")
    assert m["width_mult"] == 0.5 and m["max_seq_length"] == 48 and m["sub_config"]["num_heads"] == [2, 2]
    assert onnx.load(str(out / "onnx" / "model.onnx")).opset_import[0].version == 15
    assert "onnx_fp16" not in m["artifacts"] and m["precisions"] == {}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["manifest.json", "model_config.json",
                                                                    "model_state.pdparams"]
    assert read_manifest(tmp_path / "sub", stage="export_sub_model")["export_dir"] == str(out.resolve())
    assert (tmp_path / "st" / "float.pdiparams").is_file()
    assert "exported width 0.5" in capsys.readouterr().out


def test_no_onnx_model(tiny_compress_dir, tmp_path):
    from ofaserve.export import export_subnet

    m = export_subnet(str(tiny_compress_dir), str(tmp_path / "out"), 1.0, onnx_model=False, progress=False).to_dict()
    assert "onnx" not in m["artifacts"] and not (tmp_path / "out" / "onnx").exists()
    assert set(m["parity"]["shapes"]["3x37"]["max_abs_diff"]) == {"sub_model", "paddle_static"}
    assert m["parity"]["dev_score"]["runtime"] == "paddle_static" and m["parity"]["ok"]


def test_unfusable_graph_ships_plain_onnx(tiny_compress_dir, tmp_path, monkeypatch):
    """If the attention rewrite does not recognise the graph, the plain paddle2onnx model ships."""
    from ofaserve.export import export_subnet, onnx_tools

    def refuse(proto, pad):
        raise OfaserveError("pattern not found (test)")

    monkeypatch.setattr(onnx_tools, "rewrite_attention", refuse)
    m = export_subnet(str(tiny_compress_dir), str(tmp_path / "out"), 0.75, progress=False, precisions=False).to_dict()
    assert m["onnx"]["rewrite"] == {"applied": False, "reason": "pattern not found (test)"}
    assert "onnx_ort_fused" not in m["artifacts"] and m["parity"]["ok"]


def test_int8_only_shipped_within_half_a_point(precision_inputs, monkeypatch):
    from ofaserve.export import precisions

    p = precision_inputs
    folder = p.folder
    monkeypatch.setattr(precisions, "INT8_MAX_DROP", -1.0)  # no INT8 model can meet this
    res, arts = precisions.precision_variants(folder, p.dev, p.tokenizer, p.spec, p.fp32_logits, p.fp32_accuracy,
                                              train=p.train)
    for name in ("openvino_int8", "openvino_packed_int8"):
        assert res[name]["shipped"] is False and name not in arts
        assert "accuracy drop" in res[name]["not_shipped_because"]
    assert not (folder / "openvino").exists() or not list((folder / "openvino").iterdir())
    assert arts["onnx_fp16"] == "onnx/model_fp16.onnx"


def test_int8_not_shipped_when_it_changes_too_many_predictions(precision_inputs, monkeypatch):
    from ofaserve.export import precisions

    p = precision_inputs
    folder = p.folder
    monkeypatch.setattr(precisions, "INT8_MAX_DROP", 1.0)  # accuracy gate always met ...
    monkeypatch.setattr(precisions, "INT8_MIN_AGREEMENT", 1.01)  # ... agreement gate never
    res, arts = precisions.precision_variants(folder, p.dev, p.tokenizer, p.spec, p.fp32_logits, p.fp32_accuracy,
                                              train=p.train)
    for name in ("openvino_int8", "openvino_packed_int8"):
        r = res[name]
        assert r["shipped"] is False and name not in arts
        assert "agrees with FP32" in r["not_shipped_because"] and "accuracy drop" not in r["not_shipped_because"]
    assert not (folder / "openvino").exists() or not list((folder / "openvino").iterdir())


def test_ctrl_c_inside_paddle_is_reported_as_an_interrupt(monkeypatch, tmp_path, capsys):
    """A SIGINT during paddle.jit.save can surface as a paddle RuntimeError that export
    wraps; with the signal flag set, the CLI says 'interrupted' and exits 130, not 2."""
    import ofaserve.core.interrupts as interrupts
    import ofaserve.export.cli as cli
    import ofaserve.export.exporter as exporter

    def fails(*args, **kwargs):
        raise OfaserveError("paddle.jit.save of the sub model failed: RuntimeError: (PreconditionNotMet)")
    monkeypatch.setattr(exporter, "export_subnet", fails)
    monkeypatch.setattr(interrupts, "terminate_like_interrupt", lambda: None)  # keep pytest's handlers
    argv = ["--model_name_or_path", str(tmp_path / "c"), "--output_dir", str(tmp_path / "e")]
    assert cli.main(argv) == 2 and "error: paddle.jit.save" in capsys.readouterr().err
    monkeypatch.setattr(interrupts, "_INTERRUPTED", [2])
    assert cli.main(argv) == 130 and "interrupted:" in capsys.readouterr().err


def test_the_cpu_pinning_record_times_every_configuration(tiny_export_dir, tmp_path):
    from benchmarks.records import cpu_pinning

    model = tiny_export_dir / read_manifest(tiny_export_dir, stage="export")["artifacts"]["onnx"]
    out = tmp_path / "pinning.json"
    assert cpu_pinning.main(["--model", str(model), "--output", str(out), "--procs", "1,2", "--threads", "1",
                             "--rounds", "1", "--calls", "2", "--batch", "2x8"]) == 0
    record = json.loads(out.read_text())
    assert [(r["processes"], r["cpu_pinning"], r["calls"]) for r in record["rows"]] == [
        (1, True, 2), (1, False, 2), (2, True, 4), (2, False, 4)]
    assert all(r["p50_ms"] > 0 and r["batches_per_s"] > 0 for r in record["rows"])
    assert "| 2 | 1 | off | 4 |" in (tmp_path / "pinning.md").read_text()

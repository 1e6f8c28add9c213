"""benchmarks.gpu_torch's pack step on the tiny exports: what travels to a GPU machine
reproduces each export's ONNX logits, and a narrower export travels as slices of the
wider one (the 64 MiB transfer limit). The run step needs CUDA and is not run here."""
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.records.gpu_torch import NumpyOps, bert_logits, load_pack_weights, markdown, pack
from tests.conftest import TINY_MAX_SEQ_LENGTH


@pytest.fixture(scope="module")
def full_export_dir(tiny_compress_dir, tmp_path_factory):
    """Width 1.0 of the same compress output, truncating as ``tiny_export_dir`` does."""
    from ofaserve.export import export_subnet

    out = tmp_path_factory.mktemp("export_full") / "w100"
    export_subnet(str(tiny_compress_dir), str(out), 1.0, max_seq_length=TINY_MAX_SEQ_LENGTH, progress=False)
    return out


def test_pack_reproduces_onnx_and_slices(full_export_dir, tiny_export_dir, tmp_path):
    out = tmp_path / "pack"
    m = pack([str(full_export_dir), str(tiny_export_dir)], str(out), batch_size=4, seq_len=8, big_batch=8, seed=0)
    assert json.loads((out / "manifest.json").read_text()) == m
    assert [e["name"] for e in m["models"]] == ["w1.0", "w0.75"]
    full, narrow = m["models"]
    assert not full["sliced"]
    # every tensor of the 0.75 subnet is a leading slice of the reordered full width
    assert "word_rows" in narrow["sliced"] and len(narrow["sliced"]) > 10
    weights = load_pack_weights(out, m)
    inputs = np.load(out / "inputs.npz")
    assert inputs["fixed_4"].shape == (4, 8) and inputs["fixed_8"].shape == (8, 8)
    assert np.isin(inputs["fixed_4"], full_weights_rows := np.flatnonzero(
        np.abs(weights["w1.0"][0]["bert.embeddings.word_embeddings.weight"]).sum(1))).all()
    assert full_weights_rows.size == m["used_vocab_rows"]
    assert weights["w0.75"][0]["bert.encoder.layers.0.linear1.weight"].shape[1] < \
        weights["w1.0"][0]["bert.encoder.layers.0.linear1.weight"].shape[1]
    for e in m["models"]:
        ref = np.load(out / e["reference"])
        state, cfg = weights[e["name"]]
        for i in range(m["n_real_batches"]):
            got = bert_logits(state, cfg, inputs[f"ids_{i}"], inputs[f"types_{i}"], NumpyOps)
            assert np.abs(got - ref[f"logits_{i}"]).max() < 1e-4, (e["name"], i)
    # w1.0 and w0.75 differ: the slices are not the whole model
    assert not np.allclose(np.load(out / full["reference"])["logits_0"], np.load(out / narrow["reference"])["logits_0"])


def test_pack_refuses_exports_of_different_compress_runs(tiny_export_dir, tmp_path):
    import shutil

    from ofaserve.core.errors import OfaserveError
    from ofaserve.core.manifests import read_manifest
    from ofaserve.core.files import write_json

    other = tmp_path / "other"
    shutil.copytree(tiny_export_dir, other)
    m = read_manifest(other)
    m["source"]["compress_dir"] = str(tmp_path / "elsewhere")
    write_json(other / "manifest.json", m)
    with pytest.raises(OfaserveError, match="one compress output"):
        pack([str(tiny_export_dir), str(other)], str(tmp_path / "pack"), 4, 8, 8, 0)
    assert not (tmp_path / "pack").exists()


RECORD = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "latency_gpu_h200_torch.json"


def _distinct_figures(record: dict, seed: int = 0) -> dict:
    """``record`` with every measured figure replaced by a different random value, so a
    figure rendered in the wrong row or column cannot match by coincidence."""
    rng = np.random.default_rng(seed)
    out = json.loads(json.dumps(record))
    for section in ("parity", "latency", "ratios_p50_full_over_compressed", "fp32_over_fp16_p50"):
        stack = [out[section]]
        while stack:
            d = stack.pop()
            for k, v in d.items():
                if isinstance(v, dict):
                    stack.append(v)
                elif isinstance(v, (int, float)):
                    d[k] = float(rng.uniform(0.1, 999))
    return out


def test_markdown_puts_every_figure_in_its_row():
    rec = _distinct_figures(json.loads(RECORD.read_text()))
    lines = markdown(rec).splitlines()
    names = list(rec["models"])

    def row(*cells: str) -> None:
        assert "| " + " | ".join(cells) + " |" in lines, cells

    assert "not TensorRT" in lines[0] and rec["environment"]["gpu"] in lines[0]
    for k, v in rec["parity"].items():
        row(k, f"{v['max_abs_logits_diff_vs_onnx']:.2e}", f"{v['predictions_agreeing']:.4f}",
            f"{v['dev_accuracy']:.4f}", f"{v['onnx_dev_accuracy']:.4f}")
    for w, lat in rec["latency"].items():
        for k, v in lat.items():
            if isinstance(v, dict):
                row(w, k, *(f"{v[p]:.3f}" for p in ("p50_ms", "p90_ms", "p99_ms")), f"{v['sentences_per_s']:.0f}")
    for w, v in rec["ratios_p50_full_over_compressed"].items():
        row(w, f"{v['fp32']:.2f}x", f"{v['fp16']:.2f}x")
    for w, v in rec["fp32_over_fp16_p50"].items():
        row(w, *(f"{v[m]:.2f}x" for m in names))


def test_recorded_gpu_markdown_is_the_rendering_of_its_json():
    """The committed .md holds exactly what its JSON renders to: no figure edited by hand."""
    assert markdown(json.loads(RECORD.read_text())) == RECORD.with_suffix(".md").read_text()


def test_pack_cli_missing_export_is_a_one_line_error(tmp_path, capsys):
    from benchmarks.records.gpu_torch import main

    assert main(["pack", "--export_dirs", str(tmp_path / "nope"), "--output", str(tmp_path / "pack")]) == 2
    err = capsys.readouterr().err.strip()
    assert "error:" in err and "nope" in err and "\n" not in err
    assert not (tmp_path / "pack").exists()


def test_pack_replaces_only_a_previous_pack(tiny_export_dir, tmp_path, capsys):
    """--output is checked before any work: a folder holding something else is refused
    (kept as it was) unless --overwrite; a previous pack is replaced."""
    from benchmarks.records.gpu_torch import main

    argv = ["pack", "--export_dirs", str(tiny_export_dir), "--batch_size", "4", "--seq_len", "8", "--big_batch", "8"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(argv + ["--output", str(mine)]) == 2
    assert "holds other content" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "pack"
    assert main(argv + ["--output", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["stage"] == "gpu_pack"
    assert main(argv + ["--output", str(out)]) == 0  # its own earlier pack
    assert json.loads((out / "manifest.json").read_text())["created"] >= first["created"]
    assert main(argv + ["--output", str(mine), "--overwrite"]) == 0
    assert not (mine / "notes.txt").exists() and (mine / "manifest.json").is_file()

"""Width x depth once-for-all: DynaBERT's layer rule and hidden-state mapping, training and
results over the grid, depth slicing with parity through every runtime, the grid selection,
names in repositories, and a width-only run left exactly as it was."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.vocabulary import DropBound
from ofaserve.core.subnet import Depth, Subnet, check_depths, grid, results_by_subnet, store_result, teacher_layers

from tests.conftest import TINY_DEPTH_LAYERS, TINY_MAX_SEQ_LENGTH


# ----------------------------------------------------------------------------- the rule
def _paper_rule(num_layers: int, depth: float) -> list[int]:
    """DynaBERT's paper: layer l is dropped when (l + 1) mod 1/(1 - depth) == 0."""
    every = round(1 / (1 - depth))
    return [layer for layer in range(num_layers) if (layer + 1) % every]


@pytest.mark.parametrize("layers", [4, 6, 12])
@pytest.mark.parametrize("depth", [0.5, 2 / 3, 0.75])
def test_depth_keeps_dynabert_s_layers(layers, depth):
    kept = Depth(depth).layers(layers)
    assert kept == _paper_rule(layers, depth)
    assert kept[0] == 0 and len(kept) == int(layers * depth + 0.5)


def test_depth_rule_examples_and_full_depth():
    assert Depth(0.5).layers(6) == [0, 2, 4]
    assert Depth(0.75).layers(6) == [0, 1, 2, 4, 5]  # DynaBERT's code (round half to even) keeps 4 of 6 here
    assert Depth(1.0).layers(6) == list(range(6))
    assert Depth(0.1).layers(2) == [0]  # never no layer


def test_teacher_layers_are_the_last_of_each_kept_block():
    assert teacher_layers([0, 2, 4], 6) == [1, 3, 5]
    assert teacher_layers([0, 1, 2, 4, 5], 6) == [0, 1, 3, 4, 5]
    assert teacher_layers(list(range(6)), 6) == list(range(6))


def test_distillation_pairs_map_kept_layers_and_are_the_identity_at_full_depth():
    from ofaserve.compress.train import distillation_pairs

    layer = "bert.encoder.layers.{}".format
    assert distillation_pairs(4, 0.5) == [("bert.embeddings", "bert.embeddings"), (layer(0), layer(1)),
                                          (layer(2), layer(3))]
    assert distillation_pairs(4) == [("bert.embeddings", "bert.embeddings")] + [(layer(i), layer(i))
                                                                               for i in range(4)]


def test_depths_must_differ_and_include_full_depth():
    assert [d.value for d in check_depths([0.5, 1.0, 0.75], 6)] == [1.0, 0.75, 0.5]
    with pytest.raises(OfaserveError, match="must include 1.0"):
        check_depths([0.5], 6)
    with pytest.raises(OfaserveError, match="both keep 5 of the 6 layers"):
        check_depths([1.0, 0.75, 0.8], 6)
    with pytest.raises(OfaserveError, match="a depth must be in"):
        Depth(1.5)


def test_subnet_keys_names_and_grid_order():
    sub = Subnet.of("0.6667", 0.5)
    assert (sub.key, sub.model_name("bert")) == ("0.6667_d0.5", "bert_w67_d50")
    assert (Subnet.of(2 / 3).key, Subnet.of(2 / 3).model_name("bert")) == ("0.6667", "bert_w67")  # as before depths
    assert sub.describe(6) == "width 0.6667, depth 0.5 (3 of 6 layers)"
    g = grid([0.5, 1.0], [0.5, 1.0])
    assert [s.key for s in g] == ["1.0", "0.5", "1.0_d0.5", "0.5_d0.5"]  # full first, smallest last
    assert [s.key for s in grid([1.0, 0.5])] == ["1.0", "0.5"]


def test_results_keep_full_depth_under_widths():
    results: dict = {}
    for s, v in ((Subnet.of(1.0), 1), (Subnet.of(0.5), 2), (Subnet.of(0.5, 0.5), 3)):
        store_result(results, s, {"v": v})
    assert results == {"widths": {"1.0": {"v": 1}, "0.5": {"v": 2}}, "depths": {"0.5": {"0.5": {"v": 3}}}}
    assert [(s.key, r["v"]) for s, r in results_by_subnet(results)] == [("1.0", 1), ("0.5", 2), ("0.5_d0.5", 3)]


# ----------------------------------------------------------------------------- supernet
def _tiny_model(layers: int = 4, seed: int = 0):
    import paddle

    from ofaserve.compress.bert import build_classifier, tiny_config

    paddle.seed(seed)
    cfg = tiny_config()
    cfg["num_hidden_layers"] = layers
    return build_classifier(cfg)


def test_width_only_supernet_is_built_as_before():
    """Depth 1.0 alone: no depth in PaddleSlim's search space or in any config."""
    from paddleslim.nas.ofa import utils as ofa_utils

    from ofaserve.compress.ofa import OfaSupernet

    sn = OfaSupernet(_tiny_model(), [1.0, 0.5])
    assert sn.ofa.run_config is None and "depth" not in sn.ofa.layers
    for w in (1.0, 0.5):
        assert sn.net_config(w) == ofa_utils.dynabert_config(sn.ofa, w)
        assert "depth" not in sn.net_config(w)
    deep = OfaSupernet(_tiny_model(), [1.0, 0.5], [1.0, 0.5])
    assert deep.net_config(0.5, 0.5)["depth"] == 0.5
    with pytest.raises(OfaserveError, match="depth 0.75 was not trained"):
        deep.set_subnet(1.0, 0.75)


def test_supernet_at_a_depth_equals_its_sliced_sub_model():
    """The sub model of (width, depth) computes what the supernet computes there: parity
    starts here, before any export runtime."""
    import paddle

    from ofaserve.compress.ofa import OfaSupernet
    from ofaserve.compress.submodel import build_sub_model

    sn = OfaSupernet(_tiny_model(seed=5), [1.0, 0.5], [1.0, 0.75, 0.5])
    sn.eval()
    rs = np.random.RandomState(0)
    ids = rs.randint(5, 128, (3, 11)).astype("int64")
    ids[2, 7:] = 0
    types = np.zeros_like(ids)
    outs = {}
    for sub in sn.subnets:
        cfg, state = sn.slice_subnet(sub.width.value, sub.depth.value)
        model = build_sub_model(cfg)
        model.set_state_dict(state)
        with paddle.no_grad():
            got = model(paddle.to_tensor(ids), paddle.to_tensor(types)).numpy()
        want = sn.logits_numpy(ids, types, sub.width.value, sub.depth.value)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert len(cfg["layers"]) == len(Depth(sub.depth.value).layers(TINY_DEPTH_LAYERS))
        assert cfg.get("kept_layers", list(range(TINY_DEPTH_LAYERS))) == Depth(sub.depth.value).layers(TINY_DEPTH_LAYERS)
        outs[sub.key] = want
    assert len({o.tobytes() for o in outs.values()}) == len(outs)  # every subnet its own function


# ----------------------------------------------------------------------------- compress
def test_compress_trains_and_reports_the_grid(tiny_depth_compress_dir):
    from ofaserve.core.manifests import CompressManifest

    m = json.loads((tiny_depth_compress_dir / "manifest.json").read_text())
    assert m["depth_mult_list"] == [1.0, 0.5] and m["width_mult_list"] == [1.0, 0.5]
    res = m["results"]
    assert set(res["widths"]) == {"1.0", "0.5"} and set(res["depths"]["0.5"]) == {"1.0", "0.5"}
    for sub, r in results_by_subnet(res):
        assert "vs_teacher" in r[res["report_split"]]
        assert r.get("layers", list(range(4))) == Depth(sub.depth.value).layers(4)
    history = m["phases"]["ofa"]["history"]
    assert set(history[-1]["dev"]) == {"1.0", "0.5", "1.0_d0.5", "0.5_d0.5"}
    table = CompressManifest.from_dict(m).results_table()
    assert "| width 0.5, depth 0.5 (2 of 4 layers) |" in table
    assert "| width 0.5 | " in table and "depth 0.5 (2 layers)" in table  # the width x depth grid


def test_compress_refuses_bad_depths_before_writing(tmp_path, tiny_checkpoint, capsys):
    from ofaserve.compress.cli import main

    ckpt, train, dev = tiny_checkpoint
    base = ["--model_name_or_path", str(ckpt), "--train_file", str(train), "--dev_file", str(dev), "--no_progress",
            "--width_mult_list", "1.0", "0.5"]  # widths that keep whole heads of the tiny model
    out = tmp_path / "a"
    assert main([*base, "--output_dir", str(out), "--depth_mult_list", "0.5"]) == 2
    assert "--depth_mult_list must contain 1.0" in capsys.readouterr().err and not out.exists()
    out = tmp_path / "b"  # the tiny checkpoint has 2 layers: 0.75 keeps both, as 1.0 does
    assert main([*base, "--output_dir", str(out), "--depth_mult_list", "1.0", "0.75"]) == 2
    err = capsys.readouterr().err
    assert "depths 1.0 and 0.75 both keep 2 of the 2 layers" in err and not out.exists()
    assert not Path(str(out) + ".partial").exists()


def test_width_only_compress_is_unchanged_by_the_depth_code(tmp_path, tiny_checkpoint, monkeypatch):
    """Depths that cut nothing change nothing: a width-only compress trains the same weights
    and results with the depth patches and mapping as with the width-only ones they replace
    (PaddleNLP's OFA encoder forward, no classifier patch, every layer against itself)."""
    from ofaserve.compress import paddleslim_compat as compat
    from ofaserve.compress import train
    from ofaserve.compress.pipeline import compress_model
    from ofaserve.testing import tiny_compress_options

    opts = tiny_compress_options(*tiny_checkpoint, tmp_path / "now")
    now = compress_model(opts)
    width_only = [p for p in compat.ALL if p.name != "classifier_forward"]
    width_only = [p if p.name != "encoder_forward" else dataclasses.replace(p, replacement=compat.nlp_ofa.encoder_ofa_forward)
                  for p in width_only]
    monkeypatch.setattr(compat, "ALL", width_only)
    monkeypatch.setattr(train, "distillation_pairs",
                        lambda n, depth=1.0: [("bert.embeddings",) * 2] + [(f"bert.encoder.layers.{i}",) * 2
                                                                            for i in range(n)])
    monkeypatch.setattr(train.HiddenStates, "clear", lambda self: None)
    before = compress_model(dataclasses.replace(opts, output_dir=str(tmp_path / "before")))
    assert now.results == before.results
    assert now.phases["ofa"]["history"] == before.phases["ofa"]["history"]
    assert "depths" not in now.results and now.depth_mult_list == [1.0]
    import paddle
    for ckpt in ("teacher", "supernet"):
        a = paddle.load(str(tmp_path / "now" / now.checkpoints[ckpt]))
        b = paddle.load(str(tmp_path / "before" / before.checkpoints[ckpt]))
        assert a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a), ckpt


# ----------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def depth_export_dir(tiny_depth_compress_dir, tmp_path_factory):
    from ofaserve.export import export_subnet

    out = tmp_path_factory.mktemp("export_depth") / "w050_d050"
    export_subnet(str(tiny_depth_compress_dir), str(out), 0.5, depth_mult=0.5, max_seq_length=TINY_MAX_SEQ_LENGTH,
                  progress=False, int8=False)
    return out


def test_depth_slicing_parity_through_every_runtime(depth_export_dir, tiny_depth_compress_dir):
    from ofaserve.compress.submodel import load_sub_model

    m = json.loads((depth_export_dir / "manifest.json").read_text())
    assert (m["subnet"], m["width_mult"], m["depth_mult"]) == ("0.5_d0.5", 0.5, 0.5)
    parity = m["parity"]
    assert parity["ok"] and parity["max_abs_diff"] <= 1e-4
    runtimes = set(parity["shapes"]["16x128"]["max_abs_diff"])
    assert {"sub_model", "paddle_static", "onnx", "openvino_f32", "onnx_packed", "openvino_packed"} <= runtimes
    assert m["sub_config"]["kept_layers"] == [0, 2] and m["sub_config"]["num_layers"] == 2
    assert m["sub_config"]["full_num_layers"] == TINY_DEPTH_LAYERS
    cm = json.loads((tiny_depth_compress_dir / "manifest.json").read_text())
    assert m["dev_score"]["value"] == cm["results"]["depths"]["0.5"]["0.5"]["dev"]["accuracy"]
    assert parity["dev_score"]["abs_diff"] <= parity["dev_score"]["tolerance"]
    cfg = json.loads((depth_export_dir / "sub_model" / "model_config.json").read_text())
    assert cfg["kept_layers"] == [0, 2] and cfg["base_config"]["num_hidden_layers"] == 2
    assert len(load_sub_model(depth_export_dir / "sub_model").bert.encoder.layers) == 2
    assert m["flops_b16_s128"] < 0.3 * m["flops_b16_s128_full_width"]  # half the width in half the layers


def test_export_refuses_an_untrained_depth_and_depth_with_auto(tiny_depth_compress_dir, tmp_path, capsys):
    from ofaserve.export.cli import main

    base = ["--model_name_or_path", str(tiny_depth_compress_dir), "--no_progress"]
    assert main([*base, "--output_dir", str(tmp_path / "a"), "--width_mult", "0.5", "--depth_mult", "0.75"]) == 2
    assert "depth 0.75 was not trained" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([*base, "--output_dir", str(tmp_path / "b"), "--width_mult", "auto", "--max_metric_drop", "0.1",
                 "--depth_mult", "0.5"]) == 2
    assert "chooses the depth too" in capsys.readouterr().err


def _with_dev_scores(compress_dir: Path, out: Path, teacher: float, scores: dict[str, float]) -> Path:
    import shutil

    shutil.copytree(compress_dir, out)
    m = json.loads((out / "manifest.json").read_text())
    m["results"]["teacher"]["dev"]["accuracy"] = teacher
    for sub, r in results_by_subnet(m["results"]):
        r["dev"]["accuracy"] = scores[sub.key]
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def test_grid_selection_by_metric_drop_picks_the_cheapest_subnet_within(tiny_depth_compress_dir, tmp_path):
    from ofaserve.export.selection import select_by_metric_drop
    from ofaserve.export.source import load_compress_output

    src = load_compress_output(_with_dev_scores(tiny_depth_compress_dir, tmp_path / "c", 0.80,
                                                {"1.0": 0.81, "0.5": 0.79, "1.0_d0.5": 0.798, "0.5_d0.5": 0.70}))
    # the drop itself (tests/test_drop_bound.py: the default holds its interval's upper end)
    point = DropBound.POINT
    assert select_by_metric_drop(src, 0.005, point)[0] == Subnet.of(1.0, 0.5)  # half the layers beats full width
    sub, sel = select_by_metric_drop(src, 0.011, point)  # 0.5 and 1.0_d0.5 cost the same: the better scoring
    assert sub == Subnet.of(1.0, 0.5) and sel["chosen"] == "1.0_d0.5"
    assert select_by_metric_drop(src, 0.2, point)[0] == Subnet.of(0.5, 0.5)
    rows = {r["subnet"]: r for r in sel["table"]}
    assert rows["0.5_d0.5"]["encoder_fraction"] == 0.25 and rows["1.0_d0.5"]["layers"] == [0, 2]


def test_grid_selection_by_latency_takes_the_best_score_within_budget():
    from ofaserve.export.selection import choose_within_budget, selection_table

    rows = [{"subnet": "1.0", "width": "1.0", "width_mult": 1.0, "dev_score": 0.81, "latency_ms": 100.0,
             "encoder_fraction": 1.0},
            {"subnet": "1.0_d0.5", "width": "1.0", "width_mult": 1.0, "depth_mult": 0.5, "dev_score": 0.80,
             "latency_ms": 52.0, "encoder_fraction": 0.5},
            {"subnet": "0.5", "width": "0.5", "width_mult": 0.5, "dev_score": 0.80, "latency_ms": 55.0,
             "encoder_fraction": 0.5},
            {"subnet": "0.5_d0.5", "width": "0.5", "width_mult": 0.5, "depth_mult": 0.5, "dev_score": 0.72,
             "latency_ms": 27.0, "encoder_fraction": 0.25}]
    assert choose_within_budget(rows, 200)["subnet"] == "1.0"
    assert choose_within_budget(rows, 60)["subnet"] == "0.5"  # same score and cost: the narrower
    assert choose_within_budget(rows, 30)["subnet"] == "0.5_d0.5"
    table = selection_table({"mode": "latency_budget", "runtime": "openvino", "batch_size": 16, "seq_len": 128,
                             "latency_budget_ms": 60, "metric": "accuracy",
                             "table": [{**r, "meets_budget": r["latency_ms"] <= 60} for r in rows]})
    assert "| width | depth |" in table and "| 0.5 | 0.5 | 0.7200 | 27.0 | yes |" in table


def test_export_auto_chooses_over_the_grid(tiny_depth_compress_dir, tmp_path):
    """Any drop allowed: the cheapest subnet of the grid, the smallest width at the smallest depth."""
    from ofaserve.export import export_subnet

    m = export_subnet(str(tiny_depth_compress_dir), str(tmp_path / "e"), "auto", max_metric_drop=1.0,
                      progress=False, precisions=False, parity_runtimes=["onnx"], fuse_attention=False)
    assert (m.subnet, m.selection["chosen"], m.sub_config["kept_layers"]) == ("0.5_d0.5", "0.5_d0.5", [0, 2])


# ----------------------------------------------------------------------------- repository
def test_repository_names_each_subnet_and_records_its_depth(depth_export_dir, tmp_path):
    import shutil

    from ofaserve.serve.repository import build_repository

    m = build_repository([depth_export_dir], tmp_path / "repo", precision="fp32")
    assert set(m.models) == {"bert_w50_d50"} and m.models["bert_w50_d50"].depth_mult == 0.5
    assert (tmp_path / "repo" / "bert_w50_d50_encoder" / "config.pbtxt").is_file()
    assert 'key: "depth_mult"' in (tmp_path / "repo" / "bert_w50_d50_encoder" / "config.pbtxt").read_text()
    twin = tmp_path / "twin"
    shutil.copytree(depth_export_dir, twin)
    with pytest.raises(OfaserveError, match="both export width 0.5, depth 0.5"):
        build_repository([depth_export_dir, twin], tmp_path / "repo2", precision="fp32")


def test_sandwich_over_the_grid_keeps_the_extremes():
    from ofaserve.compress.train import subnets_for_step

    g = grid([1.0, 0.75, 0.5], [1.0, 0.5])
    rng = np.random.default_rng(0)
    picks = [subnets_for_step(g, "sandwich", rng) for _ in range(30)]
    assert all(p[0] == Subnet.of(1.0) and p[1] == Subnet.of(0.5, 0.5) and p[2] in g[1:-1] for p in picks)
    assert len({p[2] for p in picks}) > 1 and subnets_for_step(g, "all", rng) == g

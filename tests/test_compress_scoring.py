"""compress.evaluation.Scorer: dev/test scored through Paddle Inference must equal dygraph
scoring, must not touch what is trained, and must fall back (and say so) when a static
model disagrees."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("paddle")


def _options(root, ckpt, train, dev, **kw):
    from ofaserve.compress.options import CompressOptions

    # 3 teacher epochs (per-epoch scoring mid fine-tune) and a save every 4 OFA steps (scoring
    # mid OFA): the scorer runs between training steps, where it could disturb them
    return CompressOptions(output_dir=str(root), model_name_or_path=str(ckpt), train_file=str(train),
                           dev_file=str(dev), width_mult_list=[1.0, 0.75, 0.5], max_seq_length=32, batch_size=16,
                           num_teacher_epochs=3, num_train_epochs=2, importance_samples=32, learning_rate=1e-3,
                           teacher_learning_rate=1e-3, save_steps=4, progress=False, logging_steps=0, **kw)


def test_static_scoring_equals_dygraph_and_trains_the_same_weights(tmp_path, tiny_checkpoint):
    import paddle

    from ofaserve.compress.evaluation import RUNTIME
    from ofaserve.compress.pipeline import compress_model

    static = compress_model(_options(tmp_path / "static", *tiny_checkpoint)).to_dict()
    dygraph = compress_model(_options(tmp_path / "dygraph", *tiny_checkpoint, eval_runtime="dygraph")).to_dict()
    rec = static["evaluation"]
    assert rec["runtime"] == RUNTIME and rec["dygraph_fallbacks"] == 0
    assert set(rec["models"]) == {"teacher", "1.0", "0.75", "0.5"}
    assert all(m["runtime"] == RUNTIME and m["probe_max_abs_diff"] <= rec["tolerance"] for m in rec["models"].values())
    assert rec["models"]["1.0"]["built"] >= 2  # one per OFA save: the weights changed in between
    assert dygraph["evaluation"]["runtime"] == "paddle dygraph"
    # same figures in the results table, the checkpoint history and the teacher's epoch pick
    assert static["results"] == dygraph["results"]
    assert static["phases"]["ofa"]["history"] == dygraph["phases"]["ofa"]["history"]
    assert static["phases"]["teacher"]["best_dev"] == dygraph["phases"]["teacher"]["best_dev"]
    for ckpt in ("teacher", "supernet"):  # scoring drew nothing from the random stream training uses
        a = paddle.load(str(tmp_path / "static" / static["checkpoints"][ckpt]))
        b = paddle.load(str(tmp_path / "dygraph" / dygraph["checkpoints"][ckpt]))
        assert a.keys() == b.keys()
        assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a), ckpt
    assert not (tmp_path / "static.partial").exists()  # the scratch static models went with the work folder


@pytest.fixture
def tiny_models(tiny_checkpoint):
    """(teacher, supernet over 1.0/0.75/0.5, tokenizer) from the tiny checkpoint."""
    from ofaserve.compress.bert import load_pretrained_classifier
    from ofaserve.compress.ofa import OfaSupernet
    from ofaserve.core.tokenizer import make_tokenizer

    ckpt = tiny_checkpoint[0]
    teacher, _ = load_pretrained_classifier(str(ckpt), 2)
    student, _ = load_pretrained_classifier(str(ckpt), 2)
    student.set_state_dict(teacher.state_dict())
    teacher.eval()
    return teacher, OfaSupernet(student, [1.0, 0.75, 0.5]), make_tokenizer(ckpt / "vocab.txt", max_seq_length=32)


def _batches(tokenizer, texts):
    from ofaserve.core.tokenizer import encode_batch

    return [encode_batch(tokenizer, texts[i:i + 5]) for i in range(0, len(texts), 5)]


TEXTS = ["a good film", "the worst plot ever and the jokes fall flat", "fine", "good good good bad",
         "a film about a film about nothing at all", "flat", "bad", "warm and generous", "so so", "good"]


def test_static_logits_match_the_supernet_at_each_width(tmp_path, tiny_models):
    from ofaserve.compress.evaluation import TOLERANCE, Scorer
    from ofaserve.compress.train import supernet_logits_fn

    teacher, supernet, tok = tiny_models
    batches = _batches(tok, TEXTS)
    scorer = Scorer(tmp_path / "scratch", batches[0])
    for w in supernet.widths:
        fn = scorer.width(supernet, w, version=0)
        for ids, types in batches:  # other lengths than the probe's
            ref = supernet_logits_fn(supernet, w)(ids, types)
            assert np.abs(fn(ids, types) - ref).max() <= TOLERANCE, w
    assert scorer.width(supernet, 0.5, version=0) is fn  # same weights: loaded once
    assert scorer.width(supernet, 0.5, version=1) is not fn  # new weights: written again
    assert scorer.record()["models"]["0.5"]["built"] == 2
    scorer.close()
    assert not (tmp_path / "scratch").exists()


def test_teacher_stays_a_dygraph_layer_after_scoring(tmp_path, tiny_models):
    """The OFA phase reads the teacher's hidden states through forward hooks: the scorer
    must make a static copy, not convert the teacher itself."""
    import paddle

    from ofaserve.compress.evaluation import Scorer

    teacher, _, tok = tiny_models
    ids, types = _batches(tok, TEXTS)[0]
    Scorer(tmp_path / "scratch", (ids, types)).teacher(teacher)(ids, types)
    seen = []
    handle = teacher.bert.encoder.layers[0].register_forward_post_hook(lambda layer, i, o: seen.append(1))
    with paddle.no_grad():
        teacher(paddle.to_tensor(ids), paddle.to_tensor(types))
    handle.remove()
    assert seen == [1]


def test_scoring_keeps_the_random_stream(tmp_path, tiny_models):
    import paddle

    from ofaserve.compress.evaluation import Scorer

    teacher, supernet, tok = tiny_models
    probe = _batches(tok, TEXTS)[0]
    paddle.seed(7)
    expected = paddle.rand([4]).numpy()
    paddle.seed(7)
    scorer = Scorer(tmp_path / "scratch", probe)
    scorer.teacher(teacher)  # builds a fresh classifier (random init) and a static model
    scorer.width(supernet, 0.75)  # OFA.export draws a random input
    assert np.array_equal(paddle.rand([4]).numpy(), expected)


def test_a_static_model_that_disagrees_is_scored_in_dygraph(tmp_path, tiny_models, monkeypatch, caplog):
    from ofaserve.compress import evaluation
    from ofaserve.compress.train import supernet_logits_fn

    _, supernet, tok = tiny_models
    ids, types = _batches(tok, TEXTS)[0]
    monkeypatch.setattr(evaluation, "TOLERANCE", -1.0)  # no difference can pass
    scorer = evaluation.Scorer(tmp_path / "scratch", (ids, types))
    fn = scorer.width(supernet, 0.75)
    np.testing.assert_array_equal(fn(ids, types), supernet_logits_fn(supernet, 0.75)(ids, types))
    rec = scorer.record()
    assert rec["dygraph_fallbacks"] == 1
    assert rec["models"]["0.75"]["runtime"] == "paddle dygraph" and "probe max abs diff" in rec["models"]["0.75"]["why"]
    assert "scoring 0.75 in dygraph" in caplog.text


def test_a_static_model_that_cannot_be_written_is_scored_in_dygraph(tmp_path, tiny_models, monkeypatch):
    from ofaserve.compress import evaluation

    teacher, _, tok = tiny_models
    probe = _batches(tok, TEXTS)[0]

    def broken(model, prefix):
        raise RuntimeError("disk full")

    monkeypatch.setattr(evaluation, "_save_static", broken)
    scorer = evaluation.Scorer(tmp_path / "scratch", probe)
    scorer.teacher(teacher)
    assert scorer.record()["models"]["teacher"] == {"runtime": "paddle dygraph", "why": "RuntimeError: disk full"}


def _iomp_max_threads() -> int | None:
    """omp_get_max_threads of the Intel OpenMP runtime paddle's MKL runs on, if loaded."""
    import ctypes
    import os

    with open(f"/proc/{os.getpid()}/maps") as f:
        libs = {line.split()[-1] for line in f if line.rstrip().endswith("libiomp5.so")}
    return ctypes.CDLL(libs.pop()).omp_get_max_threads() if libs else None


def test_scoring_leaves_training_its_threads(tmp_path, tiny_models):
    """A Paddle Inference run drops the process's OpenMP to one thread; dygraph training
    after it ran ~25% slower on 2 cores until the scorer put the count back."""
    import paddle

    from ofaserve.compress.evaluation import Scorer, _save_static
    from ofaserve.runtime.runtimes import default_threads, load_runner

    teacher, _, tok = tiny_models
    probe = _batches(tok, TEXTS)[0]
    if _iomp_max_threads() is None or default_threads() < 2:
        pytest.skip("paddle's libiomp5 is not loaded, or one usable core: nothing to lose")
    _save_static(teacher, tmp_path / "raw" / "model")
    load_runner("paddle", tmp_path / "raw" / "model", "fp32")(*probe)  # the runtime alone
    if _iomp_max_threads() == default_threads():
        pytest.skip("Paddle Inference no longer changes the thread count: the scorer's reset is moot")
    paddle.base.core.set_num_threads(default_threads())
    Scorer(tmp_path / "scratch", probe).teacher(teacher)(*probe)
    assert _iomp_max_threads() == default_threads()

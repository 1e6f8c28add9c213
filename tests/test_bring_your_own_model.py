"""--model_name_or_path takes the user's own BERT: a Hugging Face folder (pretrained, or a
fine-tuned BertForSequenceClassification whose head fits the task and is then the teacher
as it is), or a PaddleNLP save_pretrained folder; its own vocab and casing tokenize; what
does not fit is one clear error before anything is written."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.testing import (tiny_compress_options, write_tiny_hf_checkpoint, write_tiny_hf_classifier,
                              write_tiny_paddlenlp_model)


@pytest.fixture(scope="module")
def task_files(tiny_checkpoint):
    _, train, dev = tiny_checkpoint  # labels "fresh"/"rotten" (sorted: fresh = 0, rotten = 1)
    return train, dev


def _texts(path) -> list[str]:
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def _compress(model_dir, task_files, out, **changes):
    from ofaserve.compress.pipeline import compress_model

    return compress_model(dataclasses.replace(tiny_compress_options(model_dir, *task_files, out), **changes)).to_dict()


def test_read_pretrained_keeps_a_fine_tuned_head_apart(tmp_path, task_files):
    from ofaserve.compress.bert import read_pretrained

    folder = write_tiny_hf_classifier(tmp_path / "hf", _texts(task_files[0]), {0: "rotten", 1: "fresh"})
    src = read_pretrained(str(folder))
    assert src.format == "huggingface" and src.head is not None and src.head.labels == ("rotten", "fresh")
    assert src.head.weight.shape == (64, 2) and not any(k.startswith(("bert.", "classifier")) for k in src.encoder)
    from safetensors.numpy import load_file
    raw = load_file(str(folder / "model.safetensors"))
    assert np.array_equal(src.head.weight, raw["classifier.weight"].T)  # torch [out, in] -> paddle [in, out]


def test_a_fitting_fine_tuned_head_is_the_teacher_as_it_is(tmp_path, task_files):
    """Its labels name the task's classes in another order: the head is reordered by name and
    used without fine-tuning; the teacher's dev score is that of the model as given."""
    from ofaserve.compress.bert import head_for_task, read_pretrained
    from ofaserve.core.tasks import load_task

    folder = write_tiny_hf_classifier(tmp_path / "hf", _texts(task_files[0]), {0: "rotten", 1: "fresh"})
    m = _compress(folder, task_files, tmp_path / "c")
    teacher = m["phases"]["teacher"]
    assert teacher["steps"] == 0 and teacher["head"]["matched"] == "by name"
    assert teacher["head"]["model_order"] == ["rotten", "fresh"] and m["labels"] == ["fresh", "rotten"]
    spec = load_task(None, *map(str, task_files)).spec
    head, _ = head_for_task(read_pretrained(str(folder)), spec)
    raw = read_pretrained(str(folder)).head
    assert np.array_equal(head.weight, raw.weight[:, [1, 0]]) and np.array_equal(head.bias, raw.bias[[1, 0]])
    assert teacher["dev_as_given"]["accuracy"] == m["results"]["teacher"]["dev"]["accuracy"]


def test_a_head_that_does_not_fit_is_one_error_unless_a_new_one_is_asked(tmp_path, task_files):
    three = write_tiny_hf_classifier(tmp_path / "three", _texts(task_files[0]), {0: "a", 1: "b", 2: "c"})
    with pytest.raises(OfaserveError, match=r"3 output\(s\) \['a', 'b', 'c'\]; the task has 2 classes .*--new_head"):
        _compress(three, task_files, tmp_path / "c1")
    assert not (tmp_path / "c1").exists() and not (tmp_path / "c1.partial").exists()
    other = write_tiny_hf_classifier(tmp_path / "other", _texts(task_files[0]), {0: "neg", 1: "pos"})
    with pytest.raises(OfaserveError, match=r"the task's classes are \['fresh', 'rotten'\]"):
        _compress(other, task_files, tmp_path / "c2")
    m = _compress(three, task_files, tmp_path / "c3", new_head=True)
    assert m["phases"]["teacher"]["steps"] > 0 and m["model_config"]["num_labels"] == 2


def test_a_paddlenlp_folder_compresses(tmp_path, task_files):
    """PaddleNLP's own save_pretrained of a BertModel: the encoder is read, a head fine-tuned."""
    folder = write_tiny_paddlenlp_model(tmp_path / "pd", _texts(task_files[0]))
    assert (folder / "model_state.pdparams").is_file() and (folder / "config.json").is_file()
    m = _compress(folder, task_files, tmp_path / "c")
    assert m["source"]["model_format"] == "paddlenlp" and m["phases"]["teacher"]["steps"] > 0


def test_a_fine_tuned_paddlenlp_classifier_with_generic_labels_is_kept_by_position(tmp_path, task_files):
    from ofaserve.compress.bert import read_pretrained

    folder = write_tiny_paddlenlp_model(tmp_path / "pd", _texts(task_files[0]), num_labels=2)
    src = read_pretrained(str(folder))
    assert src.head is not None and src.head.labels == ("LABEL_0", "LABEL_1") and not src.head.named
    m = _compress(folder, task_files, tmp_path / "c")
    assert m["phases"]["teacher"]["steps"] == 0 and m["phases"]["teacher"]["head"]["matched"].startswith("by position")


def test_the_models_own_casing_tokenizes(tmp_path, task_files):
    folder = write_tiny_hf_classifier(tmp_path / "cased", _texts(task_files[0]), lowercase=False)
    from ofaserve.compress.bert import read_pretrained
    assert read_pretrained(str(folder)).lowercase is False
    m = _compress(folder, task_files, tmp_path / "c", new_head=True)
    assert m["do_lower_case"] is False
    from ofaserve.core.tokenizer import load_tokenizer
    tok = load_tokenizer(tmp_path / "c" / m["tokenizer"]["tokenizer_json"], 32)
    assert tok.encode("The").tokens != tok.encode("the").tokens  # not lowercased


@pytest.mark.parametrize("case,message", [
    ("roberta", "holds a 'roberta' model"),
    ("no_vocab", "holds no vocab.txt"),
    ("torch_only", "pytorch_model.bin needs torch"),
    ("regression_head", "the task has 2 classes"),
])
def test_what_is_not_a_usable_bert_is_one_error(tmp_path, task_files, case, message):
    folder = write_tiny_hf_checkpoint(tmp_path / case, _texts(task_files[0]))
    if case == "roberta":
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    elif case == "no_vocab":
        (folder / "vocab.txt").unlink()
    elif case == "torch_only":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    else:
        folder = write_tiny_hf_classifier(tmp_path / "reg", _texts(task_files[0]), {0: "score"},
                                          problem_type="regression")
    with pytest.raises(OfaserveError, match=message):
        _compress(folder, task_files, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_tutorials_qqp_command_line_runs(tmp_path):
    """The tutorial's QQP command as typed (a fine-tuned classifier, GLUE's files, its flags),
    through the CLI: the classifier is the teacher as it is, OFA trains with the given
    recipe and every width is scored with QQP's metrics. Tiny model, tiny files."""
    from ofaserve.compress import cli as compress_cli
    from ofaserve.core.manifests import CompressManifest
    from ofaserve.core.tasks import load_task
    from ofaserve.testing import write_glue_task

    data = write_glue_task(tmp_path / "QQP", "qqp", n_train=64, n_dev=32)
    train = load_task("qqp", data_dir=str(data)).split("train")
    # 6 heads of 8: the tutorial's widths keep whole heads (5, 4 and 3 of them)
    model = write_tiny_hf_classifier(tmp_path / "finetuned", train.texts + train.text_pairs, hidden=48, heads=6)
    widths = ["1.0", "0.8333333333333334", "0.6666666666666666", "0.5"]
    code = compress_cli.main(["--task_name", "QQP", "--data_dir", str(data), "--model_name_or_path", str(model),
                              "--max_seq_length", "128", "--batch_size", "32", "--learning_rate", "2e-5",
                              "--num_train_epochs", "6", "--width_mult_list", *widths,
                              "--output_dir", str(tmp_path / "out"), "--importance_samples", "32", "--no_progress"])
    assert code == 0
    m = CompressManifest.read(tmp_path / "out")
    assert m.spec.name == "qqp" and m.spec.metrics[:2] == ("accuracy", "f1")
    assert m.phases["teacher"]["steps"] == 0 and m.phases["teacher"]["head"]["matched"].startswith("by position")
    assert m.options["learning_rate"] == 2e-5 and m.options["num_train_epochs"] == 6
    assert m.options["batch_size"] == 32 and m.max_seq_length == 128
    assert m.phases["ofa"]["train"]["steps"] == 6 * 2  # 64 pairs, batch 32, 6 epochs
    assert sorted(m.dev_scores()["widths"]) == sorted(float(w) for w in widths)


def test_widths_that_split_an_attention_head_are_one_error(tmp_path, task_files):
    """4 heads of 16: width 0.8333 would keep 53 of 64 attention dims, 3.3 heads."""
    with pytest.raises(OfaserveError, match=r"width\(s\) 0.8333 keep part of an attention head .*4 heads of 16.*"
                                            r"e\.g\. 1 0\.75 0\.5 0\.25"):
        _compress(tiny_hf := write_tiny_hf_checkpoint(tmp_path / "hf", _texts(task_files[0])), task_files,
                  tmp_path / "c", width_mult_list=[1.0, 0.8333333333333334, 0.5])
    assert tiny_hf.is_dir() and not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_widths_typed_rounded_train_as_exact_fractions_of_the_heads(tmp_path, task_files):
    """0.6667 as a user types it, on a 6-head model: trained as 4/6. PaddleNLP's OFA attention
    restores its head count as int(4 / 0.6667) = 5, so without the exact fraction the next
    width (0.5) splits its projection into 2 heads of 12 and the OFA phase fails."""
    from ofaserve.compress.submodel import fit_widths

    config = {"hidden_size": 48, "num_attention_heads": 6}
    assert fit_widths([1.0, 0.6667, 0.5], config) == [1.0, 4 / 6, 0.5]
    with pytest.raises(OfaserveError, match=r"width\(s\) 0.7 keep part of an attention head"):
        fit_widths([1.0, 0.7], config)
    model = write_tiny_hf_checkpoint(tmp_path / "hf", _texts(task_files[0]), hidden=48, heads=6)
    m = _compress(model, task_files, tmp_path / "c", width_mult_list=[1.0, 0.6667, 0.5])
    assert m["width_mult_list"] == [1.0, 4 / 6, 0.5]
    assert set(m["results"]["widths"]) == {"1.0", "0.6667", "0.5"}

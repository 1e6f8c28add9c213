"""Tiny random-weight BERT checkpoints and data for fast tests.

Written in the same Hugging Face layout as the real pretrained package, so tests run
the real conversion, compress and export code paths on a model that trains in seconds.
Never used by the product itself.
"""
from __future__ import annotations

import collections
import csv
import json
import re
from pathlib import Path

import numpy as np

from ofaserve.compress.options import CompressOptions
from ofaserve.compress.pipeline import compress_model
from ofaserve.core.tasks import load_rt_polarity

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_vocab(path: Path, texts: list[str], size: int = 128) -> list[str]:
    """Special tokens + the most frequent lowercase words of ``texts``."""
    counts = collections.Counter(w for t in texts for w in re.findall(r"[a-z]+|[^\sa-z]", t.lower()))
    words = [w for w, _ in counts.most_common(size - len(SPECIAL))]
    vocab = SPECIAL + words
    path.write_text("\n".join(vocab) + "\n")
    return vocab


def write_tiny_hf_checkpoint(folder: str | Path, texts: list[str], *, hidden: int = 64, layers: int = 2,
                             heads: int = 4, ffn: int = 128, vocab_size: int = 128, positions: int = 128,
                             seed: int = 0) -> Path:
    """model.safetensors + config.json + vocab.txt of a random BERT, HF tensor names.

    ``positions`` defaults to 128, the serving max_seq_length: sentences that long, and
    the packed encoder's 128-wide rows, then run against a real graph in the tests."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_vocab(folder / "vocab.txt", texts, vocab_size)
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": w(len(vocab), hidden),
        "embeddings.position_embeddings.weight": w(positions, hidden),
        "embeddings.token_type_embeddings.weight": w(2, hidden),
        "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32),
        "embeddings.position_ids": np.arange(positions, dtype=np.int64)[None],
        "pooler.dense.weight": w(hidden, hidden), "pooler.dense.bias": w(hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[p + name + ".weight"] = w(hidden, hidden)   # torch layout [out, in]
            t[p + name + ".bias"] = w(hidden)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = w(ffn, hidden), w(ffn)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = w(hidden, ffn), w(hidden)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"] = (1 + w(hidden)).astype(np.float32)
            t[p + ln + ".bias"] = w(hidden)
    save_file(t, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dict(
        model_type="bert", vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=positions, type_vocab_size=2,
        layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0), indent=1))
    return folder


def write_tiny_hf_classifier(folder: str | Path, texts: list[str], id2label: dict[int, str] | None = None,
                             problem_type: str | None = None, lowercase: bool = True, seed: int = 1,
                             **shape: int) -> Path:
    """A Hugging Face ``BertForSequenceClassification`` folder as ``save_pretrained`` writes
    it (``bert.``-prefixed tensors, ``classifier.*`` [outputs, hidden], config.json with
    architectures, id2label/label2id, problem_type; tokenizer_config.json), random weights;
    ``shape``: ``write_tiny_hf_checkpoint``'s sizes (hidden, heads, ...)."""
    from safetensors.numpy import load_file, save_file

    folder = write_tiny_hf_checkpoint(folder, texts, seed=seed, **shape)
    id2label = id2label or {0: "LABEL_0", 1: "LABEL_1"}
    tensors = {f"bert.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    rng = np.random.default_rng(seed + 100)
    hidden = tensors["bert.pooler.dense.bias"].shape[0]
    tensors["classifier.weight"] = (rng.standard_normal((len(id2label), hidden)) * 0.5).astype(np.float32)
    tensors["classifier.bias"] = (rng.standard_normal(len(id2label)) * 0.1).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(architectures=["BertForSequenceClassification"], id2label={str(k): v for k, v in id2label.items()},
               label2id={v: k for k, v in id2label.items()},
               **({"problem_type": problem_type} if problem_type else {}))
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
    return folder


def write_tiny_paddlenlp_model(folder: str | Path, texts: list[str], num_labels: int | None = None,
                               seed: int = 2) -> Path:
    """A PaddleNLP ``save_pretrained`` folder written by PaddleNLP itself (model_state.pdparams
    + config.json) for a tiny random ``BertModel``, or with ``num_labels`` a
    ``BertForSequenceClassification``; plus vocab.txt and tokenizer_config.json."""
    import paddle
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification, BertModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_vocab(folder / "vocab.txt", texts)
    paddle.seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, type_vocab_size=2,
                        **({"num_labels": num_labels} if num_labels else {}))
    model = BertForSequenceClassification(config) if num_labels else BertModel(config)
    model.save_pretrained(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return folder


def write_csv(path: Path, texts: list[str], labels: list, pairs: list[str] | None = None) -> Path:
    """A user-style CSV (TSV for a .tsv path): text[, text_pair], label."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        if pairs is None:
            wr.writerow(["text", "label"])
            wr.writerows(zip(texts, labels))
        else:
            wr.writerow(["text", "text_pair", "label"])
            wr.writerows(zip(texts, pairs, labels))
    return path


def _pairs_of(texts: list[str], labels: np.ndarray, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """Each sentence with a shuffled partner: (first, second, whether their sentiment agrees)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    return list(texts), [texts[i] for i in order], (np.asarray(labels) == np.asarray(labels)[order]).astype(int)


def tiny_pair_task_files(folder: str | Path, n_train: int = 96, n_dev: int = 48,
                         regression: bool = False) -> tuple[Path, Path, list[str]]:
    """Real Rotten Tomatoes sentences paired up, as user-style CSV files with a text_pair
    column: label "same"/"different" sentiment, or (``regression``) a 0-5 score of how
    positive the pair is."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_rt_polarity()
    out = []
    for name, split, n, seed in (("train", data.split("train"), n_train, 0), ("dev", data.split("dev"), n_dev, 1)):
        a, b, agree = _pairs_of(split.texts[:n], split.labels[:n], seed)
        if regression:
            labels = [f"{2.5 * (x + y):.2f}" for x, y in zip(split.labels[:n], split.labels[:n][
                np.random.default_rng(seed).permutation(n)])]
        else:
            labels = ["same" if s else "different" for s in agree]
        out.append(write_csv(folder / f"{name}.csv", a, labels, b))
    return out[0], out[1], data.split("train").texts[:n_train] + data.split("train").texts[:n_train][::-1]


# GLUE's own layouts (as its download script writes them): header line, and the columns
# before, between and after the sentence(s) and the label, with GLUE's quirks (quotes that
# are text, MNLI's extra parse and annotator columns, CoLA without a header).
def write_glue_task(folder: str | Path, task: str, n_train: int = 64, n_dev: int = 32) -> Path:
    """GLUE-layout train/dev TSV files for ``task`` in ``folder`` (real Rotten Tomatoes
    sentences standing in for GLUE's), for tests of the GLUE readers."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_rt_polarity()
    dev_files = {"mnli": ["dev_matched.tsv", "dev_mismatched.tsv"]}.get(task, ["dev.tsv"])
    for fname, split, n, seed in [("train.tsv", data.split("train"), n_train, 0)] + [
            (f, data.split("dev"), n_dev, 1 + i) for i, f in enumerate(dev_files)]:
        texts = [" ".join(t.split()) + (' "quoted' if i % 7 == 0 else "") for i, t in enumerate(split.texts[:n])]
        a, b, agree = _pairs_of(texts, split.labels[:n], seed)
        y = np.asarray(split.labels[:n])
        lines = _glue_lines(task, a, b, agree, y, dev=fname != "train.tsv")
        (folder / fname).write_text("\n".join("\t".join(map(str, row)) for row in lines) + "\n", encoding="utf-8")
    return folder


def _glue_lines(task: str, a: list[str], b: list[str], agree: np.ndarray, y: np.ndarray, dev: bool) -> list[list]:
    nli = {"mnli": ["contradiction", "entailment", "neutral"], "qnli": ["entailment", "not_entailment"],
           "rte": ["entailment", "not_entailment"]}
    if task == "cola":
        return [["gj04", label, "" if label else "*", s] for s, label in zip(a, y)]
    if task == "sst-2":
        return [["sentence", "label"]] + [[s, label] for s, label in zip(a, y)]
    if task == "mrpc":
        return [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]] + [
            [label, 1000 + i, 2000 + i, s, t] for i, (s, t, label) in enumerate(zip(a, b, agree))]
    if task == "sts-b":
        head = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                "score"]
        return [head] + [[i, "main-captions", "MSRvid", "2012test", i, "none", "none", s, t,
                          f"{2.5 * (x + z):.3f}"] for i, (s, t, x, z) in enumerate(zip(a, b, y, agree))]
    if task == "qqp":
        return [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]] + [
            [i, 2 * i, 2 * i + 1, s, t, label] for i, (s, t, label) in enumerate(zip(a, b, agree))]
    if task == "mnli":
        head = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
        head += ["label1", "label2", "label3", "label4", "label5", "gold_label"] if dev else ["label1", "gold_label"]
        labels = [nli["mnli"][(x + z) % 3] for x, z in zip(y, agree)]
        extra = 5 if dev else 1
        return [head] + [[i, i, f"{i}n", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s, t,
                          *([label] * extra), label] for i, (s, t, label) in enumerate(zip(a, b, labels))]
    if task in ("qnli", "rte"):
        cols = ["question", "sentence"] if task == "qnli" else ["sentence1", "sentence2"]
        return [["index", *cols, "label"]] + [[i, s, t, nli[task][int(1 - g)]]
                                            for i, (s, t, g) in enumerate(zip(a, b, agree))]
    raise ValueError(f"no GLUE layout for {task!r}")


def tiny_task_files(folder: str | Path, n_train: int = 96, n_dev: int = 48) -> tuple[Path, Path, list[str]]:
    """Real Rotten Tomatoes sentences, few of them, as user-style CSV files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_rt_polarity()
    train_split, dev_split = data.split("train"), data.split("dev")
    (tr, ytr), (dv, ydv) = (train_split.texts, train_split.labels), (dev_split.texts, dev_split.labels)
    names = data.labels
    train = write_csv(folder / "train.csv", tr[:n_train], [names[i] for i in ytr[:n_train]])
    dev = write_csv(folder / "dev.csv", dv[:n_dev], [names[i] for i in ydv[:n_dev]])
    return train, dev, tr[:n_train]


TINY_WIDTHS = [1.0, 0.75, 0.5]


def tiny_compress_options(checkpoint: str | Path, train: str | Path, dev: str | Path, output_dir: str | Path):
    """Compress settings that train the tiny model in seconds (widths ``TINY_WIDTHS``)."""
    return CompressOptions(
        output_dir=str(output_dir), model_name_or_path=str(checkpoint), train_file=str(train), dev_file=str(dev),
        width_mult_list=TINY_WIDTHS, max_seq_length=32, batch_size=16, num_teacher_epochs=1,
        num_train_epochs=1, importance_samples=32, learning_rate=1e-3, teacher_learning_rate=1e-3,
        progress=False, logging_steps=0)


def tiny_compress(folder: str | Path) -> Path:
    """The real `compress_model` on a tiny checkpoint and tiny task files in ``folder``."""
    folder = Path(folder)
    train, dev, texts = tiny_task_files(folder / "data")
    ckpt = write_tiny_hf_checkpoint(folder / "hf", texts)
    compress_model(tiny_compress_options(ckpt, train, dev, folder / "compress"))
    return folder / "compress"


def main(argv: list[str] | None = None) -> int:
    """``python -m ofaserve.testing tiny-compress FOLDER``: a tiny compress output for
    harnesses that must run the stages as separate processes (ofaserve.benchmarks.reliability)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ofaserve.testing", description=main.__doc__)
    p.add_argument("command", choices=["tiny-compress"], help="what to make")
    p.add_argument("folder", help="work folder; the compress output goes to FOLDER/compress")
    args = p.parse_args(argv)
    print(tiny_compress(args.folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

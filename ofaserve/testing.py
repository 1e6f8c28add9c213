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


def write_csv(path: Path, texts: list[str], labels: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["text", "label"])
        wr.writerows(zip(texts, labels))
    return path


def tiny_task_files(folder: str | Path, n_train: int = 96, n_dev: int = 48) -> tuple[Path, Path, list[str]]:
    """Real Rotten Tomatoes sentences, few of them, as user-style CSV files."""
    from ofaserve.core.tasks import load_rt_polarity

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
    from ofaserve.compress.options import CompressOptions

    return CompressOptions(
        output_dir=str(output_dir), model_name_or_path=str(checkpoint), train_file=str(train), dev_file=str(dev),
        width_mult_list=TINY_WIDTHS, max_seq_length=32, batch_size=16, num_teacher_epochs=1,
        num_train_epochs=1, importance_samples=32, learning_rate=1e-3, teacher_learning_rate=1e-3,
        progress=False, logging_steps=0)


def tiny_compress(folder: str | Path) -> Path:
    """The real `compress_model` on a tiny checkpoint and tiny task files in ``folder``."""
    from ofaserve.compress.pipeline import compress_model

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

"""The converted MiniLM-L6 encoder equals an independent numpy BERT forward of the same
safetensors on real sentences: a wrong name mapping or a missing transpose cannot pass."""
import numpy as np
import pytest

from ofaserve.compress.bert import convert_hf_to_paddle, load_pretrained_classifier, load_safetensors, pretrained_dir
from ofaserve.core.tasks import load_rt_polarity
from ofaserve.core.tokenizer import encode_batch, make_tokenizer


def _gelu(x):
    from math import sqrt
    from scipy.special import erf
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)))


def _layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def numpy_bert(t, ids, types, n_layers=6, n_heads=12):
    """BERT encoder written from the paper/HF layout (torch Linear: y = x W^T + b)."""
    x = (t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])]
         + t["embeddings.token_type_embeddings.weight"][types])
    x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"]).astype(np.float64)
    mask = np.where(ids == 0, -1e4, 0.0)[:, None, None, :]
    B, S, H = x.shape
    d = H // n_heads

    def lin(x, name):
        return x @ t[name + ".weight"].T.astype(np.float64) + t[name + ".bias"]

    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").reshape(B, S, n_heads, d).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + mask
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(B, S, H)
        x = _layer_norm(x + lin(ctx, p + "attention.output.dense"), t[p + "attention.output.LayerNorm.weight"],
                        t[p + "attention.output.LayerNorm.bias"])
        h = lin(_gelu(lin(x, p + "intermediate.dense")), p + "output.dense")
        x = _layer_norm(x + h, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])
    return x


@pytest.mark.slow
def test_converted_encoder_matches_numpy_forward():
    import paddle

    texts = load_rt_polarity().split("dev").texts[:4]
    tok = make_tokenizer(pretrained_dir() / "vocab.txt", max_seq_length=64)
    ids, types = encode_batch(tok, texts)
    assert (ids == 0).any(), "want real padding in the batch"
    model, _ = load_pretrained_classifier("minilm-l6", num_labels=2)
    model.eval()
    with paddle.no_grad():
        hidden = model.bert(paddle.to_tensor(ids), paddle.to_tensor(types))[0].numpy()
    ref = numpy_bert(load_safetensors(pretrained_dir()), ids, types)
    valid = ids != 0
    diff = np.abs(hidden - ref)[valid].max()
    assert diff <= 1e-4, diff


def test_conversion_renames_and_transposes():
    t = {"encoder.layer.0.attention.self.query.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
         "encoder.layer.0.output.LayerNorm.bias": np.zeros(3, np.float32),
         "embeddings.position_ids": np.arange(3)}
    out = convert_hf_to_paddle(t)
    assert set(out) == {"encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.norm2.bias"}
    np.testing.assert_array_equal(out["encoder.layers.0.self_attn.q_proj.weight"], t[
        "encoder.layer.0.attention.self.query.weight"].T)

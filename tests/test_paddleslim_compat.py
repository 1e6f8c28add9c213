"""One test per compatibility patch. When upstream fixes a bug, the "unpatched fails"
half of its test starts failing: that is the signal to delete the patch and its test."""
import importlib

import numpy as np
import paddle
import pytest

from ofaserve.compress import paddleslim_compat as compat
from ofaserve.compress.bert import build_classifier, tiny_config
from ofaserve.compress.ofa import OfaSupernet
from paddleslim.nas.ofa import layers as ofa_layers

PADDLE3 = int(paddle.__version__.split(".")[0]) >= 3


def _by_name(name):
    return [p for p in compat.ALL if p.name == name]


def _inputs(seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(5, 128, (3, 9)).astype("int64")
    ids[1, 6:] = 0  # real padding
    return ids, np.zeros_like(ids)


def _plain_logits(model, ids, types):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(ids), paddle.to_tensor(types)).numpy()


def test_super_embedding_init():
    with compat.patched(_by_name("super_embedding_init")):
        emb = ofa_layers.SuperEmbedding(10, 4, candidate_config={"expand_ratio": [0.5, 1.0]})
    assert list(emb.weight.shape) == [10, 4] and emb.base_output_dim == 4
    if PADDLE3:
        with pytest.raises(TypeError):
            ofa_layers.SuperEmbedding(10, 4)


def test_super_layernorm_init_and_forward():
    x = paddle.randn([2, 3, 8])
    with compat.patched(_by_name("super_layernorm_init") + _by_name("super_layernorm_forward")):
        ln = ofa_layers.SuperLayerNorm(8, epsilon=1e-12)
        out = ln(x)
        out_narrow = ln(x[:, :, :6])  # a narrower feature dim uses the first 6 weights
    ref = paddle.nn.functional.layer_norm(x, [8], ln.weight, ln.bias, 1e-12)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-6)
    assert out_narrow.shape == [2, 3, 6]
    if PADDLE3:
        with pytest.raises(TypeError):
            ofa_layers.SuperLayerNorm(8, 1e-12)
    with compat.patched(_by_name("super_layernorm_init")):
        ln2 = ofa_layers.SuperLayerNorm(8)
    with pytest.raises(Exception):  # upstream forward unpacks _C_ops.layer_norm's old return
        ln2(x)


def _paddleslim_unscaled_mha():
    """paddleslim's own attention forward, imported without letting its import-time
    global monkey patches leak (DESIGN 2.10)."""
    owners = [paddle.nn.MultiHeadAttention, paddle.nn.TransformerEncoder, paddle.nn.TransformerEncoderLayer]
    saved = [(o, k, o.__dict__[k]) for o in owners for k in ("forward", "_prepare_qkv") if k in o.__dict__]
    try:
        nlp_utils = importlib.import_module("paddleslim.nas.ofa.utils.nlp_utils")
        return nlp_utils._mha_forward
    finally:
        for o, k, v in saved:
            setattr(o, k, v)


def test_mha_forward_keeps_attention_scale():
    """The real bug: paddleslim's attention drops 1/sqrt(head_dim). With our patch the
    full-width supernet is exactly the plain model; with paddleslim's it is not."""
    paddle.seed(1)
    model = build_classifier(tiny_config())
    for layer in model.bert.encoder.layers:  # peaked attention, as in a trained model
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            proj.weight.set_value(paddle.randn(proj.weight.shape) * 0.5)
    ids, types = _inputs()
    model.eval()
    with paddle.no_grad():
        ref = model.bert(paddle.to_tensor(ids), paddle.to_tensor(types))[0].numpy()
    sn = OfaSupernet(model, [1.0, 0.5])
    sn.set_width(1.0)
    sn.eval()

    def hidden(patches):
        with compat.patched(patches), paddle.no_grad():
            return sn.model.bert(paddle.to_tensor(ids), paddle.to_tensor(types), attention_mask=[None, None])[0].numpy()

    np.testing.assert_allclose(hidden(compat.ALL), ref, atol=1e-5)
    unscaled = _paddleslim_unscaled_mha()
    upstream = [p if p.name != "mha_forward" else compat.Patch(p.name, p.owner, p.attribute, unscaled, "upstream")
                for p in compat.ALL]
    assert np.abs(hidden(upstream) - ref).max() > 1e-2


def test_bert_forward_accepts_head_mask():
    """encoder/encoder_layer/prepare_qkv/bert_forward thread [mask, head_mask] through."""
    paddle.seed(2)
    model = build_classifier(tiny_config())
    ids, types = _inputs()
    ref = _plain_logits(model, ids, types)
    sn = OfaSupernet(model, [1.0, 0.5])
    sn.eval()
    ones = paddle.ones([2, 4])
    zero_head = paddle.to_tensor(np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype="float32"))
    with paddle.no_grad():
        np.testing.assert_allclose(sn(paddle.to_tensor(ids), paddle.to_tensor(types), ones).numpy(), ref, atol=1e-5)
        masked = sn(paddle.to_tensor(ids), paddle.to_tensor(types), zero_head).numpy()
    assert np.abs(masked - ref).max() > 1e-5
    with pytest.raises(Exception):  # PaddleNLP's own forward rejects the list form
        with paddle.no_grad():
            model.bert(paddle.to_tensor(ids), attention_mask=[None, ones])


def test_patches_restore_originals_even_on_error():
    before = {(id(p.owner), p.attribute): p.owner.__dict__.get(p.attribute) for p in compat.ALL}
    with pytest.raises(RuntimeError):
        with compat.patched():
            with compat.patched():  # nesting (train forward, then export) must not stack
                assert paddle.nn.MultiHeadAttention.forward is compat.nlp_ofa.mha_ofa_forward
            assert paddle.nn.MultiHeadAttention.forward is compat.nlp_ofa.mha_ofa_forward
            raise RuntimeError("boom")
    after = {(id(p.owner), p.attribute): p.owner.__dict__.get(p.attribute) for p in compat.ALL}
    assert before == after


def _four_layer_model(seed):
    paddle.seed(seed)
    cfg = tiny_config()
    cfg["num_hidden_layers"] = 4
    return build_classifier(cfg)


def test_classifier_forward_takes_the_depth_ofa_passes():
    """OFA passes its config's depth as a keyword: PaddleNLP's classifier forward rejects it;
    ours runs only the layers the depth keeps (0 and 2 of 4 at 0.5), which is the plain model
    cut to those layers, and at full depth is PaddleNLP's own forward."""
    from ofaserve.compress.submodel import build_sub_model, keep_layers

    model = _four_layer_model(3)
    ids, types = _inputs()
    ref = _plain_logits(model, ids, types)
    sn = OfaSupernet(model, [1.0, 0.5], [1.0, 0.5])
    sn.eval()
    np.testing.assert_allclose(sn.logits_numpy(ids, types, 1.0, 1.0), ref, atol=1e-5)
    half = sn.logits_numpy(ids, types, 1.0, 0.5)
    assert np.abs(half - ref).max() > 1e-4  # fewer layers: another function

    def cut(kept):
        cfg, state = keep_layers(*sn.slice_width(1.0), kept, 0.5)
        plain = build_sub_model(cfg)
        plain.set_state_dict(state)
        return _plain_logits(plain, ids, types)

    np.testing.assert_allclose(half, cut([0, 2]), atol=1e-5)
    assert np.abs(half - cut([1, 3])).max() > 1e-4  # the layer choice matters
    plain = _four_layer_model(3)  # OfaSupernet converted ``model`` into its blocks
    with pytest.raises(TypeError):  # unpatched: the keyword OFA adds is refused
        with paddle.no_grad():
            plain(paddle.to_tensor(ids), paddle.to_tensor(types), depth=0.5)
    with compat.patched(_by_name("classifier_forward")):
        np.testing.assert_array_equal(_plain_logits(plain, ids, types), ref)


def test_encoder_forward_at_full_depth_is_paddlenlps():
    """Our encoder forward replaces PaddleNLP's OFA one in every run: with no depth (every
    width-only run) it gives the same outputs and the same gradients, bit for bit."""
    model = _four_layer_model(4)
    ids, types = _inputs()
    sn = OfaSupernet(model, [1.0, 0.5])
    sn.train()
    upstream = [p if p.name != "encoder_forward" else
                compat.Patch(p.name, p.owner, p.attribute, compat.nlp_ofa.encoder_ofa_forward, "upstream")
                for p in compat.ALL]

    def run(patches):
        paddle.seed(7)  # same dropout draws
        with compat.patched(patches):
            out = sn.ofa(paddle.to_tensor(ids), paddle.to_tensor(types), attention_mask=[None, None])
        out.sum().backward()
        grads = [p.grad.numpy().copy() for p in sn.parameters() if p.grad is not None]
        sn.model.clear_gradients()
        return out.numpy(), grads

    (a, ga), (b, gb) = run(compat.ALL), run(upstream)
    assert np.array_equal(a, b) and len(ga) == len(gb) and all(np.array_equal(x, y) for x, y in zip(ga, gb))

"""Runtime patches that make PaddleSlim 2.6 OFA work for BERT on Paddle 2.6 / 3.x.

Each patch is data: (owner, attribute, replacement, reason). ``patched(...)`` applies
a set inside a context manager and restores every original on exit, so training
patches never leak into export or serving. Delete a patch (and its test) the day
upstream is fixed. Nothing here edits site-packages.

Why each exists:
- super_embedding_init / super_layernorm_init: paddle 3 made most arguments of
  ``nn.Embedding`` / ``nn.LayerNorm`` keyword-only; paddleslim passes them positionally.
- super_layernorm_forward: paddleslim unpacks ``_C_ops.layer_norm``'s old 3-tuple.
- mha_forward: paddleslim's ``nlp_utils`` attention drops the 1/sqrt(head_dim) scale
  (a real bug: importance scores and OFA training would run a different attention
  than the exported model). We use PaddleNLP's scaled ``mha_ofa_forward`` instead.
- mha_prepare_qkv / encoder_forward / encoder_layer_forward: thread the head mask
  (``attention_mask=[mask, head_mask]``) and the per-width head count through.
- bert_forward: PaddleNLP 2.8's ``BertModel.forward`` rejects a [mask, head_mask] list.
- classifier_forward / encoder_forward (depth): PaddleSlim's OFA trains depth only as far
  as its search space goes: with ``RunConfig(elastic_depth=...)`` ``dynabert_config``
  records a depth and ``OFA.forward`` passes it on as a ``depth`` keyword, but nothing in
  PaddleNLP's BERT takes it (``BertForSequenceClassification.forward`` rejects it) or
  runs fewer layers. These pass it down to the encoder, which runs the layers that depth
  keeps (``core.subnet.Depth.layers``, DynaBERT's rule); at full depth (or none given)
  they run exactly the code they replace.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddlenlp.transformers import BertForSequenceClassification, BertModel
from paddlenlp.transformers import ofa_utils as nlp_ofa
from paddleslim.nas.ofa import layers as ofa_layers

from ofaserve.core.subnet import Depth


@dataclass(frozen=True)
class Patch:
    name: str
    owner: Any
    attribute: str
    replacement: Callable
    reason: str


# ----------------------------------------------------------------------------- replacements
def _super_embedding_init(self, num_embeddings, embedding_dim, candidate_config={}, padding_idx=None,
                          sparse=False, weight_attr=None, name=None):
    nn.Embedding.__init__(self, num_embeddings, embedding_dim, padding_idx=padding_idx, sparse=sparse,
                          weight_attr=weight_attr, name=name)
    self.candidate_config = candidate_config
    self.cur_config = None
    self.expand_ratio = candidate_config.get("expand_ratio")
    self.base_output_dim = self._embedding_dim
    if self.expand_ratio is not None:
        self.base_output_dim = int(self._embedding_dim / max(self.expand_ratio))


def _super_layernorm_init(self, normalized_shape, epsilon=1e-05, weight_attr=None, bias_attr=None, name=None):
    nn.LayerNorm.__init__(self, normalized_shape, epsilon=epsilon, weight_attr=weight_attr,
                          bias_attr=bias_attr, name=name)
    self.cur_config = None


def _super_layernorm_forward(self, input):
    feature_dim = int(input.shape[-1])
    weight = self.weight if self.weight is None or self.weight.shape[0] <= feature_dim else self.weight[:feature_dim]
    bias = self.bias if self.bias is None or self.bias.shape[0] <= feature_dim else self.bias[:feature_dim]
    self.cur_config = {"prune_dim": feature_dim}
    return F.layer_norm(input, normalized_shape=[feature_dim], weight=weight, bias=bias, epsilon=self._epsilon)


def _bert_ofa_forward(self, input_ids, token_type_ids=None, position_ids=None, attention_mask=None, depth=None,
                      **unused):
    """BertModel.forward that accepts ``attention_mask=[mask, head_mask]`` (and ``depth``, for
    the encoder).

    The padding mask is built exactly as PaddleNLP builds it (-1e4 on pads), so the
    supernet at a width and the exported sub model compute the same function.
    """
    mask, head_mask = (attention_mask if isinstance(attention_mask, (list, tuple)) else [attention_mask, None])
    if mask is None:
        dense = self.pooler.dense
        wtype = (dense.fn.weight if hasattr(dense, "fn") else dense.weight).dtype
        mask = paddle.unsqueeze((input_ids == self.pad_token_id).astype(wtype) * -1e4, axis=[1, 2])
    embedding_output = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                       position_ids=position_ids)
    if _full_depth(depth):
        sequence_output = self.encoder(embedding_output, [mask, head_mask])
    else:
        sequence_output = self.encoder(embedding_output, [mask, head_mask], depth=depth)
    return sequence_output, self.pooler(sequence_output)


def _full_depth(depth) -> bool:
    return depth is None or float(depth) >= 1.0


_PLAIN_CLASSIFIER_FORWARD = BertForSequenceClassification.__dict__["forward"]


def _classifier_depth_forward(self, input_ids, token_type_ids=None, position_ids=None, attention_mask=None,
                              labels=None, output_hidden_states=None, output_attentions=None, return_dict=None,
                              depth=None):
    """BertForSequenceClassification.forward that takes the ``depth`` OFA passes (its own
    forward, unchanged, at full depth). Named arguments only: ``paddle.jit.to_static`` (the
    scorer's static models, saved while training runs patched) reads this signature."""
    if _full_depth(depth):
        return _PLAIN_CLASSIFIER_FORWARD(self, input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                                         attention_mask=attention_mask, labels=labels,
                                         output_hidden_states=output_hidden_states,
                                         output_attentions=output_attentions, return_dict=return_dict)
    _, pooled = self.bert(input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                          attention_mask=attention_mask, depth=depth)
    return self.classifier(self.dropout(pooled))


def _encoder_depth_forward(self, src, src_mask=[None, None], cache=None, output_attentions=False,
                           output_hidden_states=False, return_dict=False, depth=None):
    """PaddleNLP's OFA encoder forward (head mask threaded to every layer); at a depth < 1
    only the layers that depth keeps run, in order."""
    if _full_depth(depth):
        return nlp_ofa.encoder_ofa_forward(self, src, src_mask, cache, output_attentions, output_hidden_states,
                                           return_dict)
    mask, head_mask = src_mask
    if head_mask is not None:  # importance is scored at full depth only
        raise NotImplementedError("a head mask at a depth below 1.0")
    output = src
    for i in Depth(float(depth)).layers(len(self.layers)):
        output = self.layers[i](output, src_mask=[mask, None])
    if self.norm is not None:
        output = self.norm(output)
    return output


SUPERNET_LAYERS = [
    Patch("super_embedding_init", ofa_layers.SuperEmbedding, "__init__", _super_embedding_init,
          "paddle 3 nn.Embedding takes keyword-only args"),
    Patch("super_layernorm_init", ofa_layers.SuperLayerNorm, "__init__", _super_layernorm_init,
          "paddle 3 nn.LayerNorm takes keyword-only args"),
    Patch("super_layernorm_forward", ofa_layers.SuperLayerNorm, "forward", _super_layernorm_forward,
          "_C_ops.layer_norm's return value changed"),
]
OFA_FORWARD = [
    Patch("mha_forward", nn.MultiHeadAttention, "forward", nlp_ofa.mha_ofa_forward,
          "head mask + per-width heads, WITH the 1/sqrt(head_dim) scale paddleslim drops"),
    Patch("mha_prepare_qkv", nn.MultiHeadAttention, "_prepare_qkv", nlp_ofa.prepare_qkv_ofa,
          "per-width head count"),
    Patch("encoder_forward", nn.TransformerEncoder, "forward", _encoder_depth_forward,
          "threads [mask, head_mask] to every layer; at a depth < 1 runs only the layers it keeps"),
    Patch("encoder_layer_forward", nn.TransformerEncoderLayer, "forward", nlp_ofa.encoder_layer_ofa_forward,
          "passes [mask, head_mask] to attention"),
    Patch("bert_forward", BertModel, "forward", _bert_ofa_forward,
          "PaddleNLP 2.8 BertModel.forward rejects [mask, head_mask]; passes OFA's depth to the encoder"),
    Patch("classifier_forward", BertForSequenceClassification, "forward", _classifier_depth_forward,
          "OFA passes the depth of its config as a keyword BertForSequenceClassification.forward rejects"),
]
ALL = SUPERNET_LAYERS + OFA_FORWARD

_MISSING = object()


@contextlib.contextmanager
def patched(patches: list[Patch] | None = None) -> Iterator[None]:
    """Apply ``patches`` (default: ``ALL``, read when entered); restore each original (even on
    error) on exit.

    Restoring in reverse order makes nesting and re-entry safe: patching
    ``BertModel.forward`` twice cannot stack (the second patch would wrap the first and
    fail on its keyword arguments).
    """
    patches = ALL if patches is None else patches
    originals: list[tuple[Patch, Any]] = []
    try:
        for p in patches:
            originals.append((p, p.owner.__dict__.get(p.attribute, _MISSING)))
            setattr(p.owner, p.attribute, p.replacement)
        yield
    finally:
        for p, original in reversed(originals):
            if original is _MISSING:
                delattr(p.owner, p.attribute)
            else:
                setattr(p.owner, p.attribute, original)


def supernet(width_mult_list: list[float]):
    """``Convert(supernet(expand_ratio=widths))``: turns a model into an OFA supernet."""
    from paddleslim.nas.ofa.convert_super import Convert, supernet as sp

    def convert(model):
        with patched(SUPERNET_LAYERS):
            return Convert(sp(expand_ratio=list(width_mult_list))).convert(model)
    return convert

"""ONNX side of the export: paddle2onnx, the output rename, the fusable-attention rewrite,
the packed (several sentences per row) variant, ONNX Runtime's BERT fusion, FP16 and
dynamic INT8 variants.

The rewrite keeps the maths of paddle's attention but puts it in the form
``onnxruntime.transformers`` recognises:
  paddle:  softmax( (q * s) @ k^T + (input_ids == pad) * -1e4 )
  rewrite: softmax( (q @ k^T) / (1/s) + (1 - float(input_ids != pad)) * -10000 )
with the 2-D mask ``attention_mask = int64(input_ids != pad)`` built once and shared.
Both are standard ONNX ops: the rewritten graph is the shipped ``model.onnx``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.core.errors import OfaserveError

log = logging.getLogger("ofaserve.export")

INPUTS = ("input_ids", "token_type_ids")
OUTPUT = "logits"


# ----------------------------------------------------------------------------- conversion
def paddle_to_onnx(model_json: Path, params: Path, out: Path, opset: int) -> None:
    import paddle2onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        paddle2onnx.export(str(model_json), str(params), str(out), opset_version=int(opset),
                           auto_upgrade_opset=False, enable_onnx_checker=True, enable_optimize=True)
    except Exception as e:  # paddle2onnx raises bare Exceptions / RuntimeErrors
        raise OfaserveError(f"paddle2onnx failed to convert {model_json}: {e}") from e
    if not out.is_file():
        raise OfaserveError(f"paddle2onnx wrote no {out}")


def _remove_identities(graph) -> None:
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    for node in keep:
        node.input[:] = [rename.get(i, i) for i in node.input]
    del graph.node[:]
    graph.node.extend(keep)


def _graph_maps(graph) -> tuple[dict[str, Any], dict[str, list]]:
    """(tensor name -> the node producing it, tensor name -> the nodes reading it)."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def _const_value(graph, name: str) -> np.ndarray | None:
    from onnx import numpy_helper
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def finalize_io(proto) -> None:
    """Name the inputs/output per the serving contract: input_ids, token_type_ids -> logits."""
    g = proto.graph
    names = [i.name for i in g.input]
    if names != list(INPUTS):
        raise OfaserveError(f"the ONNX model's inputs are {names}, expected {list(INPUTS)}")
    if len(g.output) != 1:
        raise OfaserveError(f"the ONNX model has {len(g.output)} outputs, expected one (logits)")
    old = g.output[0].name
    if old != OUTPUT:
        for node in g.node:
            node.output[:] = [OUTPUT if o == old else o for o in node.output]
            node.input[:] = [OUTPUT if i == old else i for i in node.input]
        g.output[0].name = OUTPUT
    # readable dynamic axes
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) >= 1 and not dims[0].dim_value:
            dims[0].dim_param = "batch"
        if vi.name in INPUTS and len(dims) == 2:
            dims[1].dim_param = "seq"


def rewrite_attention(proto, pad_token_id: int) -> dict[str, Any]:
    """Rewrite every paddle attention block into the form ORT's BERT fusion matches.

    Returns {"blocks": n}. Raises if the graph is not the expected paddle BERT pattern
    (then the caller ships the unfused model).
    """
    g = proto.graph
    _remove_identities(g)
    producer, consumers = _graph_maps(g)

    softmaxes = [n for n in g.node if n.op_type == "Softmax"]
    if not softmaxes:
        raise OfaserveError("no Softmax in the graph: not a BERT attention graph")
    mask_tensors: set[str] = set()
    new_inits, to_remove = [], []
    for k, sm in enumerate(softmaxes):
        mask_name, scale_init, removed = _unscale_query(g, producer, consumers, k, sm)
        mask_tensors.add(mask_name)
        new_inits.append(scale_init)
        to_remove += removed
    for n in to_remove:
        g.node.remove(n)
    g.initializer.extend(new_inits)
    if len(mask_tensors) != 1:
        raise OfaserveError(f"expected one shared attention mask, found {len(mask_tensors)}")
    _mask_from_input_ids(g, mask_tensors.pop(), pad_token_id)
    _prune_dead(g)
    return {"blocks": len(softmaxes)}


def _unscale_query(g, producer: dict, consumers: dict, k: int, sm) -> tuple[str, Any, list]:
    """Attention block ``k`` (its Softmax ``sm``): paddle scales q before q.k^T, ORT's
    fusion wants the scores divided after it. Rewires the MatMul to the unscaled q and
    inserts the Div; returns the block's mask tensor, the Div's constant and the scale
    nodes to remove."""
    from onnx import helper, numpy_helper

    add = producer.get(sm.input[0])
    if add is None or add.op_type != "Add":
        raise OfaserveError(f"softmax {sm.name}: expected Add(scores, mask) before it")
    mm = producer.get(add.input[0])
    mask_name = add.input[1]
    if mm is None or mm.op_type != "MatMul":
        mm, mask_name = producer.get(add.input[1]), add.input[0]
    if mm is None or mm.op_type != "MatMul":
        raise OfaserveError(f"softmax {sm.name}: expected MatMul(q, k^T) before the mask Add")
    q_node = producer.get(mm.input[0])
    bias_node = None
    if q_node is not None and q_node.op_type == "Add":  # paddle scale op: x * s + 0
        b = _const_value(g, q_node.input[1])
        if b is None or np.any(b != 0):
            raise OfaserveError(f"unexpected non-zero bias after the q scale ({q_node.name})")
        bias_node, q_node = q_node, producer.get(q_node.input[0])
    if q_node is None or q_node.op_type != "Mul":
        raise OfaserveError(f"attention {k}: expected the 1/sqrt(head_dim) Mul on q")
    scale = _const_value(g, q_node.input[1])
    q_in = q_node.input[0]
    if scale is None:
        scale, q_in = _const_value(g, q_node.input[0]), q_node.input[1]
    if scale is None or scale.size != 1:
        raise OfaserveError(f"attention {k}: the q scale is not a constant scalar")
    # only rewire if the scaled q feeds this MatMul alone
    scaled = (bias_node or q_node).output[0]
    if len(consumers.get(scaled, [])) != 1:
        raise OfaserveError(f"attention {k}: the scaled q has other consumers")
    s_name = f"ofaserve_attn_scale_{k}"
    # Div by 1/s (not Mul by s): ORT's mask matcher takes the Add's first Mul parent as the mask
    scale_init = numpy_helper.from_array(np.asarray(1.0 / float(np.asarray(scale).reshape(())),
                                                    dtype=np.float32).reshape(()), s_name)
    raw = f"ofaserve_attn_qk_{k}"
    scaled_scores = f"ofaserve_attn_scores_{k}"
    mm.input[0] = q_in
    mm_out = mm.output[0]
    mm.output[0] = raw
    div = helper.make_node("Div", [raw, s_name], [scaled_scores], name=f"ofaserve_attn_scale_div_{k}")
    g.node.insert(list(g.node).index(mm) + 1, div)
    add.input[:] = [scaled_scores if i == mm_out else i for i in add.input]
    return mask_name, scale_init, [n for n in (q_node, bias_node) if n is not None]


def _mask_from_input_ids(g, mask_name: str, pad_token_id: int) -> None:
    """The additive mask every attention Add reads (``mask_name``) recomputed from
    ``input_ids`` at the top of the graph, in the Equal/Cast/Unsqueeze form ORT's fusion
    recognises as the attention mask."""
    from onnx import TensorProto, helper, numpy_helper

    pad = numpy_helper.from_array(np.array(pad_token_id, dtype=np.int64), "ofaserve_pad_id")
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "ofaserve_one")
    neg = numpy_helper.from_array(np.array(-10000.0, dtype=np.float32), "ofaserve_mask_value")
    ax1 = numpy_helper.from_array(np.array([1], dtype=np.int64), "ofaserve_axis1")
    ax2 = numpy_helper.from_array(np.array([2], dtype=np.int64), "ofaserve_axis2")
    g.initializer.extend([pad, one, neg, ax1, ax2])
    nodes = [
        helper.make_node("Equal", ["input_ids", "ofaserve_pad_id"], ["ofaserve_is_pad"], name="ofaserve_mask_eq"),
        helper.make_node("Not", ["ofaserve_is_pad"], ["ofaserve_not_pad"], name="ofaserve_mask_not"),
        helper.make_node("Cast", ["ofaserve_not_pad"], ["attention_mask"], name="ofaserve_mask_cast",
                         to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["attention_mask", "ofaserve_axis1"], ["ofaserve_mask_u1"],
                         name="ofaserve_mask_unsq1"),
        helper.make_node("Unsqueeze", ["ofaserve_mask_u1", "ofaserve_axis2"], ["ofaserve_mask_u2"],
                         name="ofaserve_mask_unsq2"),
        helper.make_node("Cast", ["ofaserve_mask_u2"], ["ofaserve_mask_f"], name="ofaserve_mask_castf",
                         to=TensorProto.FLOAT),
        helper.make_node("Sub", ["ofaserve_one", "ofaserve_mask_f"], ["ofaserve_mask_inv"], name="ofaserve_mask_sub"),
        helper.make_node("Mul", ["ofaserve_mask_inv", "ofaserve_mask_value"], ["ofaserve_mask_add"],
                         name="ofaserve_mask_mul"),
    ]
    for n in reversed(nodes):
        g.node.insert(0, n)
    for n in g.node:
        if n.op_type == "Add" and mask_name in n.input and consumers_is_softmax(n, g):
            n.input[:] = ["ofaserve_mask_add" if i == mask_name else i for i in n.input]


def consumers_is_softmax(node, graph) -> bool:
    return any(c.op_type == "Softmax" and node.output[0] in c.input for c in graph.node)


def _prune_dead(g) -> None:
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    used = needed
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


# ----------------------------------------------------------------------------- packed variant
PACKED_INPUTS = ("input_ids", "token_type_ids", "position_ids", "segment_ids", "cls_index")


def packed_variant(proto, hidden_size: int, pad_token_id: int = 0) -> None:
    """Turn the rewritten ``model.onnx`` (in place) into a graph that runs several sentences
    per row ("sequence packing"), so a batch of short sentences costs its real tokens, not
    rows x longest.

    New inputs, all int64: ``position_ids`` [rows, seq] (restarting at 0 in each sentence),
    ``segment_ids`` [rows, seq] (1, 2, ... per sentence in its row, 0 = padding) and
    ``cls_index`` [n] (flat row * seq + column of each sentence's [CLS]); output ``logits``
    [n, num_labels], one row per sentence. Attention is block-diagonal: a token sees the
    non-pad tokens of its own sentence (pad ids are masked as keys exactly as the plain
    graph masks them, wherever they sit), with the same -10000 additive mask, so every
    sentence's logits equal the plain graph's (export checks this).
    Needs ``rewrite_attention`` to have run (it names the one shared mask).
    """
    g = proto.graph
    producer, consumers = _graph_maps(g)
    if "ofaserve_mask_add" not in producer:
        raise OfaserveError("packed variant: the graph has no rewritten attention mask")
    _positions_from_input(g)
    _add_packing_constants(g, hidden_size, pad_token_id)
    _cls_by_index(g, consumers)
    _block_diagonal_mask(g, producer["ofaserve_mask_add"])
    _packed_inputs_and_output(g)


def _positions_from_input(g) -> None:
    """The position-embedding lookup reads ``position_ids``: the one Gather whose indices are
    computed, not an input."""
    tables = {i.name for i in g.initializer if len(i.dims) == 2}
    gathers = [n for n in g.node if n.op_type == "Gather" and n.input[1] not in INPUTS and n.input[0] in tables]
    if len(gathers) != 1:
        raise OfaserveError(f"packed variant: expected one position-embedding Gather, found {len(gathers)}")
    gathers[0].input[1] = "position_ids"


def _add_packing_constants(g, hidden_size: int, pad_token_id: int) -> None:
    from onnx import numpy_helper

    g.initializer.extend([
        numpy_helper.from_array(np.array([-1, int(hidden_size)], dtype=np.int64), "ofaserve_pack_flat"),
        numpy_helper.from_array(np.array(pad_token_id, dtype=np.int64), "ofaserve_pack_pad_id"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "ofaserve_pack_ax1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "ofaserve_pack_ax2"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "ofaserve_pack_one"),
        numpy_helper.from_array(np.array(-10000.0, dtype=np.float32), "ofaserve_pack_neg"),
    ])


def _cls_by_index(g, consumers: dict) -> None:
    """The pooler reads each sentence's [CLS] at ``cls_index`` of the flattened tokens,
    instead of the [CLS] slice (Slice(hidden, axis 1, 0:1) -> Squeeze) of every row."""
    from onnx import helper

    slices = [n for n in g.node if n.op_type == "Slice" and any(c.op_type == "Squeeze" for c in consumers.get(n.output[0], []))]
    if len(slices) != 1:
        raise OfaserveError(f"packed variant: expected one [CLS] Slice->Squeeze, found {len(slices)}")
    cls_slice = slices[0]
    squeeze = next(c for c in consumers[cls_slice.output[0]] if c.op_type == "Squeeze")
    cls_nodes = [
        helper.make_node("Reshape", [cls_slice.input[0], "ofaserve_pack_flat"], ["ofaserve_pack_tokens"],
                         name="ofaserve_pack_flatten"),
        helper.make_node("Gather", ["ofaserve_pack_tokens", "cls_index"], [squeeze.output[0]], name="ofaserve_pack_cls",
                         axis=0),
    ]
    at = list(g.node).index(squeeze)
    for n in reversed(cls_nodes):
        g.node.insert(at, n)
    g.node.remove(squeeze)
    g.node.remove(cls_slice)


def _block_diagonal_mask(g, old_mask) -> None:
    """The additive mask [rows, 1, seq, seq] from ``segment_ids`` and the pad ids, under the
    plain mask's name (``old_mask`` produced it), so every attention block reads it."""
    from onnx import TensorProto, helper

    mask_nodes = [
        helper.make_node("Unsqueeze", ["segment_ids", "ofaserve_pack_ax2"], ["ofaserve_pack_seg_q"], name="ofaserve_pack_q"),
        helper.make_node("Unsqueeze", ["segment_ids", "ofaserve_pack_ax1"], ["ofaserve_pack_seg_k"], name="ofaserve_pack_k"),
        helper.make_node("Equal", ["ofaserve_pack_seg_q", "ofaserve_pack_seg_k"], ["ofaserve_pack_same"], name="ofaserve_pack_same"),
        helper.make_node("Equal", ["input_ids", "ofaserve_pack_pad_id"], ["ofaserve_pack_pad"], name="ofaserve_pack_pad"),
        helper.make_node("Unsqueeze", ["ofaserve_pack_pad", "ofaserve_pack_ax1"], ["ofaserve_pack_kpad"],
                         name="ofaserve_pack_kpad"),
        helper.make_node("Not", ["ofaserve_pack_kpad"], ["ofaserve_pack_kreal"], name="ofaserve_pack_kreal"),
        helper.make_node("And", ["ofaserve_pack_same", "ofaserve_pack_kreal"], ["ofaserve_pack_ok"], name="ofaserve_pack_ok"),
        helper.make_node("Cast", ["ofaserve_pack_ok"], ["ofaserve_pack_okf"], name="ofaserve_pack_okf", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["ofaserve_pack_one", "ofaserve_pack_okf"], ["ofaserve_pack_inv"], name="ofaserve_pack_inv"),
        helper.make_node("Mul", ["ofaserve_pack_inv", "ofaserve_pack_neg"], ["ofaserve_pack_mask3"], name="ofaserve_pack_mask3"),
        helper.make_node("Unsqueeze", ["ofaserve_pack_mask3", "ofaserve_pack_ax1"], ["ofaserve_mask_add"],
                         name="ofaserve_pack_mask4"),
    ]
    at = list(g.node).index(old_mask)
    g.node.remove(old_mask)
    for n in reversed(mask_nodes):
        g.node.insert(at, n)


def _packed_inputs_and_output(g) -> None:
    """The new int64 inputs, one logits row per sentence, and the dead plain nodes dropped."""
    from onnx import TensorProto, helper

    for name in PACKED_INPUTS[2:]:
        shape = ["batch", "seq"] if name != "cls_index" else ["sentences"]
        g.input.append(helper.make_tensor_value_info(name, TensorProto.INT64, shape))
    out_dims = g.output[0].type.tensor_type.shape.dim
    out_dims[0].ClearField("dim_value")
    out_dims[0].dim_param = "sentences"
    _prune_dead(g)
    names = [i.name for i in g.input]
    if names != list(PACKED_INPUTS):
        raise OfaserveError(f"packed variant: inputs are {names}, expected {list(PACKED_INPUTS)}")


# ----------------------------------------------------------------------------- ORT fusion
def fuse_for_ort(src: Path, dst: Path, num_heads: int, hidden_size: int, work: Path) -> dict[str, Any]:
    """ORT basic optimisation (saved to a file), then the BERT fusions at opt_level=0
    (no torch needed). Returns the fused-op counts."""
    import onnxruntime as ort
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    basic = work / "model_ort_basic.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(basic)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    opts = FusionOptions("bert")
    opts.use_raw_attention_mask(True)  # keep the exact 2-D mask maths (no right-padding assumption)
    opts.enable_embed_layer_norm = False  # keeps inputs/position ids exactly as exported
    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    model = optimize_model(str(basic), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                           optimization_options=opts, opt_level=0)
    model.save_model_to_file(str(dst))
    counts: dict[str, int] = {}
    for n in model.model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    basic.unlink(missing_ok=True)
    return {k: v for k, v in sorted(counts.items())}

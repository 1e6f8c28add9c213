"""Slice one subnet (width, depth) out of the supernet and write its artifacts: sub model, Paddle
static, ONNX."""
from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

from ofaserve.core.errors import OfaserveError
from ofaserve.core.subnet import Subnet
from ofaserve.export import onnx_tools
from ofaserve.export.source import Source
from ofaserve.compress.submodel import load_sub_model, save_static, save_sub_model

log = logging.getLogger("ofaserve.export")


@contextlib.contextmanager
def quiet_logs(level: int):
    """Silence third-party log records up to ``level`` (and their stdout prints) for a block."""
    logging.disable(level)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def build_artifacts(sn, src: Source, width: float, folder: Path, opset: int, onnx_model: bool = True,
                    fuse: bool = True, depth: float = 1.0) -> dict[str, Any]:
    """sub_model/, static/, onnx/ for one (width, depth) in ``folder``. Returns info for the manifest."""
    t0 = time.time()
    name = Subnet.of(width, depth).describe()
    log.info("%s: slicing the supernet", name)
    cfg, state = sn.slice_subnet(width, depth, src.config, src.state)
    save_sub_model(folder / "sub_model", cfg, state)
    model = load_sub_model(folder / "sub_model")  # what users get: rebuilt from config, no OFA patch
    info: dict[str, Any] = {"sub_config": cfg, "artifacts": {"sub_model": "sub_model"}}
    static_prefix, model_file = _static_model(model, folder, info)
    log.info("%s: sub model + static model written (%.1fs)", name, time.time() - t0)
    if not onnx_model:
        return info
    onnx_dir = folder / "onnx"
    pad_id = int(src.config.get("pad_token_id", 0))
    proto, rewrite = _plain_onnx(model_file, static_prefix, onnx_dir, opset, pad_id)
    info["artifacts"]["onnx"] = "onnx/model.onnx"
    if rewrite.get("applied"):
        _packed_onnx(proto, onnx_dir, int(src.config["hidden_size"]), pad_id, info)
    info["onnx"] = {"opset": int(opset), "rewrite": rewrite, "inputs": list(onnx_tools.INPUTS),
                    "output": onnx_tools.OUTPUT}
    if fuse and rewrite.get("applied"):
        _ort_fused_onnx(cfg, onnx_dir, info)
    log.info("%s: ONNX written (%.1fs)", name, time.time() - t0)
    return info


def _static_model(model, folder: Path, info: dict[str, Any]) -> tuple[Path, Path]:
    """static/: the Paddle inference model of ``model``; (path prefix, model file)."""
    static_prefix = folder / "static" / "model"
    try:
        save_static(model, static_prefix)
    except Exception as e:
        raise OfaserveError(f"paddle.jit.save of the sub model failed: {type(e).__name__}: {e}") from e
    model_file = static_prefix.with_suffix(".json")
    if not model_file.is_file():
        model_file = static_prefix.with_suffix(".pdmodel")  # paddle 2.6
    info["artifacts"]["paddle_static"] = "static/model"
    info["paddle_static_files"] = [f"static/{model_file.name}", "static/model.pdiparams"]
    return static_prefix, model_file


def _plain_onnx(model_file: Path, static_prefix: Path, onnx_dir: Path, opset: int, pad_id: int):
    """onnx/model.onnx: paddle2onnx's graph with the attention rewritten (paddle2onnx's own
    graph where the rewrite does not fit); (the saved proto, the rewrite's record)."""
    import onnx

    raw = onnx_dir / "paddle2onnx_raw.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        onnx_tools.paddle_to_onnx(model_file, static_prefix.with_suffix(".pdiparams"), raw, opset)
    proto = onnx.load(str(raw))
    onnx_tools.finalize_io(proto)
    raw_proto = onnx.ModelProto()
    raw_proto.CopyFrom(proto)
    final = onnx_dir / "model.onnx"
    rewrite: dict[str, Any]
    try:
        rewrite = onnx_tools.rewrite_attention(proto, pad_id)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(final))
        rewrite["applied"] = True
    except OfaserveError as e:  # unexpected graph: ship paddle2onnx's own graph, say why
        log.warning("attention rewrite skipped (%s): shipping the unfused paddle2onnx graph", e)
        onnx.save(raw_proto, str(final))
        proto, rewrite = raw_proto, {"applied": False, "reason": str(e)}
    raw.unlink()
    return proto, rewrite


def _packed_onnx(proto, onnx_dir: Path, hidden_size: int, pad_id: int, info: dict[str, Any]) -> None:
    """onnx/model_packed.onnx from the rewritten graph (an optimisation, not the contract:
    skipped with a warning where the graph does not fit)."""
    import onnx

    packed = onnx.ModelProto()
    packed.CopyFrom(proto)
    try:
        onnx_tools.packed_variant(packed, hidden_size, pad_id)
        onnx.checker.check_model(packed)
        onnx.save(packed, str(onnx_dir / "model_packed.onnx"))
        info["artifacts"]["onnx_packed"] = "onnx/model_packed.onnx"
    except OfaserveError as e:
        log.warning("packed variant skipped (%s)", e)


def _ort_fused_onnx(cfg: dict, onnx_dir: Path, info: dict[str, Any]) -> None:
    """onnx/model_ort_fused.onnx: ONNX Runtime's BERT fusions, shipped only when every
    attention block fused (best effort: the plain ONNX is the contract)."""
    heads = cfg["layers"][0]["num_heads"]
    uniform = all(l["num_heads"] == heads for l in cfg["layers"])
    try:
        with quiet_logs(logging.WARNING):  # the optimizer's INFO chatter + a benign hidden-size warning
            counts = onnx_tools.fuse_for_ort(onnx_dir / "model.onnx", onnx_dir / "model_ort_fused.onnx",
                                             heads if uniform else 0, 0, onnx_dir)
        n_att = counts.get("Attention", 0)
        info["onnx"]["ort_fusion"] = {"attention_fused": n_att, "layers": len(cfg["layers"]), "ops": counts}
        if n_att == len(cfg["layers"]):
            info["artifacts"]["onnx_ort_fused"] = "onnx/model_ort_fused.onnx"
        else:
            (onnx_dir / "model_ort_fused.onnx").unlink(missing_ok=True)
            info["onnx"]["ort_fusion"]["shipped"] = False
            log.warning("ORT fused %d of %d attention blocks: fused model not shipped", n_att, len(cfg["layers"]))
    except Exception as e:  # the optimizer is best effort; the plain ONNX is the contract
        log.warning("ONNX Runtime BERT fusion failed (%s): shipping only the plain ONNX", e)
        info["onnx"]["ort_fusion"] = {"attention_fused": 0, "error": str(e)}

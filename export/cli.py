"""`ofaserve export` / `python -m export`: flags follow the PaddleNLP OFA tutorial's export_model.py."""
from __future__ import annotations

import argparse
import sys

from ofaserve.runtime.paddle_cpu import configure as configure_cpu
from ofaserve.core.vocabulary import DropBound, Runtime
from ofaserve.core.subnet import Depth, Subnet
from ofaserve.core.width import parse_width_choice
from ofaserve.export.selection import RUNTIMES as LATENCY_RUNTIMES
from ofaserve.core.quiet import known_noise_silenced, known_prints_dropped
from ofaserve.core.stage_cli import HelpFormatter, argument_type, run_stage, setup_logging


_width = argument_type(parse_width_choice, "width", or_else=", or 'auto'")
_depth = argument_type(Depth.parse, "depth")
_drop_bound = argument_type(DropBound.parse, "drop bound")


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ofaserve export",
        description="Slice one trained subnet (width, and depth where the supernet trained depths) out of the "
                    "OFA supernet written by `ofaserve compress` and save it as a standalone sub model (dygraph), "
                    "a Paddle static model and ONNX, then check that every artifact gives the supernet's logits "
                    "(max abs diff <= --tolerance) on real dev sentences, and that dev accuracy through ONNX equals "
                    "the compress result. Nothing is written to --output_dir unless every check passes.",
        formatter_class=HelpFormatter)
    _subnet_arguments(p.add_argument_group(
        "subnet", "which trained subnet of the supernet to export"))
    _auto_choice_arguments(p.add_argument_group(
        "automatic choice", "with --width_mult auto: by dev score, or by latency measured here"))
    _artifact_arguments(p.add_argument_group(
        "artifacts", "the formats and reduced-precision variants written next to the sub model"))
    _check_arguments(p.add_argument_group(
        "checks", "every artifact is checked against the supernet before anything is written"))
    _output_arguments(p.add_argument_group("output"))
    return p


def _subnet_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model_type", default="bert", help="model family (only bert)")
    g.add_argument("--model_name_or_path", required=True,
                   help="the output folder of `ofaserve compress` (manifest.json + supernet checkpoint)")
    g.add_argument("--width_mult", type=_width, default=1.0,
                   help="width to export (a trained one, e.g. 0.6667), or `auto` with --max_metric_drop or "
                        "--latency_budget_ms: then the subnet is chosen over every trained (width, depth)")
    g.add_argument("--depth_mult", type=_depth, default=None,
                   help="depth to export with --width_mult (a trained one of the compress run's --depth_mult_list, "
                        "e.g. 0.5: the sub model keeps those encoder layers) [default 1.0; with --width_mult auto "
                        "the depth is chosen with the width]")
    g.add_argument("--max_seq_length", type=int, default=None,
                   help="tokenizer truncation recorded for serving [default: the compress stage's]")
    g.add_argument("--n_gpu", type=int, default=1, help="accepted for tutorial compatibility; export runs on CPU")


def _auto_choice_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--max_metric_drop", "--max_accuracy_drop", dest="max_metric_drop", type=float, default=None,
                   help="with --width_mult auto: the cheapest trained subnet (width x layers kept; the narrowest "
                        "width when only depth 1.0 was trained) whose dev score in the task's main metric (compress "
                        "results: accuracy; Matthews corr. for cola, F1 for mrpc, Pearson for sts-b) is within this "
                        "of the teacher's, e.g. 0.01 (see --drop_bound)")
    g.add_argument("--drop_bound", type=_drop_bound, choices=DropBound.values(), default=DropBound.CI95_UPPER,
                   help="what --max_metric_drop holds: `ci95_upper`, the upper end of the drop's 95%% paired-"
                        "bootstrap interval on dev (a subnet passes only when dev sentences show it loses no more "
                        "than that), or `point`, the drop itself (it flatters the cheapest subnets: dev is a "
                        "sample, and compress kept the checkpoint for its dev scores) [default: ci95_upper]")
    g.add_argument("--latency_budget_ms", type=float, default=None,
                   help="with --width_mult auto: measure every trained subnet (width, depth) on this machine and "
                        "pick the one with the best dev score (main metric) whose median latency is within this "
                        "budget")
    g.add_argument("--batch_size", type=int, default=16, help="batch size of the latency measurement")
    g.add_argument("--seq_len", type=int, default=128, help="sequence length of the latency measurement")
    g.add_argument("--runtime", type=Runtime.parse, choices=LATENCY_RUNTIMES, default=Runtime.OPENVINO,
                   help="runtime of the latency measurement (openvino runs f32)")


def _artifact_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--onnx_model", dest="onnx_model", action="store_true", default=True,
                   help="convert to ONNX (default on)")
    g.add_argument("--no_onnx_model", dest="onnx_model", action="store_false",
                   help="skip ONNX (and its precision variants)")
    g.add_argument("--opset", type=int, default=14, help="ONNX opset (>= 14)")
    g.add_argument("--no_fuse_attention", dest="fuse_attention", action="store_false",
                   help="skip the ONNX Runtime BERT-fused model (onnx/model_ort_fused.onnx)")
    g.add_argument("--no_precisions", dest="precisions", action="store_false",
                   help="skip the FP16 / OpenVINO bf16 / INT8 variants and their dev accuracy")
    g.add_argument("--no_int8", dest="int8", action="store_false",
                   help="skip the OpenVINO INT8 variants (NNCF post-training quantization on train sentences)")
    g.add_argument("--no_int8_plain", dest="int8_plain", action="store_false",
                   help="quantize only the packed graph when there is one (the python OpenVINO encoder serves the "
                        "packed INT8 IR; the plain one is its fallback and a cross-check)")
    g.add_argument("--no_fp16", dest="fp16", action="store_false",
                   help="skip the FP16 ONNX variant (the gpu target's; the cpu targets never serve it)")


def _check_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--parity_runtimes", type=_names, default=None,
                   help="comma-separated runtimes to check against the supernet, e.g. onnx,openvino_packed (the "
                        "runtimes a repository will serve); onnx, through which dev accuracy is checked, always "
                        "runs [default: all of sub_model, paddle_static, onnx, onnx_ort_fused, openvino_f32, "
                        "onnx_packed, openvino_packed]")
    g.add_argument("--tolerance", type=float, default=1e-4, help="max abs logits diff allowed between runtimes")
    g.add_argument("--time_budget_s", type=float, default=None,
                   help="about this many seconds for the whole export: dev accuracy through onnx is still checked "
                        "on the whole dev set, and its measured speed sizes an evenly spread dev subset for the "
                        "later passes (packed graph, precision variants); the manifest's parity.budget records it "
                        "[default: no budget, every pass on the whole dev set]")


def _output_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--output_dir", required=True,
                   help="folder receiving everything: manifest.json, sub_model/, static/, onnx/, tokenizer/ "
                        "(new, empty or a previous export: replaced atomically; checked before any work)")
    g.add_argument("--sub_model_output_dir", default=None,
                   help="also copy the sub model (model_state.pdparams + model_config.json + a manifest.json "
                        "naming the export) here: new, empty or an earlier copy, replaced atomically "
                        "[default: only <output_dir>/sub_model]")
    g.add_argument("--static_sub_model", default=None,
                   help="also copy the Paddle static model to this path prefix (writes PREFIX.json/.pdmodel + "
                        "PREFIX.pdiparams; existing files are replaced only with --overwrite) "
                        "[default: only <output_dir>/static/model]")
    g.add_argument("--overwrite", action="store_true",
                   help="allow replacing an output dir (or --sub_model_output_dir) that holds something other "
                        "than an export (a sub model copy), and existing --static_sub_model files")
    g.add_argument("--no_progress", action="store_true", help="no progress bars (logs only)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cpu()  # thread and MKL settings take effect only before paddle is imported
    setup_logging()
    # paddle warns at import (no ccache, an OMP notice about data parallelism): neither applies
    with known_noise_silenced(), known_prints_dropped():
        import paddle  # noqa: F401

    from ofaserve.export.exporter import export_subnet

    kwargs = {k: v for k, v in vars(args).items()
              if k not in ("model_name_or_path", "output_dir", "width_mult", "no_progress")}
    code, manifest = run_stage(lambda: export_subnet(args.model_name_or_path, args.output_dir, args.width_mult,
                                                     progress=not args.no_progress, **kwargs), args.output_dir)
    if code:
        return code
    p, dev = manifest.params, manifest.dev_score
    subnet = Subnet.of(manifest.width_mult, manifest.depth_mult)
    print(f"\nexported {subnet.describe(manifest.sub_config.get('full_num_layers'))} to {args.output_dir}: "
          f"{p['total']:,} params "
          f"({p['encoder_fraction']:.1%} of the encoder), dev {dev['metric']} {dev['value']:.4f}, "
          f"{manifest.flops_b16_s128 / 1e9:.2f} GFLOP at 16x128")
    for name, r in manifest.precisions.items():
        if "delta_vs_fp32" in r:
            print(f"  {name:<20} dev {dev['metric']} {r[dev['metric']]:.4f} ({r['delta_vs_fp32']:+.4f} vs fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

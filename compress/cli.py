"""`ofaserve compress` / `python -m compress`: flags follow PaddleNLP's run_glue_ofa.py."""
from __future__ import annotations

import argparse
import sys

from ofaserve.runtime.paddle_cpu import configure as configure_cpu
from ofaserve.compress.options import DEFAULT_WIDTHS, PROFILES, CompressOptions
from ofaserve.core.subnet import Depth
from ofaserve.core.width import Width
from ofaserve.core.quiet import known_noise_silenced, known_prints_dropped
from ofaserve.core.stage_cli import HelpFormatter, argument_type, run_stage, setup_logging


_width = argument_type(lambda text: Width.parse(text).value, "width")
_depth = argument_type(lambda text: Depth.parse(text).value, "depth")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ofaserve compress",
        description="Fine-tune the pretrained BERT on the task (the teacher), reorder attention heads and FFN "
                    "neurons by importance, then train it as a PaddleSlim once-for-all supernet over widths "
                    "(and depths: --depth_mult_list), distilled from the teacher. Every subnet is evaluated on "
                    "dev with the task's metrics (see --task_name).",
        formatter_class=HelpFormatter)
    _model_and_task_arguments(p.add_argument_group(
        "model and task", "the BERT to compress and the data it learns from and is scored on"))
    _supernet_arguments(p.add_argument_group(
        "supernet", "the subnets trained together, and the one whose dev score picks the checkpoint"))
    _training_arguments(p.add_argument_group("training", "--profile presets these; explicit flags override it"))
    _output_arguments(p.add_argument_group("output"))
    return p


def _model_and_task_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model_type", default="bert", help="model family (only bert)")
    g.add_argument("--model_name_or_path", default="minilm-l6",
                   help="`minilm-l6` (bundled offline all-MiniLM-L6-v2 weights) or your BERT's folder: Hugging Face "
                        "(model.safetensors, config.json, vocab.txt) or PaddleNLP save_pretrained "
                        "(model_state.pdparams, config.json or model_config.json, vocab.txt); tokenized with its own "
                        "vocab and casing (tokenizer_config.json's do_lower_case). A fine-tuned "
                        "BertForSequenceClassification whose outputs fit the task (its id2label names, or their "
                        "count) is the teacher as it is, measured on dev, not fine-tuned again")
    g.add_argument("--new_head", action="store_true",
                   help="with a fine-tuned --model_name_or_path: drop its classifier head and fine-tune a new one on "
                        "this task (needed when its labels do not fit the task)")
    g.add_argument("--teacher_dir", default=None,
                   help="reuse the fine-tuned teacher of an earlier `ofaserve compress` output (same model and "
                        "data; checksum verified) instead of fine-tuning a new one")
    g.add_argument("--task_name", default="rt-polarity",
                   help="rt-polarity (bundled offline: Rotten Tomatoes fresh/rotten sentences, split by movie), or a "
                        "GLUE task with --data_dir: cola, sst-2, mrpc, sts-b, qqp, mnli, qnli, rte (case-insensitive; "
                        "their metrics: cola Matthews corr., mrpc F1 then accuracy, sts-b Pearson then Spearman, "
                        "qqp accuracy then F1, the others accuracy; mnli on dev_matched and dev_mismatched)")
    g.add_argument("--data_dir", default=None,
                   help="with a GLUE --task_name: the folder holding GLUE's own train.tsv and dev.tsv "
                        "(mnli: dev_matched.tsv, dev_mismatched.tsv), in GLUE's column layout")
    g.add_argument("--train_file", help="your own CSV/TSV (instead of --task_name) with columns text, label and, "
                                        "for sentence pairs, text_pair")
    g.add_argument("--dev_file", help="dev CSV/TSV with the train file's columns, with --train_file")
    g.add_argument("--test_file", help="optional test CSV/TSV with the train file's columns")
    g.add_argument("--task_type", choices=["classification", "regression"], default=None,
                   help="with --train_file: classification (label = a class name; accuracy and F1) or regression "
                        "(label = a score; Pearson and Spearman) [default: classification]")
    g.add_argument("--max_seq_length", type=int, default=None,
                   help="truncate sentences to this many WordPiece tokens (batches pad to their longest) "
                        "[default 64, which 99%% of rt-polarity's sentences fit in; GLUE's pair tasks want 128]")


def _supernet_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--width_mult_list", type=_width, nargs="+", default=DEFAULT_WIDTHS,
                   help="widths of the supernet (fraction of heads and FFN neurons kept); must include 1.0")
    g.add_argument("--depth_mult_list", type=_depth, nargs="+", default=[1.0],
                   help="depths of the supernet (fraction of encoder layers kept, DynaBERT's rule: 0.5 keeps layers "
                        "0, 2, 4 of 6), trained together with every width, e.g. 1.0 0.75 0.5; must include 1.0. "
                        "1.0 alone trains widths only")
    g.add_argument("--sampling", choices=["all", "sandwich"], default="all",
                   help="widths trained per step: all, or sandwich (largest + smallest + one random middle)")
    g.add_argument("--select_width", type=_width, default=None,
                   help="keep the checkpoint with the best dev accuracy at this width (the one you will deploy) "
                        "[default: best mean dev accuracy over all widths]")
    g.add_argument("--select_depth", type=_depth, default=None,
                   help="with --select_width: the depth of the subnet whose dev score picks the checkpoint "
                        "[default 1.0]")


def _training_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--profile", choices=sorted(PROFILES), default=None,
                   help="preset: quick (2,000 sentences, 1 OFA epoch) or full (all train sentences, 3 OFA "
                        "epochs with --lambda_ce 0.5, dev eval every 106 steps: the recipe of the recorded "
                        "accuracy; its recorded time on a 2-core CPU is in compress/README.md). Explicit flags "
                        "override the preset.")
    g.add_argument("--batch_size", type=int, default=32, help="sentences per training step")
    g.add_argument("--learning_rate", type=float, default=None,
                   help="OFA training learning rate (AdamW) [default 3e-5]")
    g.add_argument("--teacher_learning_rate", type=float, default=None,
                   help="teacher fine-tune learning rate (AdamW, linear warm-up and decay) [quick profile: 2e-4, "
                        "which learns within a few dozen steps when a time budget cuts the fine-tune; else 5e-5]")
    g.add_argument("--num_train_epochs", type=float, default=None, help="OFA epochs [default 1]")
    g.add_argument("--num_teacher_epochs", type=float, default=None, help="teacher fine-tune epochs [default 2]")
    g.add_argument("--max_train_samples", type=int, default=None,
                   help="use only the first N (shuffled) train sentences")
    g.add_argument("--importance_samples", type=int, default=None,
                   help="train sentences used to score head/neuron importance [default 1024]")
    g.add_argument("--lambda_hidden", type=float, default=0.1, help="weight of the hidden-state MSE distillation loss")
    g.add_argument("--lambda_logit", type=float, default=1.0, help="weight of the soft cross-entropy on teacher logits")
    g.add_argument("--lambda_ce", type=float, default=None,
                   help="weight of the cross-entropy on the gold labels during OFA training (0: pure distillation, "
                        "as in the tutorial) [default 0; 0.5 in the full profile]")
    g.add_argument("--logging_steps", type=int, default=20, help="log the loss every N steps")
    g.add_argument("--save_steps", type=int, default=None,
                   help="evaluate every width on dev and checkpoint every N OFA steps (0: only at the end)")
    g.add_argument("--eval_before_ofa", action="store_true", default=None,
                   help="also evaluate every width on dev right after the importance reorder (before OFA training)")
    g.add_argument("--eval_runtime", choices=["paddle-inference", "dygraph"], default="paddle-inference",
                   help="how dev/test are scored: each model written as a Paddle static model and run by Paddle "
                        "Inference (oneDNN, fp32; checked against dygraph on a probe batch first, dygraph where it "
                        "differs), or paddle dygraph throughout [default: paddle-inference]")
    g.add_argument("--seed", type=int, default=42, help="random seed (data order, dropout, head)")
    g.add_argument("--n_gpu", type=int, default=1, help="data-parallel workers (paddle.distributed; GPUs)")
    g.add_argument("--time_budget_s", type=float, default=None,
                   help="finish within about this many seconds: the evaluations of the results table are priced "
                        "and kept, the teacher and OFA steps are sized from the speed measured in their first "
                        "steps (never above the profile's); what was cut goes to the manifest's budget record "
                        "[default: no budget, the profile as written]")


def _output_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--output_dir", required=True,
                   help="where the compress output goes: new, empty or a previous compress output (replaced "
                        "atomically; checked before any work; work in progress in <output_dir>.partial)")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in <output_dir>.partial")
    g.add_argument("--overwrite", action="store_true",
                   help="allow replacing an output dir that holds other content, and a <output_dir>.partial that "
                        "compress did not make")
    g.add_argument("--no_progress", action="store_true", help="no progress bars (logs only)")


def options_from_args(args: argparse.Namespace) -> CompressOptions:
    preset = dict(PROFILES[args.profile]) if args.profile else {}
    defaults = dict(max_seq_length=64, num_train_epochs=1, num_teacher_epochs=2, importance_samples=1024,
                    save_steps=0, max_train_samples=None, eval_before_ofa=False, lambda_ce=0.0,
                    learning_rate=3e-5, teacher_learning_rate=5e-5)
    merged = {k: (getattr(args, k) if getattr(args, k) is not None else preset.get(k, defaults[k]))
              for k in defaults}
    return CompressOptions(
        output_dir=args.output_dir, model_type=args.model_type, model_name_or_path=args.model_name_or_path,
        task_name=args.task_name, data_dir=args.data_dir, task_type=args.task_type, train_file=args.train_file,
        dev_file=args.dev_file, test_file=args.test_file,
        width_mult_list=args.width_mult_list, depth_mult_list=args.depth_mult_list, batch_size=args.batch_size,
        lambda_hidden=args.lambda_hidden, lambda_logit=args.lambda_logit,
        sampling=args.sampling, logging_steps=args.logging_steps,
        seed=args.seed, teacher_dir=args.teacher_dir, new_head=args.new_head, select_width=args.select_width,
        select_depth=args.select_depth,
        n_gpu=args.n_gpu, resume=args.resume, overwrite=args.overwrite, profile=args.profile,
        progress=not args.no_progress, eval_runtime=args.eval_runtime, time_budget_s=args.time_budget_s,
        **merged)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_cpu()  # thread and MKL settings take effect only before paddle is imported
    setup_logging()
    # paddle warns at import (no ccache, an OMP notice about data parallelism): neither applies
    with known_noise_silenced(), known_prints_dropped():
        import paddle  # noqa: F401

    from ofaserve.compress.pipeline import compress_model

    code, manifest = run_stage(lambda: compress_model(options_from_args(args)), args.output_dir,
                               "; rerun with --resume to continue")
    if code:
        return code
    per = "subnet (width, depth)" if manifest.depth_mult_list != [1.0] else "width"
    print(f"\nMetrics per {per} ({manifest.task}), compress output: {args.output_dir}\n")
    print(manifest.results_table())
    if warning := manifest.learning_warning():
        print(warning)
    for phase in ("teacher", "ofa"):
        if line := manifest.training_line(phase):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

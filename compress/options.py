"""The compress stage's settings: options, presets and default widths (no paddle here,
so the CLI can build its parser and set CPU threads before paddle is imported)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_WIDTHS = [1.0, 0.8333333333333334, 0.6666666666666666, 0.5]

PROFILES: dict[str, dict[str, Any]] = {
    # A subset, short sequences, one OFA epoch: the most `ofaserve demo` trains. Under its
    # time budget (--time_budget_s) the steps are sized to the machine (compress.step_budget).
    # Its teacher learns at 2e-4: a budget often leaves it a few dozen steps, where 5e-5 still
    # answers the majority class (benchmarks/results/teacher_learning_rate.json).
    "quick": dict(max_train_samples=2000, num_teacher_epochs=2, num_train_epochs=1, max_seq_length=64,
                  importance_samples=256, save_steps=0, eval_before_ofa=False, teacher_learning_rate=2e-4),
    # all train sentences (its time on a 2-core CPU: compress/README.md). The recipe behind
    # benchmarks/results/accuracy.json: of the recipes tried (results/history/), 3 OFA
    # epochs with a gold-label term kept width 0.6667 closest to the teacher.
    "full": dict(max_train_samples=None, num_teacher_epochs=2, num_train_epochs=3, max_seq_length=64,
                 importance_samples=1024, save_steps=106, eval_before_ofa=True, lambda_ce=0.5),
}


@dataclass
class CompressOptions:
    output_dir: str
    model_type: str = "bert"
    model_name_or_path: str = "minilm-l6"
    task_name: str = "rt-polarity"
    data_dir: str | None = None  # GLUE's files for a GLUE --task_name
    task_type: str | None = None  # classification | regression, for --train_file tasks
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    width_mult_list: list[float] = field(default_factory=lambda: list(DEFAULT_WIDTHS))
    # fractions of the encoder's layers kept (core.subnet.Depth); 1.0 alone: widths only
    depth_mult_list: list[float] = field(default_factory=lambda: [1.0])
    max_seq_length: int = 64
    batch_size: int = 32
    learning_rate: float = 3e-5
    teacher_learning_rate: float = 5e-5
    num_train_epochs: float = 1
    num_teacher_epochs: float = 2
    max_train_samples: int | None = None
    importance_samples: int = 1024
    lambda_hidden: float = 0.1
    lambda_logit: float = 1.0
    lambda_ce: float = 0.0
    sampling: str = "all"
    logging_steps: int = 20
    save_steps: int = 0
    eval_before_ofa: bool = False
    seed: int = 42
    teacher_dir: str | None = None
    new_head: bool = False  # a fine-tuned model's own head is dropped and a new one fine-tuned
    select_width: float | None = None
    select_depth: float | None = None  # with select_width: the subnet whose dev score picks the checkpoint
    n_gpu: int = 1
    resume: bool = False
    overwrite: bool = False
    profile: str | None = None
    progress: bool = True
    eval_runtime: str = "paddle-inference"  # or "dygraph" (compress.evaluation)
    time_budget_s: float | None = None  # None: the profile's work as written (compress.step_budget)

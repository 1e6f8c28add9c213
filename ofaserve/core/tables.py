"""Tables printed by several stages, from their manifests."""
from __future__ import annotations

from ofaserve.core.tasks import TaskSpec, TaskType

_SHORT = {"accuracy": "acc", "f1": "F1", "matthews": "MCC", "pearson": "Pearson", "spearman": "Spearman"}
_SPLIT_ORDER = ("dev", "dev_mismatched", "test")


def results_table(res: dict, spec: TaskSpec) -> str:
    """The metrics-per-width table (markdown) of a compress run's ``results``: every metric of
    the task on every evaluation split, and each width's difference from the teacher in the
    main metric on the report split with its 95% interval."""
    splits = [s for s in _SPLIT_ORDER if s in res["teacher"]]
    splits += [s for s in res["teacher"] if s not in splits]
    report = res.get("report_split", "test")
    metric = res.get("metric", spec.main_metric)
    cols = [(s, m) for s in splits for m in spec.metrics]
    head = ("| model | " + " | ".join(f"{s} {_SHORT.get(m, m)}" for s, m in cols)
            + f" | {report} {_SHORT.get(metric, metric)} - teacher (95% CI) |")
    rows = [head, "|" + "---|" * (len(cols) + 2)]

    def cells(r: dict) -> str:
        return " | ".join(f"{r[s][m]:.4f}" if s in r and m in r[s] else "n/a" for s, m in cols)

    rows.append(f"| teacher | {cells(res['teacher'])} | |")
    for w, r in res["widths"].items():
        vs = (r.get(report) or {}).get("vs_teacher")
        ci = f"{vs['diff']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]" if vs else "n/a"
        rows.append(f"| width {w} | {cells(r)} | {ci} |")
    return "\n".join(rows)


def learning_warning(res: dict, spec: TaskSpec) -> str | None:
    """A warning when the teacher did not learn the task: its dev accuracy within a point of
    always answering the majority class (classification), or its dev correlation near zero
    (regression). Then every width shows the same number and the table says nothing about
    compression (a budget that left too few training steps does this)."""
    dev = res["teacher"]["dev"]
    advice = "give training more time (a larger --budget_min, or --budget_min 0 for the whole profile)"
    if spec.type == TaskType.REGRESSION:
        value = dev.get(spec.main_metric)
        if value is None or value > 0.05:
            return None
        return (f"warning: the teacher's dev {spec.main_metric} correlation is {value:.4f}: the model did not learn "
                f"the task and the widths cannot be compared; {advice}")
    majority = (res.get("majority_class") or {}).get("dev")
    teacher = dev.get("accuracy")
    if majority is None or teacher is None or teacher > majority + 0.01:
        return None
    return (f"warning: the teacher's dev accuracy {teacher:.4f} is at the majority-class rate {majority:.4f}: "
            f"the model did not learn the task and the widths cannot be compared; {advice}")

"""Tables printed by several stages, from their manifests."""
from __future__ import annotations

from ofaserve.core.subnet import results_by_subnet
from ofaserve.core.tasks import TaskSpec, TaskType

_SHORT = {"accuracy": "acc", "f1": "F1", "matthews": "MCC", "pearson": "Pearson", "spearman": "Spearman"}
_SPLIT_ORDER = ("dev", "dev_mismatched", "test")


def results_table(res: dict, spec: TaskSpec, layers: int | None = None) -> str:
    """The metrics-per-subnet table (markdown) of a compress run's ``results``: every metric of
    the task on every evaluation split, and each subnet's difference from the teacher in the
    main metric on the report split with its 95% interval; one row per width (at depth 1.0),
    then per (width, depth) of each smaller depth, and under a depth grid the same differences
    as a width x depth grid (``depth_grid``). ``layers``: the model's encoder layers, to say
    how many each depth keeps."""
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
    for sub, r in results_by_subnet(res):
        rows.append(f"| {sub.describe(layers)} | {cells(r)} | {_vs_teacher(r, report)} |")
    table = "\n".join(rows)
    grid = depth_grid(res, spec, layers)
    return table if grid is None else f"{table}\n\n{grid}"


def _vs_teacher(r: dict, report: str) -> str:
    vs = (r.get(report) or {}).get("vs_teacher")
    return f"{vs['diff']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]" if vs else "n/a"


def depth_grid(res: dict, spec: TaskSpec, layers: int | None = None) -> str | None:
    """Each subnet's report-split difference from the teacher (main metric, 95% interval) as a
    grid: widths down, depths across (with the layers each keeps). None without depths < 1."""
    entries = {(sub.width.key, sub.depth.key): r for sub, r in results_by_subnet(res)}
    depths = list(dict.fromkeys(sub.depth for sub, _ in results_by_subnet(res)))
    if len(depths) < 2:
        return None
    widths = list(dict.fromkeys(sub.width.key for sub, _ in results_by_subnet(res)))
    report = res.get("report_split", "test")
    metric = _SHORT.get(res.get("metric", spec.main_metric), res.get("metric", spec.main_metric))
    head = [f"depth {d.key}" + (f" ({len(d.layers(layers))} layers)" if layers else "") for d in depths]
    rows = [f"{report} {metric} - teacher (95% CI) | " + " | ".join(head) + " |",
            "|" + "---|" * (len(depths) + 1)]
    for w in widths:
        cells = [_vs_teacher(entries[(w, d.key)], report) if (w, d.key) in entries else "n/a" for d in depths]
        rows.append(f"| width {w} | " + " | ".join(cells) + " |")
    rows[0] = "| " + rows[0]
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

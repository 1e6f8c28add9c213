"""Tables printed by several stages, from their manifests."""
from __future__ import annotations


def results_table(manifest: dict) -> str:
    """The accuracy-per-width table (markdown), from a compress manifest."""
    res = manifest["results"]
    splits = [s for s in ("dev", "test") if s in res["teacher"]]
    head = "| model | " + " | ".join(f"{s} acc | {s} F1" for s in splits) + " | test acc - teacher (95% CI) |"
    rows = [head, "|" + "---|" * (2 * len(splits) + 2)]
    rows.append("| teacher | " + " | ".join(f"{res['teacher'][s]['accuracy']:.4f} | {res['teacher'][s]['f1']:.4f}"
                                           for s in splits) + " | |")
    for w, r in res["widths"].items():
        s_ci = r.get("test", {}).get("vs_teacher")
        ci = f"{s_ci['diff']:+.4f} [{s_ci['ci95'][0]:+.4f}, {s_ci['ci95'][1]:+.4f}]" if s_ci else "n/a"
        rows.append(f"| width {w} | " + " | ".join(f"{r[s]['accuracy']:.4f} | {r[s]['f1']:.4f}" for s in splits)
                    + f" | {ci} |")
    return "\n".join(rows)


def learning_warning(manifest: dict) -> str | None:
    """A warning when the teacher's dev accuracy is within a point of always answering the
    majority class: then every width shows the same number and the table says nothing
    about compression (a budget that left too few training steps does this)."""
    res = manifest["results"]
    majority = (res.get("majority_class") or {}).get("dev")
    teacher = res["teacher"]["dev"]["accuracy"]
    if majority is None or teacher > majority + 0.01:
        return None
    return (f"warning: the teacher's dev accuracy {teacher:.4f} is at the majority-class rate {majority:.4f}: "
            "the model did not learn the task and the widths cannot be compared; give training more time "
            "(a larger --budget_min, or --budget_min 0 for the whole profile)")

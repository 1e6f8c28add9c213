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

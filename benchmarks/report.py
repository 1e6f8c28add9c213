"""Render a benchmark report (the dict written to report.json) as Markdown and a PNG.

Pure functions of the report dict: every number printed comes from it, and the report
holds only measured values and ratios derived from them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ofaserve.benchmarks.stats import MIN_RATIO_REQUESTS, pick_full, ratio_entries
from ofaserve.core.machine import describe as describe_machine


def _f(v: Any, nd: int = 1, suffix: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}{suffix}"
    return f"{v}{suffix}"


def _ms(v: Any) -> str:
    """Latency in ms: 2 decimals below 10 ms, 1 above."""
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def ratio_cell(entry: Mapping[str, Any], key: str, nd: int = 2) -> str:
    """A ratio for a table: ``1.40x [1.35, 1.46]`` (its 95% interval); in parentheses with
    its request count, and no interval, when a cell had too few requests to mean anything."""
    x = entry.get(key)
    if x is None:
        return "-"
    if entry.get("few_requests"):
        return f"({x:.{nd}f}x; {entry.get('fewest_requests')} req.)"
    ci = entry.get("ci95")
    return f"{x:.{nd}f}x [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]" if ci else f"{x:.{nd}f}x"


def faster_sentence(entry: Mapping[str, Any], key: str, subject: str, reference: str) -> str:
    """``subject is 1.40x faster than reference (95% CI 1.35-1.46)``, or what makes the
    ratio meaningless (too few requests per cell)."""
    x = entry.get(key)
    if x is None:
        return f"{subject} vs {reference}: no ratio (a cell has no latency)"
    if entry.get("few_requests"):
        return (f"{subject} vs {reference}: {x:.2f}x from only {entry.get('fewest_requests')} measured requests "
                f"in a cell (fewer than {MIN_RATIO_REQUESTS}: not a measurement)")
    ci = entry.get("ci95")
    if not ci:
        return f"{subject} is {x:.2f}x faster than {reference}"
    tie = ": it holds 1, no difference this run can tell" if ci[0] <= 1 <= ci[1] else ""
    return f"{subject} is {x:.2f}x faster than {reference} (95% CI {ci[0]:.2f}-{ci[1]:.2f}{tie})"


def _few_note(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    if not any(e.get("few_requests") for e in entries):
        return []
    return [f"Ratios in parentheses come from fewer than {MIN_RATIO_REQUESTS} measured requests in a cell: "
            "too few to mean anything, so no interval is given for them.", ""]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _width(report: Mapping[str, Any], model: str) -> str:
    info = report.get("models", {}).get(model) or {}
    w, d = info.get("width"), info.get("depth") or 1.0
    return "-" if w is None else f"{w:.4g}" + ("" if d == 1.0 else f", depth {d:.4g}")


def _speedup_lookup(report: Mapping[str, Any]) -> dict:
    out = {}
    for s in report.get("comparisons", {}).get("speedup", []):
        key = (s["model"], s["workload"], s.get("concurrency"), s.get("runtime"))
        out[key] = s
    return out


def _speedup_cell(report: Mapping[str, Any], spd: dict, model: str, key: tuple) -> str:
    """The "faster than full" cell of a row: the full-width model is the reference."""
    models = report.get("models", {})
    if model == pick_full({m: (i or {}).get("width") for m, i in models.items()},
                          {m: (i or {}).get("depth") for m, i in models.items()}):
        return "reference"
    return ratio_cell(spd.get(key, {}), "faster_than_full_x")


def render_markdown(report: Mapping[str, Any]) -> str:
    spd = _speedup_lookup(report)
    out = [*_md_header(report), *_md_served(report, spd), *_md_in_process(report, spd), *_md_comparisons(report),
           *_md_notes(report)]
    return "\n".join(out) + "\n"


def _md_header(report: Mapping[str, Any]) -> list[str]:
    """Title, when, where, what was sent and how ratios read."""
    s = report.get("settings", {})
    m = report.get("machine", {})
    out = [f"# Latency benchmark: {', '.join(report.get('models', {}))}", ""]
    out.append(f"- date: {report.get('date')}; command: `{report.get('command')}`")
    out.append(f"- machine: {describe_machine(m)}, {m.get('platform')}")
    ls, le = m.get("load_start") or {}, m.get("load_end") or {}
    if ls:
        busy = ls.get("cpu_busy_percent")
        out.append(f"- load average (1 min) before / after the run: {_f(ls.get('loadavg_1m'), 2)} / "
                   f"{_f(le.get('loadavg_1m'), 2)}" + ("" if busy is None else
                                                       f"; CPU in use just before it: {busy:.0f}%"))
    if m.get("busy_warning"):
        out.append(f"- **warning**: {m['busy_warning']}")
    vers = report.get("versions", {})
    out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    srv = report.get("server", {})
    out.append(f"- server: Triton {srv.get('version')} at {srv.get('url')} over gRPC"
               + (" (started by the benchmark)" if srv.get("started_by_bench") else ""))
    out.append(f"- load: batch {s.get('batch_size')}, closed loop, concurrency {s.get('concurrency')}, "
               + (f"{s.get('requests')} requests" if s.get("requests") else f"{s.get('duration_s')} s")
               + f" per model/workload/concurrency in {s.get('rounds')} interleaved rounds, "
               f"warmup {s.get('warmup')} per chunk, seed {s.get('seed')}")
    for wname, winfo in report.get("workloads", {}).items():
        desc = ", ".join(f"{k} {_f(v, 2)}" for k, v in winfo.items() if k != "seed")
        out.append(f"- workload `{wname}`: {desc}")
    out.append("- queue / compute ms: Triton's statistics per request (deltas over the measured requests), "
               "summed over tokenizer + encoder + postprocess for the ensemble")
    method = (report.get("comparisons") or {}).get("method") or {}
    if method:
        out.append(f"- ratios: \"N.NNx faster\" is {method['ratio']}; [lo, hi] is its {method['interval']}")
    few = [e for e in ratio_entries(report.get("comparisons") or {}) if e.get("few_requests")]
    if few:
        out.append(f"- **warning**: {len(few)} ratio(s) come from fewer than {MIN_RATIO_REQUESTS} measured requests "
                   f"in a cell (fewest: {min(e['fewest_requests'] for e in few)}): they are in parentheses and mean "
                   "nothing; rerun with more --requests (or a larger --time_budget_s)")
    out.append("")

    return out


def _md_served(report: Mapping[str, Any], spd: dict) -> list[str]:
    """One table per workload of what Triton served, every concurrency."""
    s, out = report.get("settings", {}), []
    results = report.get("results", [])
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    for wname in workloads:
        concs = sorted({r["concurrency"] for r in results if r["workload"] == wname})
        title = {"fixed": f"fixed batch {s.get('batch_size')} x seq {s.get('seq_len')} -> encoder",
                 "real": f"real text batch {s.get('batch_size')} -> ensemble (server-side tokenization)"}.get(wname, wname)
        out.append(f"## Triton gRPC, {title}")
        out.append("")
        rows = []
        for c in concs:
            for r in [r for r in results if r["workload"] == wname and r["concurrency"] == c]:
                lat = r["latency_ms"]
                ss = r.get("server_pipeline") or {}
                acc = r["accounting"]
                rows.append([r["model"], _width(report, r["model"]), r.get("runtime", "-"), c,
                             _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"]), _ms(lat["mean"]),
                             _f(r.get("throughput_sps")),
                             _speedup_cell(report, spd, r["model"], (r["model"], wname, c, None)),
                             _f(ss.get("queue_ms"), 2), _f(ss.get("compute_ms"), 1),
                             f"{acc['sent']}/{acc['ok']}/{acc['errors']}"])
        out.append(md_table(["model", "width", "runtime", "conc", "p50 ms", "p90 ms", "p99 ms", "mean ms",
                             "sent/s", "faster than full (p50, 95% CI)", "queue ms", "compute ms", "sent/ok/err"],
                            rows))
        out.append("")

    return out


def _md_in_process(report: Mapping[str, Any], spd: dict) -> list[str]:
    """The same model files and runtimes without the server."""
    out: list[str] = []
    base = report.get("baselines", [])
    if base:
        out.append("## In-process (same model file and runtime, no server, sequential)")
        out.append("")
        rows = []
        for b in base:
            lat = b["latency_ms"]
            rows.append([b["model"], _width(report, b["model"]), b["workload"], b["runtime"],
                         "yes" if b.get("served_runtime") else "no",
                         _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"]), _f(b.get("throughput_sps")),
                         _speedup_cell(report, spd, b["model"], (b["model"], b["workload"], None, b["runtime"]))])
        out.append(md_table(["model", "width", "workload", "runtime", "served", "p50 ms", "p90 ms", "p99 ms",
                             "sent/s", "faster than full (p50, 95% CI)"], rows))
        out.append("")

    return out


def _md_comparisons(report: Mapping[str, Any]) -> list[str]:
    """Serving overhead, real text against fixed, runtimes against the served one."""
    s, out = report.get("settings", {}), []
    cmp_ = report.get("comparisons", {})
    if cmp_.get("serving_overhead"):
        out.append("## Serving overhead: how much faster in-process is than Triton gRPC (p50, concurrency 1)")
        out.append("")
        out.append(md_table(["model", "workload", "runtime", "triton p50 ms", "in-process p50 ms",
                             "in-process faster (95% CI)", "added ms"],
                            [[o["model"], o["workload"], o["runtime"], _ms(o["triton_ms"]), _ms(o["in_process_ms"]),
                              ratio_cell(o, "in_process_faster_x", 3), _ms(o["added_ms"])]
                             for o in cmp_["serving_overhead"]]))
        out.append("")
    if cmp_.get("real_vs_fixed"):
        out.append(f"## Real text vs fixed seq {s.get('seq_len')}: how much faster a real-text request is "
                   "(p50, same model and concurrency)")
        out.append("")
        out.append(md_table(["model", "conc", "real p50 ms", "fixed p50 ms", "real text faster (95% CI)"],
                            [[x["model"], x["concurrency"], _ms(x["real_ms"]), _ms(x["fixed_ms"]),
                              ratio_cell(x, "real_faster_x")] for x in cmp_["real_vs_fixed"]]))
        out.append("")
    if cmp_.get("runtimes"):
        out.append("## Runtimes and precisions in-process: how much faster than the served runtime (p50)")
        out.append("")
        out.append(md_table(["model", "workload", "runtime", "p50 ms", "served runtime", "served p50 ms",
                             "faster than served (95% CI)"],
                            [[x["model"], x["workload"], x["runtime"], _ms(x["runtime_ms"]), x["served_runtime"],
                              _ms(x["served_ms"]), ratio_cell(x, "faster_than_served_x")] for x in cmp_["runtimes"]]))
        out.append("")
    out += _few_note(ratio_entries(cmp_))
    return out


def _md_notes(report: Mapping[str, Any]) -> list[str]:
    """Notes, errors and where the plot and the raw latencies are."""
    results, out = report.get("results", []), []
    notes = report.get("baseline_notes") or []
    if notes:
        out.append("Notes: " + "; ".join(notes))
        out.append("")
    errs = [r for r in results if r["accounting"]["errors"]]
    if errs:
        out.append("## Errors")
        out.append("")
        for r in errs:
            out.append(f"- {r['model']} {r['workload']} c={r['concurrency']}: {r['accounting']['errors_by_kind']} "
                       f"e.g. {r['accounting']['error_examples']}")
        out.append("")
    no_panel = "" if concurrency_panel(results) else " (no latency-vs-concurrency panel: one concurrency level measured)"
    out.append(f"Plot: `{report.get('plot', 'latency.png')}`{no_panel}. Raw per-request latencies are in report.json.")
    return out


def concurrency_panel(results: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the plot has a latency-vs-concurrency panel: only with two or more levels
    (one level is one point per line, which says nothing about concurrency)."""
    return len({r["concurrency"] for r in results}) >= 2


def render_plot(report: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per workload: p50 latency by width for each runtime/precision (Triton at
    the lowest concurrency and in-process), and, when two or more concurrency levels were
    measured, one of p50 latency (whisker up to p99) vs concurrency."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.get("results", [])
    base = report.get("baselines", [])
    models = list(report.get("models", {}))
    workloads = list(dict.fromkeys([r["workload"] for r in results] + [b["workload"] for b in base]))
    panels = max(1, len(workloads) + concurrency_panel(results))
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    axes = axes[0]
    cmin = min((x["concurrency"] for x in results), default=1)

    # one panel per workload: grouped bars, one group per model (width), one bar per runtime
    for ax, wname in zip(axes, workloads):
        series: dict[str, dict[str, float]] = {}
        for r in results:
            if r["workload"] == wname and r["concurrency"] == cmin and r["latency_ms"]["p50"] is not None:
                series.setdefault(f"0 Triton gRPC {r.get('runtime', '')} (c={cmin})", {})[r["model"]] = r["latency_ms"]["p50"]
        for b in base:
            if b["workload"] == wname and b["latency_ms"]["p50"] is not None:
                series.setdefault(f"1 in-process {b['runtime']}", {})[b["model"]] = b["latency_ms"]["p50"]
        n = max(len(series), 1)
        bw = 0.8 / n
        for k, (label, vals) in enumerate(sorted(series.items())):
            xs = [i + (k - (n - 1) / 2) * bw for i, mname in enumerate(models) if mname in vals]
            ys = [vals[mname] for mname in models if mname in vals]
            bars = ax.bar(xs, ys, bw, label=label[2:])
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([f"{mname}\nwidth {_width(report, mname)}" for mname in models])
        ax.set_ylabel("p50 latency per batch (ms)")
        s = report.get("settings", {})
        what = (f"fixed batch {s.get('batch_size')} x seq {s.get('seq_len')}" if wname == "fixed"
                else f"real text, batch {s.get('batch_size')}" if wname == "real" else wname)
        ax.set_title(f"{what}: by width and runtime/precision", fontsize=10)
        top = max((v for vals in series.values() for v in vals.values()), default=1.0)
        ax.set_ylim(0, top * (1.15 + 0.07 * n))  # room for the legend above the bars
        ax.legend(fontsize=7, loc="upper right")

    if concurrency_panel(results):
        _latency_vs_concurrency(axes[-1], models, results)
    fig.suptitle(f"{report.get('machine', {}).get('cpu')} | {report.get('date')}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial.png")  # renamed into place: a reader never sees half a plot
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _latency_vs_concurrency(ax, models: Sequence[str], results: Sequence[Mapping[str, Any]]) -> None:
    """p50 latency per model and workload against concurrency, with a whisker up to p99."""
    for mname in models:
        for wname in dict.fromkeys(r["workload"] for r in results):
            rows = sorted((r for r in results if r["model"] == mname and r["workload"] == wname
                           and r["latency_ms"]["p50"] is not None), key=lambda r: r["concurrency"])
            if not rows:
                continue
            cs = [r["concurrency"] for r in rows]
            p50 = [r["latency_ms"]["p50"] for r in rows]
            lo = [0.0] * len(rows)
            hi = [r["latency_ms"]["p99"] - p for p, r in zip(p50, rows)]
            ax.errorbar(cs, p50, yerr=[lo, hi], marker="o", capsize=3, label=f"{mname} [{wname}] p50 (bar: p99)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("latency per batch (ms)")
    ax.set_title("Triton gRPC latency vs concurrency")
    ax.legend(fontsize=7)

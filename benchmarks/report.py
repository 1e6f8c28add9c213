"""Render a benchmark report (the dict written to report.json) as Markdown and a PNG.

Pure functions of the report dict: every number printed comes from it, and the report
holds only measured values and ratios derived from them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


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


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _width(report: Mapping[str, Any], model: str) -> str:
    w = (report.get("models", {}).get(model) or {}).get("width")
    return "-" if w is None else f"{w:.4g}"


def _speedup_lookup(report: Mapping[str, Any]) -> dict:
    out = {}
    for s in report.get("comparisons", {}).get("speedup", []):
        key = (s["model"], s["workload"], s.get("concurrency"), s.get("runtime"))
        out[key] = s
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    s = report.get("settings", {})
    m = report.get("machine", {})
    out = [f"# Latency benchmark: {', '.join(report.get('models', {}))}", ""]
    out.append(f"- date: {report.get('date')}; command: `{report.get('command')}`")
    out.append(f"- machine: {m.get('cpu')} ({m.get('cores')} cores), {m.get('platform')}")
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
    out.append("")

    spd = _speedup_lookup(report)
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
                sp = spd.get((r["model"], wname, c, None), {})
                acc = r["accounting"]
                rows.append([r["model"], _width(report, r["model"]), r.get("runtime", "-"), c,
                             _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"]), _ms(lat["mean"]),
                             _f(r.get("throughput_sps")),
                             _f(sp.get("speedup"), 2, "x"),
                             _f(ss.get("queue_ms"), 2), _f(ss.get("compute_ms"), 1),
                             f"{acc['sent']}/{acc['ok']}/{acc['errors']}"])
        out.append(md_table(["model", "width", "runtime", "conc", "p50 ms", "p90 ms", "p99 ms", "mean ms",
                             "sent/s", "speedup (p50)", "queue ms", "compute ms", "sent/ok/err"], rows))
        out.append("")

    base = report.get("baselines", [])
    if base:
        out.append("## In-process (same model file and runtime, no server, sequential)")
        out.append("")
        rows = []
        for b in base:
            lat = b["latency_ms"]
            sp = spd.get((b["model"], b["workload"], None, b["runtime"]), {})
            rows.append([b["model"], _width(report, b["model"]), b["workload"], b["runtime"],
                         "yes" if b.get("served_runtime") else "no",
                         _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"]), _f(b.get("throughput_sps")),
                         _f(sp.get("speedup"), 2, "x")])
        out.append(md_table(["model", "width", "workload", "runtime", "served", "p50 ms", "p90 ms", "p99 ms",
                             "sent/s", "speedup (p50)"], rows))
        out.append("")

    cmp_ = report.get("comparisons", {})
    if cmp_.get("serving_overhead"):
        out.append("## Serving overhead (Triton gRPC p50 at concurrency 1 / in-process p50)")
        out.append("")
        out.append(md_table(["model", "workload", "runtime", "triton p50 ms", "in-process p50 ms", "ratio", "added ms"],
                            [[o["model"], o["workload"], o["runtime"], _ms(o["triton_ms"]), _ms(o["in_process_ms"]),
                              _f(o["ratio"], 3, "x"), _ms(o["added_ms"])] for o in cmp_["serving_overhead"]]))
        out.append("")
    if cmp_.get("real_vs_fixed"):
        out.append(f"## Real text vs fixed seq {s.get('seq_len')} (p50 ratio, same model and concurrency)")
        out.append("")
        out.append(md_table(["model", "conc", "real p50 ms", "fixed p50 ms", "ratio"],
                            [[x["model"], x["concurrency"], _ms(x["real_ms"]), _ms(x["fixed_ms"]), _f(x["ratio"], 3, "x")]
                             for x in cmp_["real_vs_fixed"]]))
        out.append("")
    if cmp_.get("runtimes"):
        out.append("## Runtimes and precisions in-process (speedup over the served runtime, p50)")
        out.append("")
        out.append(md_table(["model", "workload", "runtime", "p50 ms", "served runtime", "served p50 ms", "speedup"],
                            [[x["model"], x["workload"], x["runtime"], _ms(x["runtime_ms"]), x["served_runtime"],
                              _ms(x["served_ms"]), _f(x["speedup_vs_served"], 2, "x")] for x in cmp_["runtimes"]]))
        out.append("")
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
    out.append(f"Plot: `{report.get('plot', 'latency.png')}`. Raw per-request latencies are in report.json.")
    return "\n".join(out) + "\n"


def render_plot(report: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per workload: p50 latency by width for each runtime/precision (Triton at
    the lowest concurrency and in-process), and one of p50 latency (whisker up to p99)
    vs concurrency."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.get("results", [])
    base = report.get("baselines", [])
    models = list(report.get("models", {}))
    workloads = list(dict.fromkeys([r["workload"] for r in results] + [b["workload"] for b in base]))
    fig, axes = plt.subplots(1, len(workloads) + 1, figsize=(6.5 * (len(workloads) + 1), 4.8), squeeze=False)
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

    # last panel: latency vs concurrency
    ax = axes[-1]
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
    fig.suptitle(f"{report.get('machine', {}).get('cpu')} | {report.get('date')}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

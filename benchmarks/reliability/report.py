"""The Markdown report (benchmarks/results/reliability*.md) of a run's JSON."""
from __future__ import annotations

import json
from typing import Any

from ofaserve.benchmarks.reliability.probes import MIB


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Reliability report ({r['created']})", "",
             f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores"
             + (f" ({' '.join(r['machine']['cpu_flags'])})" if r['machine'].get('cpu_flags') else "")
             + f"; Triton {r.get('triton', '2.51.0')} "
             f"(nvidia-pytriton wheel), python backend, loopback gRPC.", "",
             f"Command: `{r['command']}`", ""]
    for m in r.get("models", []):
        lines += _model_lines(m)
    if r.get("faults"):
        lines += _faults_lines(r["faults"])
    if r.get("export"):
        lines += _export_lines(r["export"])
    for g in r.get("memory_growth", []):
        lines += _memory_lines(g)
    lines += _overload_lines(r.get("overload", []))
    lines += _oversized_lines(r.get("oversized", []))
    if r.get("shm"):
        lines += _shm_lines(r["shm"])
    return "\n".join(lines) + "\n"


def _model_lines(m: dict[str, Any]) -> list[str]:
    """One model's load, /dev/shm growth and bad-input sections."""
    lines: list[str] = []
    L, mem, bad = m["load"], m["load"]["memory"], m["bad_input"]
    lines += [f"## Model: {m['model']['kind']} ({m['served_name']}, {m['model']['path']})", "",
              f"Repository: {m['repository']}", "",
              "### Load", "",
              f"- {L['requests']} ensemble requests x {L['batch_size']} sentences, concurrency {L['concurrency']}, "
              f"client timeout {L['client_timeout_s']} s: sent {L['sent']}, ok {L['ok']}, errors {L['errors']}, "
              f"lost {L['lost']} (balanced: {L['balanced']}); {L['wall_s']:.1f} s, {L['requests_per_s']:.0f} req/s",
              f"- latency ms: p50 {L['latency_ms']['p50']:.2f}, p99 {L['latency_ms']['p99']:.2f}, "
              f"max {L['latency_ms']['max']:.2f}",
              f"- RSS (tritonserver + stubs, {mem['n_samples']} samples): start {mem['rss_start_mib']:.1f} MiB, "
              f"after warm-up ({L['warmup_requests']} req) {mem['rss_after_warmup_mib']:.1f}, max "
              f"{mem['rss_max_mib']:.1f}, end {mem['rss_end_mib']:.1f}; growth after warm-up "
              f"{mem['growth_after_warmup_mib']:+.1f} MiB; slope {_fmt(mem['slope_mib_per_1000_requests'])} "
              f"MiB / 1,000 requests",
              "- per process at the end (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in mem['per_process_end_mib'].items()),
              f"- /dev/shm of the stubs: {mem['shm_bytes_start'] / MIB:.1f} MiB at start, max "
              f"{mem['shm_bytes_max'] / MIB:.1f}, end {mem['shm_bytes_end'] / MIB:.1f}",
              f"- checks (RSS growth bound {L['bounds']['rss_growth_after_warmup_mib']:.0f} MiB): "
              + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in L["checks"].items()), "",
              "### /dev/shm region size (MiB) after one request of N MiB of text (8 sentences)", "",
              "| payload MiB | " + " | ".join(m["shm_growth"][0]["region_mib"]) + " | error |",
              "|---|" + "---|" * (len(m["shm_growth"][0]["region_mib"]) + 1)]
    cols = list(m["shm_growth"][0]["region_mib"])
    lines += [f"| {g['payload_mib']} | " + " | ".join(_fmt(g["region_mib"].get(c), 0) for c in cols)
              + f" | {g['error'] or ''} |" for g in m["shm_growth"]]
    lines += ["",
              "### Bad input concurrent with good traffic", "",
              f"- good: {bad['good']['sent']} requests, ok {bad['good']['ok']}, errors {bad['good']['errors']}, "
              f"wrong answers {bad['good']['mismatches']} (max |dp| vs idle server {bad['good']['max_abs_diff']:.2e}); "
              f"hung workers {bad['hung_workers']}; models ready after: {bad['models_ready_after']}", "",
              "| case | sent | as expected | max latency s | server answer |", "|---|---|---|---|---|"]
    for name, b in bad["bad"].items():
        msg = (b.get("message") or "; ".join(b["unexpected"][:1]) or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {b['sent']} | {b['as_expected']} | {b['max_latency_s']:.2f} | {msg[:110]} |")
    lines.append("")
    return lines


def _faults_lines(f: dict[str, Any]) -> list[str]:
    """Killed stubs, a killed server, busy ports, a killed CLI."""
    lines: list[str] = []
    lines += ["## Faults", ""]
    k = f.get("encoder_stub_killed_triton")
    if k:
        lines += _stub_kill_lines(k, "Triton alone", f", watched {k['observed_s']} s", k["traffic"], "after the kill", [
            f"- Triton restarted the stub: {k['stub_restarted']}; timeline (s after kill): `{json.dumps(k['timeline'])}`",
            f"- stop(): exit code {k['stop_exit_code']} after {k['stop_s']:.1f} s"])
    k = f["encoder_stub_killed_under_load"]
    lines += _stub_kill_lines(k, f"`ofaserve serve --poll {k['cli_poll_s']}`", "", k["traffic_until_cli_exit"],
                              "between the kill and the CLI's exit", [
        f"- `ofaserve serve` exit code {k['cli_exit_code']} {_fmt(k['cli_exit_after_s'])} s after the kill: "
        f"`{k['cli_stderr'][:300]}`", f"- left behind: {k['leftovers']}"])
    s = f["tritonserver_killed"]
    lines += ["### tritonserver SIGKILLed under `ofaserve serve`", "",
              f"- exit code {s['cli_exit_code']} after {s['cli_exit_after_s']:.1f} s: `{s['cli_stderr'][:300]}`",
              f"- left behind: {s['leftovers']}", "", "### Second `ofaserve serve` on a busy port", ""]
    for proto, b in f["busy_port"].items():
        lines.append(f"- {proto}: exit {b['exit_code']} after {b['after_s']:.1f} s: `{b['stderr'][:200]}`")
    lines += ["", "### Port taken after the launcher's check (race; Triton's own behaviour)", ""]
    for proto, b in f["port_race"].items():
        lines.append(f"- {proto}: {json.dumps(b)[:400]}")
    c = f["cli_sigkilled"]
    lines += ["", "### `ofaserve serve` itself SIGKILLed", "", f"- {json.dumps(c)}", ""]
    return lines


def _export_lines(e: dict[str, Any]) -> list[str]:
    """Interrupted exports and the run after them."""
    lines: list[str] = []
    lines += ["## Interrupted `ofaserve export` (tiny compress output, previous good export in place)", "",
              f"- first export: exit {e['first_export']['exit_code']} in {e['first_export']['wall_s']:.1f} s", "",
              "| signal | sent after | exit | outcome | previous manifest unchanged | temp left | KeyboardInterrupt "
              "swallowed in a callback |", "|---|---|---|---|---|---|---|"]
    for i in e["interrupts"]:
        lines.append(f"| {i['signal']} | {i['delay_s']} s after '{i['after_line']}' | {i['exit_code']} | "
                     f"{i['outcome']} | {i['manifest_unchanged']} | {i['temp_after']} | "
                     f"{i['swallowed_in_callback']} |")
    n = e["next_run"]
    lines += ["", f"- next run: exit {n['exit_code']} in {n['wall_s']:.1f} s, loads: {n['export_loads']}, "
                  f"temp entries left: {n['temp_after']}", ""]
    return lines


def _memory_lines(g: dict[str, Any]) -> list[str]:
    """One model's memory growth against its leaking control."""
    lines: list[str] = []
    n, c = g["normal"], g["control"]
    lines += [f"## Memory growth: {g['model']['kind']} ({g['served_name']})", "",
              f"{g['requests']} ensemble requests x {g['batch_size']} sentences per server, concurrency "
              f"{g['concurrency']}; RSS of tritonserver + every python-backend stub; growth = highest total in the "
              f"second half minus the total at the middle ({g['measured_requests']} requests measured); limit "
              f"{g['limit_mib']:.0f} MiB. The control is a copy of the repository whose encoder keeps "
              f"{c['leak_bytes_per_request']:,} bytes per request ({c['leak_added_after_warmup_mib']:.0f} MiB over "
              f"the measured half); a leak above {g['smallest_leak_over_limit_bytes_per_request']:,} bytes per "
              "request exceeds the limit.", "",
              "| server | ok / sent | errors | RSS after warm-up MiB | max MiB | growth MiB | slope MiB / 1,000 req "
              "| verdict |", "|---|---|---|---|---|---|---|---|"]
    for name, run, verdict in (("repository", n, "within limit" if n["within_limit"] else "OVER LIMIT"),
                               ("control (leaking copy)", c,
                                "exceeded, as it must" if c["exceeded_limit"] else "DID NOT EXCEED")):
        lines.append(f"| {name} | {run['ok']} / {run['sent']} | {run['errors']} | "
                     f"{run['rss_after_warmup_mib']:.1f} | {run['rss_max_mib']:.1f} | {run['growth_mib']:+.1f} | "
                     f"{_fmt(run['slope_mib_per_1000_requests'])} | {verdict} |")
    lines += ["", "- growth per process in the repository's run (MiB): "
              + ", ".join(f"{k} {v:+.1f}" for k, v in n["per_process_growth_mib"].items()),
              f"- check: {'PASS' if g['ok'] else 'FAIL'} (every request answered: {g['every_request_answered']})",
              ""]
    return lines


def _shm_lines(sh: dict[str, Any]) -> list[str]:
    """/dev/shm per python-backend instance."""
    lines: list[str] = []
    lines += ["## /dev/shm per python-backend instance", ""]
    if sh.get("per_instance_max_bytes"):
        lines += [f"- region sizes seen in the runs above: {sh['per_instance_min_bytes'] / MIB:.0f} to "
                  f"{sh['per_instance_max_bytes'] / MIB:.0f} MiB per instance ({sh['note']})"]
    for g in sh.get("fresh_server", []):
        lines.append(f"- fresh server, one request of {g['payload_mib']} MiB of text (8 sentences): regions "
                     + ", ".join(f"{k} {v:.0f} MiB" for k, v in g["region_mib"].items())
                     + (f"; error {g['error']}" if g["error"] else ""))
    lines.append("")
    return lines


def _fmt(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _stub_kill_lines(k: dict, under: str, watched: str, traffic: dict, after: str, facts: list[str]) -> list[str]:
    """One encoder-stub kill: its heading, the client traffic around it, then ``facts``."""
    return [f"### Encoder stub SIGKILLed under load, {under} ({k['workers']} client threads, client timeout "
            f"{k['client_timeout_s']} s{watched})", "", *_traffic_around_kill(k, traffic, after), *facts, ""]


def _traffic_around_kill(k: dict, t: dict, after: str) -> list[str]:
    """What the client threads saw around a stub kill: in flight, sent ``after``, totals."""
    lat = t["after_latency_s"]
    return [f"- in flight at the kill: {t['in_flight']}, outcomes {t['in_flight_outcomes']}, all ended within "
            f"{_fmt(t['in_flight_max_s_after_event'])} s",
            f"- sent {after}: {t['after']}, outcomes {t['after_outcomes']}; latency median {_fmt(lat.get('median'))} s, "
            f"max {_fmt(lat.get('max'))} s; client timeouts {t['timeouts']}",
            f"- sent {k['sent']}, answered {k['answered']}, stuck client threads {k['stuck_workers']}"]


def _lat(d: dict[str, Any]) -> str:
    return "none" if not d.get("n") else f"p50 {d['p50']:.1f}, p99 {d['p99']:.1f}, max {d['max']:.1f} (n {d['n']})"


def _overload_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for o in runs:
        if "error" in o:
            lines += [f"## Overload: {o.get('served_name')}", "", f"- not run: {o['error']}", ""]
            continue
        q, loop, cap = o["queue"], o["open_loop"], o["capacity"]
        lines += [f"## Overload: {o['model']['kind']} ({o['served_name']}, {o['text_pipeline']})", "",
                  f"Queue policy: max_queue_size {q['max_queue_size']}, timeout {q['queue_timeout_ms']:g} ms, "
                  f"{q['instances']} encoder instances, max_batch_size {q['max_batch_size']}; requests of "
                  f"{o['batch_size']} sentences. One request alone: {o['single_request_ms']:.1f} ms. Capacity (closed "
                  f"loop, concurrency {cap['concurrency']}, {cap['duration_s']:g} s): {cap['per_s']:.0f} requests/s. Open "
                  f"loop (Poisson, seed {loop['seed']}) at {loop['rate_per_s']:.0f} requests/s for "
                  f"{loop['duration_s']:g} s ({o['factor']:g}x the control's capacity): offered "
                  f"{loop['offered_per_s']:.0f} requests/s (send lag p99 {loop['send_lag_ms']['p99']:.1f} ms).", "",
                  f"- outcomes: {loop['counts']}" + (f"; other errors: {loop['error_examples']}"
                                                     if loop["error_examples"] else ""),
                  f"- accepted latency ms: {_lat(o['accepted_latency_ms'])}",
                  f"- refused latency ms: {_lat(o['refused_latency_ms'])}",
                  f"- bound from the settings: {_fmt(o['accepted_bound_ms'], 1)} ms (the queue and the batches held "
                  f"outside it at the measured capacity, plus one request alone); the check allows "
                  f"{o['bound_slack']:g}x that plus {o['batcher_idle_waits_allowed']} batcher idle waits of "
                  f"{o['batcher_idle_wait_ms']:.0f} ms (Triton's dynamic batcher; serve/README.md): "
                  f"{_fmt(o['accepted_check_ms'], 0)} ms; accepted requests over {o['bound_slack']:g}x the bound: "
                  f"{o['accepted_over_slack_bound']}", "",
                  "| seconds | sent | refused share | accepted p99 ms |", "|---|---|---|---|"]
        lines += [f"| {w['from_s']:g}-{w['to_s']:g} | {w['sent']} | {_fmt(w['refused_share'])} | "
                  f"{_fmt(w['accepted_p99_ms'], 1)} |" for w in o["latency_over_time"]]
        c = o.get("control")
        if c and "error" not in c:
            lines += ["", f"Control: the same repository with Triton's unbounded queue and one encoder instance "
                          f"(`ofaserve repo --max_queue_size 0`), run first: capacity {c['capacity']['per_s']:.0f} requests/s, "
                          f"the open-loop rate above is {o['factor']:g}x that: outcomes {c['open_loop']['counts']}; "
                          f"accepted latency ms: {_lat(c['accepted_latency_ms'])}; over the check's "
                          f"{_fmt(o['accepted_check_ms'], 0)} ms: {c['exceeded_check']}.", "",
                      *_accepted_p99_table("control", c["latency_over_time"])]
        lone = o.get("lone_instance")
        if lone and "error" not in lone:
            lc = lone["open_loop"]["counts"]
            lines += ["", "Lone-instance copy: the same repository with each queued model cut to one instance "
                          f"(what two instances avoid), the same rate: outcomes {lc}; answered "
                          f"{lc['ok'] / lone['open_loop']['duration_s']:.0f} requests/s against "
                          f"{loop['counts']['ok'] / loop['duration_s']:.0f} with {q['instances']} instances; accepted "
                          f"latency ms: {_lat(lone['accepted_latency_ms'])}.", "",
                      *_accepted_p99_table("lone instance", lone["latency_over_time"])]
        lines += ["", "- checks: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in o["checks"].items()), ""]
    return lines


def _accepted_p99_table(label: str, windows: list[dict[str, Any]]) -> list[str]:
    return ["| seconds | sent | accepted p99 ms (" + label + ") |", "|---|---|---|",
            *(f"| {w['from_s']:g}-{w['to_s']:g} | {w['sent']} | {_fmt(w['accepted_p99_ms'], 1)} |" for w in windows)]


def _oversized_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for o in runs:
        lines += [f"## Oversized requests: {o['model']['kind']} ({o['served_name']})", "",
                  f"{o['requests']} requests of {o['request_mib']:g} MiB of text ({o['rows']} rows each), "
                  f"{o['concurrency']} at a time, on a fresh server per repository; memory measured idle (after "
                  "a few good requests) and a few seconds after the flood. RSS of tritonserver + every "
                  "python-backend stub; /dev/shm regions of the stubs.", "",
                  "| repository | text limits (per text / per request, bytes) | outcome | RSS idle MiB | RSS after MiB "
                  "| /dev/shm idle MiB | /dev/shm after MiB | good answers unchanged |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, run in o["runs"].items():
            lim = run["text_limits"]
            outcome = "; ".join(f"{n} x {k[:90]}" for k, n in run["flood"]["outcomes"].items()).replace("|", "/")
            lines.append(f"| {label} | {lim['max_text_bytes']:,} / {lim['max_request_bytes']:,} | {outcome} | "
                         f"{run['idle']['rss_total_mib']:.0f} | {run['after']['rss_total_mib']:.0f} | "
                         f"{run['idle']['shm_total_mib']:.0f} | {run['after']['shm_total_mib']:.0f} | "
                         f"{run['models_ready_after'] and run['good_answers_max_abs_diff'] <= 1e-4} |")
        lines.append("")
        for label, run in o["runs"].items():
            lines.append(f"- RSS growth per process, {label} (MiB): "
                         + ", ".join(f"{k} {v:+.0f}" for k, v in run["rss_growth_by_process_mib"].items()))
        lines += ["", "- checks: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in o["checks"].items()), ""]
    return lines

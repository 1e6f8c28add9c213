"""``ofaserve bench --headline``: the tutorial's setting against ofaserve's default, served side
by side in one run, each with its accuracy next to its latency.

The two sides, each on its own Triton server (a repository holds one precision choice):

* **tutorial**: the full model (width 1.0, depth 1.0) at fp32, every batch of 16 padded to
  128 tokens, as the PaddleNLP OFA tutorial serves it (``ofaserve repo --precision fp32`` on
  the full-width export). Its latency requests are 16 x 128 token batches sent to
  ``{m}_encoder`` with no pad token in them: a padded batch costs the same whatever its
  tokens, and the served encoder, which drops pads, then runs all 128 positions as the
  tutorial's static graph does (a packed graph, given no pads, keeps the 16 rows of 128 as
  they are; ``sides.tutorial.encoder_artifact`` says which graph served). Its accuracy is
  measured on the task's real dev and test sentences, tokenized here and padded to 128.
* **default**: the subnet ``ofaserve export --width_mult auto`` chose, at the precision
  ``ofaserve repo --precision auto`` chose, with the served encoder's packing: the task's
  real dev sentences sent as text to the ``{m}`` text model, 16 per request.

Latency is measured in rounds (ABBA: the sides alternate which goes first) at concurrency
1; ``speedup`` is the tutorial's p50 over the default's, with the bench's 95% bootstrap
interval over the run's requests. ``accuracy`` scores both sides' served answers on dev and
test and the paired-bootstrap interval of the difference. Writes ``headline.json`` and
``headline.md`` to ``--output_dir``.
"""
from __future__ import annotations

import datetime as _dt
import shlex
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.benchmarks import inprocess, stats
from ofaserve.benchmarks.loadgen import Target, round_order, run_closed_loop, split_counts
from ofaserve.benchmarks.report import faster_sentence
from ofaserve.benchmarks.server_queries import connect, read_repo_manifest, real_text_encoder, versions
from ofaserve.benchmarks.workloads import fixed_workload, real_text_workload
from ofaserve.core.errors import OfaserveError
from ofaserve.core.files import write_json, write_text
from ofaserve.core.outputs import check_report_dir
from ofaserve.core.machine import describe as describe_machine, machine_info
from ofaserve.core.manifests import CompressManifest, RepoManifest, RepoModel, now_iso
from ofaserve.core.metrics import paired_bootstrap, score
from ofaserve.core.subnet import Subnet
from ofaserve.core.tasks import Split, TaskData, TaskType, load_task
from ofaserve.serve.client import classify
from ofaserve.serve.server import TritonServer, free_port

PROG = "ofaserve bench --headline"
SIDES = ("tutorial", "default")
HEADLINE_FILES = ("headline.json", "headline.md")  # what a run writes to --output_dir
HEADLINE_CONCURRENCY = 1  # the tutorial's setting: one batch of 16 at a time


@dataclass
class Side:
    """One side of the headline: its repository, its model and the server that serves it."""
    name: str
    repo: Path
    manifest: RepoManifest
    model: str
    url: str = ""
    client: Any = None
    record: dict[str, Any] = field(default_factory=dict)
    chunks: list = field(default_factory=list)

    @property
    def entry(self) -> RepoModel:
        return self.manifest.models[self.model]

    @property
    def subnet(self) -> Subnet:
        return Subnet.of(self.entry.width_mult, self.entry.depth_mult)


def read_repository(repo: Path, flag: str) -> RepoManifest:
    if not repo.is_dir():
        raise OfaserveError(f"{flag} {repo} does not exist or is not a folder")
    manifest = read_repo_manifest(repo)
    if manifest is None or not manifest.models:
        raise OfaserveError(f"{flag} {repo} has no readable manifest.json with models: pass a folder written by "
                            "`ofaserve repo`")
    return manifest


def pick_model(manifest: RepoManifest, asked: str | None, flag: str, repo: Path) -> str:
    models = list(manifest.models)
    if asked:
        if asked not in models:
            raise OfaserveError(f"{flag}: {asked!r} is not in {repo} (models: {', '.join(models)})")
        return asked
    if len(models) != 1:
        raise OfaserveError(f"{repo} serves {len(models)} models ({', '.join(models)}): name the one to use")
    return models[0]


def check_sides(tutorial: Side, default: Side) -> None:
    """The tutorial side is the full model at fp32; the default side is what ofaserve chose:
    a subnet picked by ``--width_mult auto`` at the precision ``--precision auto`` picked."""
    t = tutorial.entry
    if tutorial.subnet != Subnet.of(1.0, 1.0) or t.precision != "fp32":
        raise OfaserveError(
            f"--tutorial_repository: {tutorial.model} is {tutorial.subnet.describe()} at {t.precision}; the "
            "tutorial's setting is the full model at fp32 (`ofaserve repo --export_dir <width 1.0 export> "
            "--precision fp32`)")
    if default.manifest.precision != "auto":
        raise OfaserveError(f"--model_repository: {default.repo} was built with --precision "
                            f"{default.manifest.precision}; ofaserve's default is --precision auto")
    if not default.entry.selection:
        raise OfaserveError(f"--model_repository: {default.model} was exported at a width named by hand; ofaserve's "
                            "default is the subnet `ofaserve export --width_mult auto` chooses")


def encoder_logits(client, model: str, ids: np.ndarray, types: np.ndarray, timeout: float) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    inputs = [grpcclient.InferInput("input_ids", list(ids.shape), "INT64"),
              grpcclient.InferInput("token_type_ids", list(types.shape), "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(types)
    out = client.infer(f"{model}_encoder", inputs, outputs=[grpcclient.InferRequestedOutput("logits")],
                       client_timeout=timeout)
    return out.as_numpy("logits")


def in_task_order(names: list[str], outputs: np.ndarray, data: TaskData, model: str) -> np.ndarray:
    """A classifier's output columns (in the model's label order ``names``) in the task's."""
    if data.spec.type == TaskType.REGRESSION:
        return outputs.reshape(-1, 1)
    if sorted(n.lower() for n in names) != sorted(n.lower() for n in data.labels):
        raise OfaserveError(f"{model} answers labels {names}, the task {data.name} has {data.labels}: pass the "
                            "--task the model was trained on")
    where = {n.lower(): i for i, n in enumerate(names)}
    return outputs[:, [where[n.lower()] for n in data.labels]]


def tutorial_outputs(side: Side, split: Split, data: TaskData, batch: int, seq_len: int,
                     timeout: float) -> np.ndarray:
    """The full model's answers to ``split``'s inputs (sentences, or pairs), tokenized as the
    server tokenizes and each batch padded to ``seq_len`` as the tutorial pads."""
    encode, inputs = real_text_encoder(side.model, side.repo, pad_to=seq_len), split.inputs()
    rows = [encoder_logits(side.client, side.model, *encode(inputs[i:i + batch]), timeout)
            for i in range(0, len(inputs), batch)]
    return in_task_order(list(side.entry.labels), np.concatenate(rows), data, side.model)


def default_outputs(side: Side, split: Split, data: TaskData, batch: int, timeout: float) -> np.ndarray:
    """The served text model's answers to ``split``'s texts (and pairs): probabilities, or scores."""
    labels = list(side.entry.labels)
    answers = classify(list(split.texts), model=side.model, batch_size=batch, labels=labels, timeout=timeout,
                       client=side.client, text_pairs=split.text_pairs)
    if data.spec.type == TaskType.REGRESSION:
        return np.array([a["score"] for a in answers], dtype=np.float32)
    probs = np.array([[a["probs"][n] for n in labels] for a in answers], dtype=np.float32)
    return in_task_order(labels, probs, data, side.model)


def accuracy(tutorial: Side, default: Side, data: TaskData, batch: int, seq_len: int,
             timeout: float) -> dict[str, Any]:
    """Both sides' metrics on dev and test (where the task has a labelled test split), from
    the served answers, and the default minus the tutorial with its paired-bootstrap interval."""
    spec, out = data.spec, {"metric": data.spec.main_metric, "tutorial": {}, "default": {},
                            "default_minus_tutorial": {}}
    for name in ("dev", "test"):
        if name not in data.splits:
            continue
        split = data.splits[name]
        t = tutorial_outputs(tutorial, split, data, batch, seq_len, timeout)
        d = default_outputs(default, split, data, batch, timeout)
        out["tutorial"][name] = score(spec, t, split.labels)
        out["default"][name] = score(spec, d, split.labels)
        out["default_minus_tutorial"][name] = paired_bootstrap(spec, d, t, split.labels)
    return out


def measure(sides: list[Side], targets: dict[str, Target], requests: int, rounds: int, warmup: int,
            timeout: float, tick=None) -> None:
    """Rounds of one chunk per side, the order alternating (ABBA), at concurrency 1."""
    per_round = split_counts(requests, rounds)
    for r in range(rounds):
        for side in round_order(sides, r):
            if warmup:
                run_closed_loop(side.url, targets[side.name], HEADLINE_CONCURRENCY, n_requests=warmup,
                                timeout_s=timeout, on_done=tick)
            side.chunks.append(run_closed_loop(side.url, targets[side.name], HEADLINE_CONCURRENCY,
                                               n_requests=per_round[r], timeout_s=timeout,
                                               start_index=sum(per_round[:r]), on_done=tick))


def side_row(side: Side) -> dict[str, Any]:
    acc = stats.Accounting()
    for ch in side.chunks:
        acc = acc.merge(ch.accounting)
    lat = [x for ch in side.chunks for x in ch.latencies_ms]
    wall = sum(ch.wall_s for ch in side.chunks)
    return {"latency_ms": stats.summarize_latencies(lat), "latencies_ms": lat, "accounting": acc.to_dict(),
            "wall_s": wall, "sentences_per_s": stats.throughput(sum(ch.sentences_ok for ch in side.chunks), wall)}


def describe_side(side: Side, workload: str, config: dict[str, Any]) -> dict[str, Any]:
    params = inprocess.config_params_from_json(config)
    entry = side.entry
    return {"model": side.model, "repository": str(side.repo), "subnet": side.subnet.key,
            "width_mult": side.subnet.width.value, "depth_mult": side.subnet.depth.value,
            "precision": entry.precision, "encoder_artifact": entry.encoder_artifact,
            "packed": "packed" in entry.encoder_artifact, "runtime": params.get("runtime"),
            "threads": params.get("threads"), "workload": workload,
            **({"selection": entry.selection} if entry.selection else {}),
            **({"precision_choice": {k: entry.precision_choice[k] for k in ("chosen", "artifact")
                                     if k in entry.precision_choice}} if entry.precision_choice else {})}


def render(record: dict[str, Any]) -> str:
    acc, metric = record["accuracy"], record["accuracy"]["metric"]
    rows = ["| side | model | subnet | precision | workload | p50 ms | "
            + " | ".join(f"{s} {metric}" for s in acc["tutorial"]) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(acc["tutorial"])]
    for name in SIDES:
        s, lat = record["sides"][name], record["latency"][name]["latency_ms"]
        p50 = "-" if lat["p50"] is None else f"{lat['p50']:.1f}"
        rows.append(f"| {name} | {s['model']} | {s['subnet']} | {s['precision']} | {s['workload']} | {p50} | "
                    + " | ".join(f"{acc[name][sp][metric]:.4f}" for sp in acc[name]) + " |")
    diffs = [f"{sp}: {d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
             for sp, d in acc["default_minus_tutorial"].items()]
    sp = record["speedup"]
    return "\n".join([
        "# Headline: the tutorial's setting against ofaserve's default", "",
        f"- date: {record['date']}; command: `{record['command']}`",
        f"- machine: {describe_machine(record['machine'])}",
        f"- {record['settings']['requests']} measured requests per side at concurrency 1, batch "
        f"{record['settings']['batch_size']}, in {record['settings']['rounds']} ABBA rounds", "",
        *rows, "",
        faster_sentence(sp, "speedup_x", "ofaserve's default", "the tutorial's setting") + ".",
        f"Default minus tutorial, {metric} (95% paired-bootstrap interval): " + "; ".join(diffs) + ".", ""])


def run(args, argv: list[str]) -> int:
    requests, rounds = _check_counts(args)
    data = _task_data(args)
    tutorial, default = _read_sides(args)
    out_dir = Path(args.output_dir or Path("runs") / "bench" / _dt.datetime.now().strftime("headline-%Y%m%d-%H%M%S"))
    check_report_dir(out_dir, HEADLINE_FILES, overwrite=args.overwrite)
    with ExitStack() as stack:
        _connect(args, stack, tutorial, default)
        record, rows = _measure_sides(args, argv, data, tutorial, default, requests, rounds)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "headline.json", record)
    write_text(out_dir / "headline.md", render(record))
    print(f"{PROG}: wrote {out_dir}/headline.json, headline.md", file=sys.stderr)
    print(render(record))
    errors = {s: rows[s]["accounting"]["errors_by_kind"] for s in SIDES if rows[s]["accounting"]["errors"]}
    if errors:
        print(f"{PROG}: measured requests failed: {errors}", file=sys.stderr)
        return 1
    return 0


def _task_data(args) -> TaskData:
    """The task both sides are scored on and the default side's sentences come from: the
    compress output's (``--compress_dir``: a GLUE task's or the user's files) or ``--task``."""
    if not args.compress_dir:
        return load_task(args.task)
    return CompressManifest.read(args.compress_dir).task_data()


def _check_counts(args) -> tuple[int, int]:
    """The measured requests per side and the rounds they are spread over, checked."""
    if args.duration is not None or args.time_budget_s is not None:
        raise OfaserveError("--headline measures --requests per side: drop --duration / --time_budget_s")
    if not args.model_repository or not args.tutorial_repository:
        raise OfaserveError("--headline needs --model_repository (ofaserve's default: an `ofaserve export "
                            "--width_mult auto` export in an `ofaserve repo --precision auto` repository) and "
                            "--tutorial_repository (the width 1.0 export at --precision fp32)")
    requests = args.requests or 60
    if requests < 1 or args.rounds < 1 or args.warmup < 0 or args.batch_size < 1 or args.seq_len < 1:
        raise OfaserveError("--requests, --rounds, --batch_size and --seq_len must be >= 1, --warmup >= 0")
    return requests, min(args.rounds, requests)


def _read_sides(args) -> tuple[Side, Side]:
    """Both repositories read and their models picked (nothing is served yet)."""
    tutorial_repo, default_repo = Path(args.tutorial_repository).resolve(), Path(args.model_repository).resolve()
    tutorial = Side("tutorial", tutorial_repo, read_repository(tutorial_repo, "--tutorial_repository"), "")
    default = Side("default", default_repo, read_repository(default_repo, "--model_repository"), "")
    tutorial.model = pick_model(tutorial.manifest, args.tutorial_model, "--tutorial_model", tutorial_repo)
    default.model = pick_model(default.manifest, (args.models or "").strip() or None, "--models", default_repo)
    check_sides(tutorial, default)
    return tutorial, default


def _connect(args, stack: ExitStack, tutorial: Side, default: Side) -> None:
    """Each side's server (started here with --start_server, stopped by ``stack``) and a
    gRPC client to it whose model is ready."""
    if args.start_server:
        for side, ports in ((default, (args.grpc_port, args.http_port, args.metrics_port)),
                            (tutorial, (free_port(), free_port(), free_port()))):
            server = TritonServer(str(side.repo), grpc_port=ports[0], http_port=ports[1], metrics_port=ports[2])
            print(f"{PROG}: starting Triton on {side.repo} ({side.name}) ...", file=sys.stderr)
            server.start(timeout=300)
            stack.callback(server.stop)
            side.url = server.grpc_url
    else:
        if not args.tutorial_url:
            raise OfaserveError("--headline without --start_server needs --tutorial_url (the server of "
                                "--tutorial_repository) next to --url")
        default.url, tutorial.url = args.url, args.tutorial_url
    for side in (tutorial, default):
        side.client = connect(side.url)
        stack.callback(side.client.close)
    for side, name in ((tutorial, f"{tutorial.model}_encoder"), (default, default.model)):
        if not side.client.is_model_ready(name):
            raise OfaserveError(f"{name} is not ready on the {side.name} server at {side.url}")


def _measure_sides(args, argv: list[str], data, tutorial: Side, default: Side, requests: int,
                   rounds: int) -> tuple[dict, dict]:
    """Both sides' accuracy through their servers, then their latency in interleaved rounds:
    the record and each side's latency row."""
    t_cfg = tutorial.client.get_model_config(f"{tutorial.model}_encoder", as_json=True).get("config", {})
    d_cfg = default.client.get_model_config(f"{default.model}_encoder", as_json=True).get("config", {})
    vocab = int(inprocess.config_params_from_json(t_cfg).get("vocab_size") or 100)
    fixed = fixed_workload(args.batch_size, args.seq_len, vocab, args.seed)
    real = real_text_workload(data.split("dev"), args.batch_size, args.seed, source=f"{data.name} dev",
                              outputs=("SCORE",) if data.spec.type == TaskType.REGRESSION else ("LABEL", "PROBS"))
    targets = {"tutorial": Target(tutorial.model, fixed, f"{tutorial.model}_encoder"),
               "default": Target(default.model, real, default.model)}
    inputs = "sentence pairs" if data.spec.pair else "sentences"
    print(f"{PROG}: scoring both sides on {data.name} dev and test through their servers ...", file=sys.stderr)
    acc = accuracy(tutorial, default, data, args.batch_size, args.seq_len, args.timeout)
    print(f"{PROG}: {requests} requests per side in {rounds} rounds ...", file=sys.stderr)
    measure([tutorial, default], targets, requests, rounds, args.warmup, args.timeout)
    rows = {side.name: side_row(side) for side in (tutorial, default)}
    try:
        server_version = default.client.get_server_metadata(as_json=True).get("version")
    except Exception:
        server_version = None
    record = {
        "date": now_iso(), "command": " ".join(["ofaserve bench", *(shlex.quote(a) for a in argv)]),
        "machine": machine_info(), "versions": versions(server_version),
        "task": data.name,
        "settings": {"batch_size": args.batch_size, "seq_len": args.seq_len, "requests": requests,
                     "rounds": rounds, "warmup": args.warmup, "concurrency": HEADLINE_CONCURRENCY,
                     "seed": args.seed},
        "sides": {"tutorial": describe_side(tutorial, f"{args.batch_size} x {args.seq_len} token ids (every "
                                                      "batch padded to the full length)", t_cfg),
                  "default": describe_side(default, f"{data.name} dev {inputs} as text, "
                                                    f"{args.batch_size} per request", d_cfg)},
        "workloads": {"tutorial": fixed.info, "default": real.info},
        "speedup": stats.faster(rows["default"], rows["tutorial"], "speedup_x", ("default", "tutorial")),
        "accuracy": acc,
        "latency": rows,
    }
    return record, rows

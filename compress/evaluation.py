"""Dev/test scoring of the teacher and every width through Paddle Inference.

The results table (teacher and every width, dev and test) and the checkpoint choice
score whole splits. Paddle dygraph runs those forward passes several times slower on
CPU than Paddle Inference with oneDNN running the same fp32 graph (benchmarks/results/
compress_eval.json has both on one machine). So each model to score is written as a
Paddle static model, the export's own path (``paddle.jit.to_static`` + ``jit.save``;
a width is first sliced out as a plain sub model), into a scratch folder and loaded once
by the serving runtime's Paddle Inference runner.

Parity is part of the scoring: every static model is run next to its dygraph reference
(the supernet at that width, or the teacher) on a probe batch first. Beyond
``TOLERANCE`` in the logits, or if writing or loading the static model fails, that
model is scored in dygraph instead; the record says which and why.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ofaserve.compress.submodel import build_sub_model, save_static as _save_static
from ofaserve.core.subnet import Subnet
from ofaserve.core.quiet import known_noise_silenced
from ofaserve.compress.bert import build_classifier
from ofaserve.runtime.runtimes import default_threads, load_runner

log = logging.getLogger("ofaserve.compress")

TOLERANCE = 1e-4  # max abs logits difference vs dygraph, the export's parity bound
RUNTIME = "paddle-inference (oneDNN, fp32)"

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Scorer:
    """Logits functions for whole-split scoring, static where it is proven equal.

    ``scratch``: a folder this object owns (removed by ``close``). ``probe``: the
    (input_ids, token_type_ids) batch every static model is checked on. ``static=False``
    scores everything in dygraph (``--eval_runtime dygraph``).
    """

    def __init__(self, scratch: Path, probe: tuple[np.ndarray, np.ndarray], static: bool = True):
        self.scratch, self.probe, self.static = Path(scratch), probe, static
        self._cache: dict[tuple[str, Any], Logits] = {}
        self.models: dict[str, dict] = {}
        self.setup_s: list[float] = []

    # ------------------------------------------------------------------ public
    def teacher(self, model, version: Any = None) -> Logits:
        """The plain classifier ``model`` (its weights as of ``version``)."""
        from ofaserve.compress.train import model_logits_fn

        def build():
            # a copy: to_static converts the layer it is given, and the teacher keeps training
            # or teaching in dygraph (the OFA phase reads its hidden states through hooks)
            copy = build_classifier(dict(model.config.to_dict()))
            copy.set_state_dict(model.state_dict())
            copy.eval()
            return copy

        return self._get("teacher", version, model_logits_fn(model), build)

    def width(self, supernet, width: float, version: Any = None, depth: float = 1.0) -> Logits:
        """The supernet at ``width`` (and ``depth``; its weights as of ``version``), sliced to a
        plain model."""
        from ofaserve.compress.train import supernet_logits_fn

        def build():
            cfg, state = supernet.slice_subnet(width, depth)
            sub = build_sub_model(cfg)
            sub.set_state_dict(state)
            sub.eval()
            return sub

        return self._get(Subnet.of(width, depth).key, version, supernet_logits_fn(supernet, width, depth), build)

    def record(self) -> dict:
        used = [m for m in self.models.values() if m["runtime"] == RUNTIME]
        return {"runtime": RUNTIME if self.static else "paddle dygraph", "tolerance": TOLERANCE,
                "models": self.models,
                "static_setup_s_mean": round(float(np.mean(self.setup_s)), 2) if self.setup_s else None,
                "dygraph_fallbacks": len(self.models) - len(used) if self.static else 0}

    def expected_setup_s(self, default: float = 5.0) -> float:
        """Seconds to write, load and check one static model, as measured so far."""
        if not self.static:
            return 0.0
        return float(np.mean(self.setup_s)) if self.setup_s else default

    def close(self) -> None:
        self._cache.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------------ internals
    def _get(self, key: str, version: Any, reference: Logits, build: Callable[[], Any]) -> Logits:
        """``reference``: the dygraph logits; ``build``: the plain model to make static."""
        if (key, version) in self._cache:
            return self._cache[(key, version)]
        for old in [k for k in self._cache if k[0] == key]:
            del self._cache[old]  # older weights of the same model: never scored again
        fn = None
        if self.static:
            t0 = time.perf_counter()
            with _rng_kept(), known_noise_silenced():  # paddleslim narrates every slice
                fn = self._static(key, build(), reference)
            if fn is not None:
                self.setup_s.append(time.perf_counter() - t0)
        if fn is None:
            fn = reference
            self.models.setdefault(key, {"runtime": "paddle dygraph"})
        self._cache[(key, version)] = fn
        return fn

    def _static(self, key: str, model, reference: Logits) -> Logits | None:
        folder = self.scratch / key.replace(".", "_")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            _save_static(model, folder / "model")
            runner = _threads_kept(load_runner("paddle", folder / "model", "fp32"), default_threads())
            got, want = runner(*self.probe), reference(*self.probe)
        except Exception as e:  # scoring must not die on an export path problem: fall back, say why
            log.warning("scoring %s in dygraph: its Paddle static model failed (%s: %s)", key, type(e).__name__, e)
            self.models[key] = {"runtime": "paddle dygraph", "why": f"{type(e).__name__}: {e}"}
            return None
        diff = float(np.abs(np.asarray(got) - np.asarray(want)).max())
        if not diff <= TOLERANCE:
            log.warning("scoring %s in dygraph: its Paddle static model's logits differ by %.2e (> %.0e)",
                        key, diff, TOLERANCE)
            self.models[key] = {"runtime": "paddle dygraph", "why": f"probe max abs diff {diff:.3e} > {TOLERANCE}"}
            return None
        prev = self.models.get(key, {})
        self.models[key] = {"runtime": RUNTIME, "probe_max_abs_diff": max(diff, prev.get("probe_max_abs_diff", 0.0)),
                            "built": prev.get("built", 0) + 1}
        return runner


def _threads_kept(runner, threads: int) -> Logits:
    """Paddle Inference leaves this process's OpenMP (the libiomp5 MKL runs on) at one
    thread after a run, and the dygraph training that continues here would then run on
    one core. The count is put back after every call."""
    import paddle

    def run(input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        try:
            return runner(input_ids, token_type_ids)
        finally:
            paddle.base.core.set_num_threads(threads)

    return run


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """Building a model draws its initial weights from paddle's generator; scoring must not
    move the random stream training continues with (dropout), or scoring would change
    what is trained."""
    import paddle

    state = paddle.get_rng_state()
    try:
        yield
    finally:
        paddle.set_rng_state(state)

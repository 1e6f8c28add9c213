"""Training loops: the teacher fine-tune and OFA training (widths, and depths) with distillation."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import paddle
import paddle.nn.functional as F
from tqdm.auto import tqdm

from ofaserve.compress import distributed as dist
from ofaserve.compress import paddleslim_compat as compat
from ofaserve.compress.ofa import OfaSupernet
from ofaserve.core.batching import batches
from ofaserve.core.subnet import Depth, teacher_layers
from ofaserve.core.tasks import Split, TaskSpec, TaskType

log = logging.getLogger("ofaserve.compress")


# ----------------------------------------------------------------------------- logits functions
def model_logits_fn(model) -> Callable:
    def fn(ids, types):
        with paddle.no_grad():
            return model(paddle.to_tensor(ids), paddle.to_tensor(types)).numpy()
    return fn


def supernet_logits_fn(supernet: OfaSupernet, width: float, depth: float = 1.0) -> Callable:
    def fn(ids, types):
        return supernet.logits_numpy(ids, types, width, depth)
    return fn


# ----------------------------------------------------------------------------- schedules
def make_optimizer(parameters, lr: float, total_steps: int | Callable[[], int], warmup: float = 0.1,
                   weight_decay: float = 0.01):
    """AdamW with linear warmup and decay over ``total_steps``: an int, or a callable read at
    every step (a time-budgeted phase sets its length after timing its first steps)."""
    steps = total_steps if callable(total_steps) else (lambda: total_steps)
    scheduler = paddle.optimizer.lr.LambdaDecay(
        lr, lambda step: min((step + 1) / max(1.0, warmup * steps()),
                             max(0.0, (steps() - step) / max(1.0, (1 - warmup) * steps()))))
    opt = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=parameters, weight_decay=weight_decay,
                                 grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
                                 apply_decay_param_fun=lambda n: not any(k in n for k in ("bias", "norm")))
    return opt, scheduler


def _rename_optimizer_state(state: dict, names: dict[str, str]) -> dict:
    """Re-key an optimizer state dict: paddle keys it by auto-generated parameter names
    (``linear_12.w_0_moment1_0``) that differ between processes; checkpoints use the
    structured names (``bert.encoder.layers.0.linear1.fn.weight``) instead."""
    out = {}
    by_len = sorted(names, key=len, reverse=True)
    for key, value in state.items():
        for old in by_len:
            if key.startswith(old + "_"):
                key = names[old] + key[len(old):]
                break
        out[key] = value
    return out


def optimizer_state_for_checkpoint(opt, model) -> dict:
    return _rename_optimizer_state(opt.state_dict(), {p.name: n for n, p in model.named_parameters()})


def load_optimizer_checkpoint(opt, model, state: dict) -> None:
    opt.set_state_dict(_rename_optimizer_state(state, {n: p.name for n, p in model.named_parameters()}))


@dataclass
class PhaseStats:
    steps: int = 0
    sentences: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"steps": self.steps, "sentences": self.sentences, "seconds": round(self.seconds, 1),
                "sentences_per_s": round(self.sentences / self.seconds, 2) if self.seconds else None}


class Horizon:
    """A phase's total steps. Fixed unless a ``sizer`` (``compress.step_budget.StepSizer``) is
    given: it sees every trained step and may change the total (the LR schedule and the
    progress bar follow)."""

    def __init__(self, total: int, sizer=None, bar=None):
        self.total, self.sizer, self.bar = total, sizer, bar

    def __call__(self) -> int:
        return self.total

    def after_step(self, step: int, stats: PhaseStats) -> None:
        if self.sizer is None:
            return
        new = self.sizer(step, stats, self.total)
        if new != self.total:
            self.total = new
            if self.bar is not None:
                self.bar.total = new
                self.bar.refresh()


# ----------------------------------------------------------------------------- losses
def gold_loss(spec: TaskSpec, outputs, labels):
    """The loss against the gold labels (numpy or a tensor): cross-entropy over the classes,
    or the squared error of the score (a one-output head, as PaddleNLP and Hugging Face
    train STS-B)."""
    regression = spec.type == TaskType.REGRESSION
    if isinstance(labels, paddle.Tensor):
        labels = labels.astype("float32" if regression else "int64")
    else:
        labels = paddle.to_tensor(np.asarray(labels, dtype=np.float32 if regression else np.int64))
    if regression:
        return F.mse_loss(outputs.reshape([-1]), labels.reshape([-1]))
    return F.cross_entropy(outputs, labels)


def soft_cross_entropy(logits, teacher_logits):
    return -(F.softmax(teacher_logits, axis=-1) * F.log_softmax(logits, axis=-1)).sum(axis=-1).mean()


def distillation_loss(spec: TaskSpec, outputs, teacher_outputs):
    """The student's outputs against the teacher's: soft cross-entropy on the class
    distribution (the tutorial's), or the squared error of the score."""
    if spec.type == TaskType.REGRESSION:
        return F.mse_loss(outputs, teacher_outputs)
    return soft_cross_entropy(outputs, teacher_outputs)


# ----------------------------------------------------------------------------- teacher
def _step_done(opt, sched, stats, horizon, bar, t0: float, sentences: int, step: int, loss: float) -> None:
    """The optimizer step and the bookkeeping every training step shares (teacher and OFA)."""
    opt.step()
    sched.step()
    opt.clear_grad()
    stats.seconds += time.perf_counter() - t0
    stats.steps += 1
    stats.sentences += sentences
    horizon.after_step(step, stats)
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.3f}", sent_s=f"{stats.sentences / stats.seconds:.1f}")


def finetune_teacher(model, train: Split, dev: Split, tokenizer, *, spec: TaskSpec, epochs: float, batch_size: int,
                     lr: float, seed: int, logging_steps: int, evaluate: Callable, progress: bool = True,
                     sizer=None) -> tuple[dict, PhaseStats]:
    """Plain fine-tuning on the gold labels (``gold_loss``); keeps the weights of the best
    dev score in the task's main metric (``evaluate(model, epoch)`` after each epoch), unless
    a time budget's ``sizer`` dropped those evaluations (then the last weights)."""
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    # disable=None: tqdm shows no bar when stderr is not a terminal (logs carry the progress)
    bar = tqdm(total=total, desc="teacher", unit="step", disable=not progress or None, dynamic_ncols=True)
    horizon = Horizon(total, sizer, bar)
    opt, sched = make_optimizer(model.parameters(), lr, horizon)
    stats, best, best_state, step = PhaseStats(), -1.0, None, 0
    epoch = 0
    while step < horizon.total:
        model.train()
        for ids, types, y, _ in batches(train, batch_size, shuffle=True, seed=seed + epoch, tokenizer=tokenizer,
                                        bucket=50):
            if not dist.usable(len(y)):
                continue
            ids, types, y = dist.shard(ids, types, y)
            t0 = time.perf_counter()
            logits = model(paddle.to_tensor(ids), paddle.to_tensor(types))
            loss = gold_loss(spec, logits, y)
            loss.backward()
            dist.sync_gradients(model.parameters())
            step += 1
            _step_done(opt, sched, stats, horizon, bar, t0, len(y), step, float(loss))
            if logging_steps and step % logging_steps == 0:
                log.info("teacher step %d/%d loss %.4f (%.1f sentences/s)", step, horizon.total, float(loss),
                         stats.sentences / stats.seconds)
            if step >= horizon.total:
                break
        epoch += 1
        if sizer is not None and not sizer.epoch_selection:
            continue  # the budget dropped the per-epoch dev evaluations
        model.eval()
        value = evaluate(model, epoch)[spec.main_metric]
        log.info("teacher epoch %d: dev %s %.4f", epoch, spec.main_metric, value)
        if best_state is None or value > best:
            best, best_state = value, {k: v.numpy().copy() for k, v in model.state_dict().items()}
    bar.close()
    selected = sizer is None or sizer.epoch_selection
    if selected:
        model.set_state_dict(best_state)
    model.eval()
    return {"best_dev": {spec.main_metric: best} if selected else None, "epochs": epochs if sizer is None
            else round(horizon.total / steps_per_epoch, 3), "steps": horizon.total}, stats


# ----------------------------------------------------------------------------- OFA
class HiddenStates:
    """Forward hooks collecting the outputs of the mapping layers (embeddings + each layer).
    ``clear`` before a pass: at a depth < 1 the layers it skips keep no stale output."""

    def __init__(self, model, names: list[str]):
        self.values: dict[str, paddle.Tensor] = {}
        self.names = names
        subs = dict(model.named_sublayers())
        missing = [n for n in names if n not in subs]
        if missing:
            raise RuntimeError(f"mapping layers not found: {missing}")
        self.handles = [subs[n].register_forward_post_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(layer, inputs, output):
            self.values[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def clear(self):
        self.values.clear()

    def remove(self):
        for h in self.handles:
            h.remove()


def subnets_for_step(subnets: list, sampling: str, rng: np.random.Generator) -> list:
    """``all``: every subnet each step (the tutorial; DynaBERT's every width at every depth).
    ``sandwich``: the largest, the smallest and one random other (the sandwich rule: same
    extremes, ~25% fewer passes with 4 widths). ``subnets`` go largest first, smallest last
    (``core.subnet.grid``)."""
    if sampling == "all" or len(subnets) <= 3:
        return list(subnets)
    middle = subnets[1:-1]
    return [subnets[0], subnets[-1], middle[int(rng.integers(len(middle)))]]


MAPPING_EMBEDDINGS = "bert.embeddings"


def distillation_pairs(num_layers: int, depth: float = 1.0) -> list[tuple[str, str]]:
    """(student layer, teacher layer) whose outputs the hidden-state loss compares: the
    embeddings, then each layer the depth keeps against the teacher layer DynaBERT maps it to
    (``core.subnet.teacher_layers``); at full depth every layer against itself."""
    kept = Depth(depth).layers(num_layers)
    layer = "bert.encoder.layers.{}".format
    return [(MAPPING_EMBEDDINGS, MAPPING_EMBEDDINGS)] + [
        (layer(s), layer(t)) for s, t in zip(kept, teacher_layers(kept, num_layers))]


def _subnet_losses(supernet: OfaSupernet, chosen, s_hidden: HiddenStates, pairs: dict, inputs: tuple, y,
                   teacher_out: tuple, spec: TaskSpec, weights: tuple[float, float, float]) -> dict[str, float]:
    """Forward and backward of each ``chosen`` subnet on one batch (gradients add up); its loss
    by subnet key. ``teacher_out``: the teacher's logits and hidden states on the batch;
    ``weights``: lambda_hidden, lambda_logit, lambda_ce (see ``train_ofa``)."""
    lambda_hidden, lambda_logit, lambda_ce = weights
    t_logits, t_states = teacher_out
    losses = {}
    for sub in chosen:
        supernet.set_subnet(sub.width.value, sub.depth.value)
        s_hidden.clear()
        logits = supernet(*inputs)
        rep = sum(F.mse_loss(s_hidden.values[a], t_states[b]) for a, b in pairs[sub.depth.value])
        loss = lambda_hidden * rep + lambda_logit * distillation_loss(spec, logits, t_logits)
        if lambda_ce:
            loss = loss + lambda_ce * gold_loss(spec, logits, y)
        loss.backward()
        losses[sub.key] = float(loss)
    return losses


def train_ofa(supernet: OfaSupernet, teacher, train: Split, tokenizer, *, spec: TaskSpec, epochs: float,
              batch_size: int, lr: float, seed: int, lambda_hidden: float, lambda_logit: float, sampling: str,
              logging_steps: int,
              save_steps: int, on_save: Callable[[int], None], start_step: int = 0, opt_state: dict | None = None,
              progress: bool = True, lambda_ce: float = 0.0, sizer=None) -> tuple[dict, PhaseStats]:
    """OFA training: every step runs the teacher once (no grad), then each subnet (width x
    depth) with hidden-state MSE (x lambda_hidden; at a depth < 1 each kept layer against the
    teacher layer ``distillation_pairs`` maps it to) + the distillation loss on the outputs
    (x lambda_logit; ``distillation_loss``) + the loss on the gold labels (x lambda_ce; 0 in
    the tutorial's recipe; ``gold_loss``). As DynaBERT does, every subnet learns from the
    fine-tuned teacher; gradients of all subnets of a step add up into one update."""
    n_layers = supernet.num_layers
    mapping = [s for s, _ in distillation_pairs(n_layers)]
    pairs = {d: distillation_pairs(n_layers, d) for d in supernet.depths}
    t_hidden, s_hidden = HiddenStates(teacher, mapping), HiddenStates(supernet.model, mapping)
    subnets = supernet.subnets  # width-only: the widths in their order, so sampled as before depths existed
    teacher.eval()
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    bar = tqdm(total=total, initial=start_step, desc="ofa", unit="step", disable=not progress or None,
               dynamic_ncols=True)
    horizon = Horizon(total, sizer, bar)
    opt, sched = make_optimizer(supernet.parameters(), lr, horizon)
    if opt_state:
        load_optimizer_checkpoint(opt, supernet.model, opt_state)
    rng = np.random.default_rng(seed)
    stats, step = PhaseStats(), 0
    epoch = 0
    try:
        with compat.patched():
            while step < horizon.total:
                supernet.train()
                for ids, types, y, _ in batches(train, batch_size, shuffle=True, seed=seed + 1000 + epoch,
                                                tokenizer=tokenizer, bucket=50):
                    if not dist.usable(len(y)):
                        continue
                    if step < start_step:  # resume: replay the data order without training
                        step += 1
                        subnets_for_step(subnets, sampling, rng)  # same random stream
                        continue
                    ids, types, y = dist.shard(ids, types, y)
                    t0 = time.perf_counter()
                    ids_t, types_t = paddle.to_tensor(ids), paddle.to_tensor(types)
                    with paddle.no_grad():
                        t_logits = teacher(ids_t, types_t)
                    losses = _subnet_losses(supernet, subnets_for_step(subnets, sampling, rng), s_hidden, pairs,
                                            (ids_t, types_t), y, (t_logits, dict(t_hidden.values)), spec,
                                            (lambda_hidden, lambda_logit, lambda_ce))
                    dist.sync_gradients(supernet.parameters())
                    step += 1
                    _step_done(opt, sched, stats, horizon, bar, t0, len(y), step,
                               float(np.mean(list(losses.values()))))
                    if logging_steps and step % logging_steps == 0:
                        log.info("ofa step %d/%d losses %s (%.1f sentences/s)", step, horizon.total,
                                 {k: round(v, 4) for k, v in losses.items()}, stats.sentences / stats.seconds)
                    if (save_steps and step % save_steps == 0) or step >= horizon.total:
                        supernet.set_width(1.0)
                        on_save(step, optimizer_state_for_checkpoint(opt, supernet.model))
                        supernet.train()
                    if step >= horizon.total:
                        break
                epoch += 1
    finally:
        bar.close()
        t_hidden.remove(); s_hidden.remove()
        supernet.set_width(1.0)
    return {"steps": horizon.total, "epochs": epochs if sizer is None else round(horizon.total / steps_per_epoch, 3),
            "sampling": sampling}, stats

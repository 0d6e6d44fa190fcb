"""The backend-neutral training loop: batches -> inference.step -> metrics, evaluations, checkpoints."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import distributed, resources, tensorboard_events
from .config import RunConfig, resolve, validate
from .data import build_tokenizer, load_corpus, require_windows, split_tokens, train_batch
from .destination import check_creatable
from .distributed import describe, world
from .errors import Interrupted, LtmError
from .evaluate import unigram_bound, windows_bound
from .inference import create, descriptor, methods, training_flops_per_token
from .run import Run, append_metrics, lock, new_run_dir, save_inference
from .stop_signals import StopNow, StopRequest


@dataclass
class Data:
    tokenizer: object
    train: np.ndarray  # or a lazily read data/stream.TokenStream, as split_tokens returns
    val: np.ndarray


def load_data(cfg: RunConfig, tokenizer=None) -> Data:
    """Corpus, tokenizer (trained for bpe:N unless given) and the train/val token streams."""
    corpus = load_corpus(cfg.data.data)
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.data.tokenizer, corpus.iter_documents("train"), corpus.fingerprint)
    train, val = (split_tokens(corpus, split, tokenizer) for split in ("train", "val"))
    require_windows(train, cfg.model.block_size, "train", cfg.data.data)
    require_windows(val, cfg.model.block_size, "val", cfg.data.data)
    return Data(tokenizer, train, val)


def check_fit(cfg: RunConfig) -> None:
    """What the method refuses to train with (its descriptor's check_fit), before anything is written."""
    if cfg.train.slow_gradient != "elbo" and cfg.inference.method != "local":
        raise LtmError(f"train.slow_gradient = \"{cfg.train.slow_gradient}\" is a training signal of --inference local "
                       f"(the published update); --inference {cfg.inference.method} trains with \"elbo\"")
    descriptor(cfg.inference.method).check_fit(cfg)


def check_training_memory(cfg: RunConfig, workers: int) -> None:
    """Before the corpus is read or anything written (the vocabulary may not be known yet: the
    estimate is a lower bound either way)."""
    resources.check("this training run", resources.training_bytes(cfg, workers), cfg,
                    "a smaller --batch-size, inference.num_samples or model")


def closing_line(last_eval: dict, cfg: RunConfig) -> str:
    """fit's last val line: which windows it covers, and whether its number is a bound (a latent
    method's ELBO) or the exact likelihood (no latent: the method's descriptor says which)."""
    method = descriptor(cfg.inference.method)
    exact = not method.latent
    what, relation = ("exact NLL", "=") if exact else ("bound", "<=")
    kl = "" if exact or last_eval.get("kl_per_sequence") is None else f"KL {last_eval['kl_per_sequence']:.2f} nats/sequence, "
    steps = f"{cfg.inference.eval_steps} steps, " if method.inner_steps else ""
    return (f"val {what} on the first {last_eval['num_sequences']} val windows (train.eval_windows; `ltm eval` covers "
            f"the whole split): {last_eval['nll_per_token']:.4f} nats/token, perplexity {relation} {last_eval['perplexity']:.2f} "
            f"({kl}{last_eval['num_tokens']} tokens, {steps}{cfg.train.backend}/{cfg.inference.method})")


def fit(cfg: RunConfig, out: str | None = None, resume: str | None = None, progress: bool = True, echo=print,
        tensorboard: str | Path | None = None) -> dict:
    """Train a new run (into `out`) or continue `resume` up to cfg.train.iters. Returns a summary.
    tensorboard: also write the metrics as TensorBoard events into tensorboard/<run name>.
    Raises Interrupted after SIGINT / SIGTERM, with a checkpoint committed."""
    cfg = copy.deepcopy(cfg)  # the caller's stays as given; resolve() completes this one once
    board = tensorboard_events.check(tensorboard)
    w = start_world(cfg)
    echo = echo if w.is_writer else (lambda *_: None)
    if resume is not None:
        run = Path(resume)
        opened = Run.open(run)  # refuses a directory that is not a run
        if w.is_writer:  # before any check: a second writer is refused at once, naming the first
            opened.lock()
        cfg = opened.resumed_config(cfg)
        validate(cfg, methods())
        check_fit(cfg)
        check_training_memory(cfg, w.size)
        done = opened.iteration
        if cfg.train.iters <= done:  # refused before anything is written (config.json included)
            asked = f"--iters {cfg.train.iters} trains nothing" if cfg.train.iters != opened.cfg.train.iters else "it is finished"
            raise LtmError(f"{run} has done {done} iterations already, so {asked}; pass --iters N with N > {done} to train on")
        data = w.in_turn(lambda: load_data(cfg, opened.tokenizer(cfg)))
        inference = opened.inference(cfg, with_optimizer=True)
        # Every check has passed: from here on the run is written (by one worker).
        changed = opened.changes(cfg)
        for name, (old, new) in changed.items():
            echo(f"notice: resuming {run} with {name} = {new!r} (was {old!r})")
        if w.is_writer:
            opened.resume(cfg, inference.iteration, changed)
        if cfg.train.iters > cfg.train.lr_decay_iters:
            echo(f"notice: the learning-rate schedule of {run} ends at iteration {cfg.train.lr_decay_iters}; iterations "
                 f"after it run at the minimum rate (lr x min_lr_ratio); --lr-decay-iters N moves the horizon")
    else:
        run = new_run_dir(out)  # every worker checks --out
        if out is None:  # a timestamped name: the writer's, for everyone
            run = Path(w.broadcast_text(str(run) if w.is_writer else None))
        check_creatable(run)  # before the corpus is read: an unwritable --out fails at once
        validate(cfg, methods())
        check_fit(cfg)
        check_training_memory(cfg, w.size)
        data = w.in_turn(lambda: load_data(cfg))  # the first worker builds the token cache
        cfg = resolve(cfg, data.tokenizer.vocab_size, descriptor(cfg.inference.method).latent)

        inference = create(cfg)
        w.barrier()  # every worker has passed every check: now the writer writes
        if w.is_writer:
            Run.create(run, cfg, data.tokenizer, inference)
    w.barrier()
    try:
        return _loop(cfg, run, inference, data, progress, echo, board)
    finally:
        lock.release(run)


def start_world(cfg: RunConfig):
    """The workers of this fit (distributed.py), with the checks they must pass together."""
    w = distributed.start(cfg.train.backend, cfg.train.device)
    distributed.check_same_config(w, cfg)
    w.check_batch(cfg.train.batch_size)
    return w


def loss_is_bound(cfg: RunConfig, metrics: dict) -> bool:
    """Is the training loss a bound on the NLL per token (so exp(loss) bounds the perplexity)?
    The method's descriptor says (not for Langevin's NLL at one draw, nor a shaped objective)."""
    return descriptor(cfg.inference.method).loss_is_bound(cfg, metrics)


def _save(run: Path, inference, cfg: RunConfig) -> None:
    save_inference(run, inference, cfg.train.backend)


def _show(bar, record: dict | None, last_eval: dict | None) -> None:
    """The progress bar's numbers: the newest written record and evaluation."""
    if record is None:
        return
    postfix = {"loss": f"{record['loss']:.3f}"}
    if "ppl" in record:
        postfix["ppl"] = f"{record['ppl']:.1f}"
    postfix.update({k: f"{record[k]:.2f}" for k in ("kl", "accept") if k in record})
    if last_eval is not None:
        postfix["val_ppl"] = f"{last_eval['perplexity']:.1f}"
    bar.set_postfix(postfix, refresh=False)


def _stop_inside(run: Path, inference, cfg: RunConfig, last_saved: int, done: int, bar, stop, said: str) -> None:
    """A stop signal inside work after iteration `done` (one worker: its next iteration's fast
    steps, or its own evaluation): that work never changes the training state, so commit
    iteration `done` and say what stopped (`said`) and how to resume."""
    if last_saved != done:
        _save(run, inference, cfg)
    bar.close()
    raise Interrupted(f"{stop.name}: {said}; resume with: ltm fit --resume {run}", stop.signum)


def _evaluate(inference, data: Data, cfg: RunConfig, iteration: int) -> dict:
    t = cfg.train
    return windows_bound(inference, data.val, cfg.inference.eval_steps, 1, t.batch_size, t.eval_windows, seed=t.seed + iteration)


class MetricsBuffer:
    """Each iteration's metrics as the step returned them (device scalars, jax scalars or floats),
    turned into numbers and written to metrics.jsonl only at `flush`: every train.log_interval
    iterations, before an evaluation or a checkpoint, on a stop signal and at the end. So an
    iteration never waits for the device. A flush that finds a non-finite iteration writes the
    records before it and stops the run naming it (its update was skipped on the device)."""

    def __init__(self, run: Path, cfg: RunConfig, loss_is_bound, reduce=lambda m: m, write=append_metrics):
        # reduce: the workers' mean (distributed.World.mean); write: the writer's append, a no-op elsewhere
        self.run, self.cfg, self.loss_is_bound = run, cfg, loss_is_bound
        self.reduce, self.write = reduce, write
        self.pending: list[tuple[int, dict, float]] = []
        self.last: dict | None = None  # the newest record written (for the progress bar)

    def add(self, iteration: int, metrics: dict, elapsed: float) -> None:
        self.pending.append((iteration, metrics, elapsed))

    def flush(self, last_saved: int) -> None:
        pending, self.pending = self.pending, []
        for iteration, metrics, elapsed in pending:
            values = {k: float(v) for k, v in self.reduce(metrics).items()}  # the host sync, once per value
            finite = values.pop("finite", 1.0) == 1.0  # the step's own verdict (update applied or skipped)
            if not finite or not all(math.isfinite(v) for v in values.values()):
                raise LtmError(
                    f"non-finite loss at iteration {iteration}; training stopped, the last good checkpoint "
                    f"(iteration {last_saved}) is kept in {self.run}"
                )
            record = {"iter": iteration, **values, "elapsed_s": round(elapsed, 3)}
            if self.loss_is_bound(self.cfg, values):
                record["ppl"] = math.exp(min(values["loss"], 50.0))
            self.write(self.run, record)
            self.last = record


def _loop(cfg: RunConfig, run: Path, inference, data: Data, progress: bool, echo, board: Path | None = None) -> dict:
    w = world()
    if board is None or not w.is_writer:
        return _train(cfg, run, inference, data, progress, echo, w, None)
    events = tensorboard_events.EventWriter(board / run.name, start=inference.iteration)
    try:
        return _train(cfg, run, inference, data, progress, echo, w, events)
    finally:
        events.close()


def _train(cfg: RunConfig, run: Path, inference, data: Data, progress: bool, echo, w, events) -> dict:
    t = cfg.train
    if describe(w):
        echo(describe(w))
    if inference.compile_note and inference.iteration < t.iters:
        echo(inference.compile_note)
    save = _save if w.is_writer else (lambda *_: None)  # one writer: checkpoints and metrics
    write_metrics = append_metrics if w.is_writer else (lambda *_: None)
    if events is not None:  # every record also to TensorBoard, once it is in metrics.jsonl
        def write_metrics(run: Path, record: dict) -> None:
            append_metrics(run, record)
            events.add(record)
    rows = w.local_rows(t.batch_size)
    start = inference.iteration
    last_saved = start
    last_eval = None
    bar = tqdm(total=t.iters, initial=start, disable=not progress or not w.is_writer, desc="fit", unit="it", dynamic_ncols=True)
    clock = time.perf_counter()
    # loss_is_bound is fixed for the run: looked up once
    metrics = MetricsBuffer(run, cfg, descriptor(cfg.inference.method).loss_is_bound, reduce=w.mean, write=write_metrics)
    with StopRequest(abandon=w.size == 1) as stop:
        for it in range(start, t.iters):
            batch = train_batch(data.train, cfg.model.block_size, t.batch_size, t.seed, it)[rows]
            try:
                step_metrics = inference.step(batch)
            except StopNow:  # mid-iteration, before its slow step: the state is iteration `it`'s
                metrics.flush(last_saved)
                _stop_inside(run, inference, cfg, last_saved, it, bar, stop, f"stopped during iteration {it + 1} (its fast "
                             f"steps), with a checkpoint of iteration {it} committed")
            metrics.add(it + 1, step_metrics, time.perf_counter() - clock)
            done = it + 1
            evaluate = done % t.eval_interval == 0 or done == t.iters
            checkpoint_now = done % t.checkpoint_interval == 0 or done == t.iters
            at_log = done % t.log_interval == 0 or evaluate or checkpoint_now
            # Several workers agree on a stop signal only at log points (a collective is a host
            # sync); one worker looks at every iteration. Every worker makes the same calls.
            stopping = w.agree(stop.signum) if (at_log or w.size == 1) else False
            if at_log or stopping:
                try:
                    metrics.flush(last_saved)
                except LtmError:
                    bar.close()
                    raise
                _show(bar, metrics.last, last_eval)
            if stopping:  # skip the evaluation (it never changes the training state)
                if last_saved != done:
                    save(run, inference, cfg)
                bar.update(1)
                bar.close()
                raise Interrupted(f"{stop.name if stop.signum else 'SIGTERM'}: stopped after iteration {done} with a checkpoint committed; "
                                  f"resume with: ltm fit --resume {run}", stop.signum or 15)
            # Evaluate before saving, so a checkpoint is committed after every record of its iteration.
            if evaluate:
                try:
                    last_eval = _evaluate(inference, data, cfg, done)
                except StopNow:  # inside the evaluation's fast steps: iteration `done` is finished
                    _stop_inside(run, inference, cfg, last_saved, done, bar, stop,
                                 f"stopped after iteration {done} (its evaluation skipped) with a checkpoint committed")
                write_metrics(run, {"iter": done, "split": "val", **last_eval})
                _show(bar, metrics.last, last_eval)
            if checkpoint_now:
                save(run, inference, cfg)
                last_saved = done
            bar.update(1)
    bar.close()
    if last_eval is None:  # nothing left to train: report the run as it stands
        last_eval = _evaluate(inference, data, cfg, inference.iteration)
    unigram = unigram_bound(data.train, data.val, data.tokenizer.vocab_size, cfg.model.block_size, t.eval_windows)
    summary = {"run": str(run), "iterations": inference.iteration, "val": last_eval, "unigram": unigram,
               "backend": cfg.train.backend, "inference": cfg.inference.method,
               "flops_per_token": training_flops_per_token(cfg)}
    echo(closing_line(last_eval, cfg))
    echo(f"unigram:   {unigram['nll_per_token']:.4f} nats/token, perplexity {unigram['perplexity']:.2f} (same tokens)")
    echo(f"run: {run}")
    return summary

"""The backend-neutral training loop: batches -> inference.step -> metrics, evaluations, checkpoints."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoint
from .config import RunConfig, validate
from .data import build_tokenizer, load_corpus, load_tokenizer, num_windows, split_tokens, train_batch
from .errors import LtmError
from .evaluate import corpus_bound, unigram_bound
from .flops import training_flops_per_token


@dataclass
class Data:
    tokenizer: object
    train: np.ndarray
    val: np.ndarray


def require_windows(tokens: np.ndarray, block_size: int, split: str, spec: str) -> None:
    if num_windows(len(tokens), block_size) < 1:
        raise LtmError(
            f"corpus {spec}: the {split} split has {len(tokens)} tokens, fewer than one window "
            f"({block_size + 1} tokens); use a longer corpus or a smaller model.block_size"
        )


def load_data(cfg: RunConfig, tokenizer=None) -> Data:
    """Corpus, tokenizer (trained for bpe:N unless given) and the train/val token streams."""
    corpus = load_corpus(cfg.data.data)
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.data.tokenizer, corpus.documents("train"), corpus.fingerprint)
    train, val = (split_tokens(corpus, split, tokenizer) for split in ("train", "val"))
    require_windows(train, cfg.model.block_size, "train", cfg.data.data)
    require_windows(val, cfg.model.block_size, "val", cfg.data.data)
    return Data(tokenizer, train, val)


def run_tokenizer(run: Path, cfg: RunConfig):
    return load_tokenizer(run / "tokenizer.json", cfg.data.tokenizer)


def check_method_fits_run(cfg: RunConfig, trained_method: str) -> None:
    """A run's decoder either reads latents or not; refuse a method that needs the other kind."""
    if not cfg.model.latent and cfg.inference.method != "none":
        raise LtmError(f"this run has no latent (trained with --inference none); --inference {cfg.inference.method} needs one")
    if cfg.model.latent and cfg.inference.method == "none":
        raise LtmError(f"--inference none needs a decoder without latents; this run's decoder reads them (trained with --inference {trained_method})")


def load_inference(run: Path, cfg: RunConfig, with_optimizer: bool = False):
    """The inference object of a run with its saved weights (and optimiser state)."""
    from .inference import create

    inference = create(cfg)
    inference.load_weights(checkpoint.load_weights(run))
    if with_optimizer:
        tensors, state = checkpoint.load_optimizer(run)
        if state.get("backend", cfg.train.backend) != cfg.train.backend:
            raise LtmError(f"{run} was trained with --backend {state['backend']}; resume it with that backend")
        inference.load_optimizer_state(tensors, state)
    return inference


def fit(cfg: RunConfig, out: str | None = None, resume: str | None = None, progress: bool = True, echo=print) -> dict:
    """Train a new run (into `out`) or continue `resume` up to cfg.train.iters. Returns a summary."""
    from .inference import methods

    if resume is not None:
        run = Path(resume)
        stored, _ = checkpoint.read_config(run)  # refuses a directory that is not a run
        if not cfg.model.vocab_size:
            cfg.model.vocab_size = stored.model.vocab_size
        if cfg.model != stored.model or cfg.data != stored.data:
            raise LtmError(f"resuming {run} cannot change its [model] or [data] settings")
        if cfg.inference.method != stored.inference.method:
            raise LtmError(f"{run} was trained with --inference {stored.inference.method}; resume it with that method")
        data = load_data(cfg, run_tokenizer(run, cfg))
        validate(cfg, methods())
        inference = load_inference(run, cfg, with_optimizer=True)
        checkpoint.truncate_metrics(run, inference.iteration)
        checkpoint.write_config(run, cfg, cfg.data.tokenizer)
    else:
        run = checkpoint.new_run_dir(out)
        validate(cfg, methods())
        data = load_data(cfg)
        cfg.model.vocab_size = data.tokenizer.vocab_size
        cfg.model.latent = cfg.inference.method != "none"
        from .inference import create

        inference = create(cfg)
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LtmError(f"cannot create the run directory {run}: {exc.strerror}") from None
        data.tokenizer.save(run / "tokenizer.json")
        checkpoint.write_config(run, cfg, cfg.data.tokenizer)
        _save(run, inference, cfg)  # iteration 0: a run directory is complete from the start
    return _loop(cfg, run, inference, data, progress, echo)


def loss_is_bound(cfg: RunConfig, metrics: dict) -> bool:
    """Is the training loss a bound on the NLL per token (so exp(loss) bounds the perplexity)?
    Not for Langevin (the NLL at one draw z_K) or amortized with KL warm-up or free bits."""
    method = cfg.inference.method
    if method == "amortized":
        return metrics.get("beta", 1.0) == 1.0 and cfg.inference.free_bits == 0
    return method in ("local", "none")


def _save(run: Path, inference, cfg: RunConfig) -> None:
    tensors, scalars = inference.optimizer_state()
    checkpoint.save_checkpoint(run, inference.weights(), tensors, dict(scalars, backend=cfg.train.backend))


def _evaluate(inference, data: Data, cfg: RunConfig, iteration: int) -> dict:
    t = cfg.train
    return corpus_bound(inference, data.val, cfg.inference.eval_steps, 1, t.batch_size, t.eval_windows, seed=t.seed + iteration)


def _loop(cfg: RunConfig, run: Path, inference, data: Data, progress: bool, echo) -> dict:
    from tqdm import tqdm

    t = cfg.train
    start = inference.iteration
    last_saved = start
    last_eval = None
    bar = tqdm(total=t.iters, initial=start, disable=not progress, desc="fit", unit="it", dynamic_ncols=True)
    clock = time.perf_counter()
    for it in range(start, t.iters):
        batch = train_batch(data.train, cfg.model.block_size, t.batch_size, t.seed, it)
        metrics = inference.step(batch)
        if not all(math.isfinite(v) for v in metrics.values()):
            bar.close()
            raise LtmError(
                f"non-finite loss at iteration {it + 1}; training stopped, the last good checkpoint "
                f"(iteration {last_saved}) is kept in {run}"
            )
        record = {"iter": it + 1, **metrics, "elapsed_s": round(time.perf_counter() - clock, 3)}
        if loss_is_bound(cfg, metrics):
            record["ppl"] = math.exp(min(metrics["loss"], 50.0))
        checkpoint.append_metrics(run, record)
        done = it + 1
        if done % t.checkpoint_interval == 0 or done == t.iters:
            _save(run, inference, cfg)
            last_saved = done
        if done % t.eval_interval == 0 or done == t.iters:
            last_eval = _evaluate(inference, data, cfg, done)
            checkpoint.append_metrics(run, {"iter": done, "split": "val", **last_eval})
        postfix = {"loss": f"{metrics['loss']:.3f}"}
        if "ppl" in record:
            postfix["ppl"] = f"{record['ppl']:.1f}"
        postfix.update({k: f"{metrics[k]:.2f}" for k in ("kl", "accept") if k in metrics})
        if last_eval is not None:
            postfix["val_ppl"] = f"{last_eval['perplexity']:.1f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
    bar.close()
    if last_eval is None:  # nothing left to train: report the run as it stands
        last_eval = _evaluate(inference, data, cfg, inference.iteration)
    unigram = unigram_bound(data.train, data.val, data.tokenizer.vocab_size, cfg.model.block_size, t.eval_windows)
    summary = {"run": str(run), "iterations": inference.iteration, "val": last_eval, "unigram": unigram,
               "backend": cfg.train.backend, "inference": cfg.inference.method,
               "flops_per_token": training_flops_per_token(cfg)}
    echo(
        f"val bound on the first {last_eval['num_sequences']} val windows (train.eval_windows; `ltm eval` bounds "
        f"the whole split): {last_eval['nll_per_token']:.4f} nats/token, perplexity <= {last_eval['perplexity']:.2f} "
        f"(KL {last_eval['kl_per_sequence']:.2f} nats/sequence, {last_eval['num_tokens']} tokens, "
        f"{cfg.inference.eval_steps} steps, {cfg.train.backend}/{cfg.inference.method})"
    )
    echo(f"unigram:   {unigram['nll_per_token']:.4f} nats/token, perplexity {unigram['perplexity']:.2f} (same tokens)")
    echo(f"run: {run}")
    return summary

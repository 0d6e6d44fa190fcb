"""`ltm` commands. Thin: parse flags, call the library, print. Heavy libraries load lazily, so
`ltm --help` imports no torch/jax/pyro/numpyro/arviz.

Every failure a user can cause prints one line `error: ...` on stderr and exits with code 2.
"""
from __future__ import annotations

import json
import sys

import click

from .config import RunConfig, apply_overrides, load_toml
from .errors import LtmError


class LtmGroup(click.Group):
    """Turns click's usage errors and LtmError into one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        except LtmError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def emit_json(record: dict) -> None:
    click.echo(json.dumps(record))


@click.group(cls=LtmGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Latent-Thought Language Models as probabilistic programs (Pyro / NumPyro)."""


backend_option = click.option("--backend", type=click.Choice(["pyro", "numpyro"]), default=None, help="PPL backend.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where the decoder runs.")
seed_option = click.option("--seed", type=int, default=None, help="Random seed.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object last on stdout.")
inference_option = click.option("--inference", default=None, help="Inference method: local, amortized, langevin or none.")


def method_options(command):
    """Options of the inference methods, the same in every command."""
    options = [
        click.option("--init", default=None, help="local: start at prior, reference (log sigma -5) or amortized (the encoder's q)."),
        click.option("--step-size", type=float, default=None, help="langevin: initial step size."),
        click.option("--mala/--no-mala", default=None, help="langevin: Metropolis adjustment (default on)."),
        click.option("--target-accept", type=float, default=None, help="langevin: acceptance the warm-up adapts toward."),
        click.option("--chains", type=int, default=None, help="langevin: chains per sequence."),
        click.option("--draws", type=int, default=None, help="langevin: kept draws per chain for bounds."),
        click.option("--kl-warmup", type=int, default=None, help="amortized: KL weight warm-up iterations."),
        click.option("--free-bits", type=float, default=None, help="amortized: minimum KL per latent vector (nats)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def method_overrides(kw: dict) -> dict:
    return {
        "inference.init": kw.pop("init"), "inference.step_size": kw.pop("step_size"), "inference.mala": kw.pop("mala"),
        "inference.target_accept": kw.pop("target_accept"), "inference.chains": kw.pop("chains"),
        "inference.draws": kw.pop("draws"), "inference.kl_warmup_iters": kw.pop("kl_warmup"),
        "inference.free_bits": kw.pop("free_bits"),
    }


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="Settings (TOML); flags override it.")
@backend_option
@inference_option
@method_options
@click.option("--data", default=None, help="builtin:kjv, a .txt file, a directory of .txt files, or .jsonl with a 'text' field.")
@click.option("--tokenizer", default=None, help="gpt2, bytes or bpe:N (trained on the corpus).")
@click.option("--iters", type=int, default=None, help="Total training iterations (with --resume: continue up to this).")
@click.option("--steps", type=int, default=None, help="Fast inner steps per iteration (T).")
@click.option("--batch-size", type=int, default=None, help="Windows per batch.")
@click.option("--out", default=None, help="Directory of the new run (default: runs/<timestamp>).")
@click.option("--resume", default=None, help="Continue this run from its last checkpoint.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the decoder.")
@seed_option
@device_option
@json_option
def fit(config_file, backend, inference, data, tokenizer, iters, steps, batch_size, out, resume, compile_, seed, device, as_json, **kw):
    """Train an LTM; a new run directory unless --resume."""
    from .checkpoint import read_config
    from .train import fit as fit_run

    overrides = method_overrides(kw) | {
        "train.backend": backend, "inference.method": inference, "data.data": data, "data.tokenizer": tokenizer,
        "train.iters": iters, "inference.steps": steps, "train.batch_size": batch_size, "train.compile": compile_,
        "train.seed": seed, "train.device": device,
    }
    if resume is not None:
        if out is not None:
            raise LtmError("--out and --resume exclude each other: --resume continues the run in place")
        for flag, value in (("--config", config_file), ("--tokenizer", tokenizer), ("--data", data)):
            if value is not None:
                raise LtmError(f"{flag} cannot change a run being resumed")
        cfg, _ = read_config(__import__("pathlib").Path(resume))
    else:
        cfg = load_toml(config_file) if config_file else RunConfig()
    apply_overrides(cfg, overrides)
    summary = fit_run(cfg, out=out, resume=resume, echo=(lambda s: click.echo(s, err=True)) if as_json else click.echo)
    if as_json:
        emit_json(summary)


def _open_run(run: str, backend, device, overrides: dict | None = None):
    from pathlib import Path

    from .checkpoint import read_config
    from .config import validate
    from .inference import methods
    from .train import check_method_fits_run, load_inference, run_tokenizer

    path = Path(run)
    cfg, _ = read_config(path)
    trained = cfg.inference.method
    apply_overrides(cfg, {"train.backend": backend, "train.device": device, **(overrides or {})})
    validate(cfg, methods())
    check_method_fits_run(cfg, trained)
    tokenizer = run_tokenizer(path, cfg)
    return cfg, tokenizer, load_inference(path, cfg)


@cli.command(name="eval")
@click.argument("run")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", help="Which split to bound.")
@click.option("--data", default=None, help="Evaluate on another corpus (default: the run's).")
@click.option("--steps", type=int, default=None, help="Fast steps fitting q per sequence (default: the run's eval_steps).")
@click.option("--samples", type=int, default=1, help="Noise samples per sequence for the ELBO estimate.")
@click.option("--batch-size", type=int, default=None, help="Windows per batch.")
@click.option("--max-windows", type=int, default=None, help="Bound only the first N windows of the split.")
@inference_option
@method_options
@backend_option
@seed_option
@device_option
@json_option
def eval_cmd(run, split, data, steps, samples, batch_size, max_windows, inference, backend, seed, device, as_json, **kw):
    """Held-out bound of a run: nats/token and perplexity, corpus-level, fresh-noise ELBO."""
    from tqdm import tqdm

    from .data import load_corpus, num_windows, split_tokens
    from .evaluate import PROPOSALS, corpus_bound, unigram_bound
    from .flops import decoder_forward, training_flops_per_token
    from .train import require_windows

    for name, value in (("--steps", steps), ("--samples", samples), ("--batch-size", batch_size), ("--max-windows", max_windows)):
        if value is not None and value <= 0:
            raise LtmError(f"{name} must be a positive integer, got {value}")
    cfg, tokenizer, inference = _open_run(run, backend, device, method_overrides(kw) | {"inference.method": inference})
    corpus = load_corpus(data or cfg.data.data)
    tokens = split_tokens(corpus, split, tokenizer)
    require_windows(tokens, cfg.model.block_size, split, corpus.spec)
    steps = steps or cfg.inference.eval_steps
    total = num_windows(len(tokens), cfg.model.block_size)
    total = min(total, max_windows) if max_windows else total
    with tqdm(total=total, desc="eval", unit="seq", disable=as_json) as bar:
        result = corpus_bound(inference, tokens, steps, samples, batch_size or cfg.train.batch_size, max_windows,
                              seed=cfg.train.seed if seed is None else seed, progress=bar.update)
    unigram = unigram_bound(split_tokens(corpus, "train", tokenizer), tokens, tokenizer.vocab_size, cfg.model.block_size, max_windows)
    record = {
        **result, "bound": "elbo", "backend": cfg.train.backend, "inference": cfg.inference.method, "steps": steps,
        "samples": samples, "split": split, "data": corpus.spec, "tokenizer": cfg.data.tokenizer,
        "unigram_nll_per_token": unigram["nll_per_token"], "unigram_perplexity": unigram["perplexity"],
        "flops_per_token": training_flops_per_token(cfg),
        "decoder_flops_per_token": decoder_forward(cfg.model),
        "proposal": PROPOSALS[cfg.inference.method],
    }
    if as_json:
        emit_json(record)
        return
    click.echo(f"{corpus.spec} [{split}]: {result['num_tokens']} predicted tokens in {result['num_sequences']} windows")
    click.echo(f"ELBO bound, fresh noise, {steps} steps, {samples} sample(s), {cfg.train.backend}/{cfg.inference.method}; q = {record['proposal']}:")
    click.echo(f"  {result['nll_per_token']:.4f} nats/token   perplexity <= {result['perplexity']:.3f}   (corpus-level)")
    click.echo(f"  KL {result['kl_per_sequence']:.3f} nats/sequence; reconstruction {result['reconstruction_nll_per_token']:.4f} nats/token")
    click.echo(f"  per-sequence mean of exp(-ELBO/T) (the paper's figure): {result['per_sequence_mean_perplexity']:.3f}")
    click.echo(f"unigram of the same tokens: {unigram['nll_per_token']:.4f} nats/token, perplexity {unigram['perplexity']:.3f}")
    click.echo(f"training FLOPs per token: {record['flops_per_token']:.4g} (decoder forward {record['decoder_flops_per_token']:.4g})")


@cli.command()
@click.argument("run")
@click.option("--prompt", default=None, help="Continue this text; z is inferred from it (fast local inference).")
@click.option("--num", type=int, default=1, help="How many samples.")
@click.option("--max-tokens", type=int, default=100, help="New tokens per sample.")
@click.option("--temperature", type=float, default=1.0, help="Softmax temperature (0: greedy).")
@click.option("--top-k", type=int, default=0, help="Sample among the k likeliest tokens (0: all).")
@click.option("--steps", type=int, default=None, help="Fast steps inferring z from the prompt (default: the run's eval_steps).")
@inference_option
@method_options
@backend_option
@seed_option
@device_option
@json_option
def sample(run, prompt, num, max_tokens, temperature, top_k, steps, inference, backend, seed, device, as_json, **kw):
    """Generate text: latents from the prior, or from the posterior given --prompt."""
    from .generate import generate_text

    for name, value in (("--num", num), ("--max-tokens", max_tokens), ("--steps", steps)):
        if value is not None and value <= 0:
            raise LtmError(f"{name} must be a positive integer, got {value}")
    if temperature < 0 or top_k < 0:
        raise LtmError("--temperature and --top-k must not be negative")
    if prompt is not None and not prompt.strip():
        raise LtmError("--prompt is empty")
    cfg, tokenizer, inference = _open_run(run, backend, device, method_overrides(kw) | {"inference.method": inference})
    texts = generate_text(inference, tokenizer, prompt, num, max_tokens, temperature, top_k,
                          steps or cfg.inference.eval_steps, cfg.train.seed if seed is None else seed)
    if as_json:
        emit_json({"samples": texts, "prompt": prompt, "latents": "posterior" if prompt else "prior",
                   "backend": cfg.train.backend, "inference": cfg.inference.method})
        return
    for i, text in enumerate(texts):
        if num > 1:
            click.echo(f"--- sample {i + 1} ---")
        click.echo(text)


def main():
    cli()

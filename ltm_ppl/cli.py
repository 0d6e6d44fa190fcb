"""`ltm` commands. Thin: parse flags, call the library, print. Heavy libraries load lazily, so
`ltm --help` imports no torch/jax/pyro/numpyro/arviz.

Every failure a user can cause prints one line `error: ...` on stderr and exits with code 2.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .config import RunConfig, apply_overrides, load_toml
from .errors import Interrupted, LtmError
from .inference import registry


class LtmGroup(click.Group):
    """Turns click's usage errors and LtmError into one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # plain `ltm`: the help, not an error
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        except Interrupted as exc:  # a checkpoint was committed; the message says how to resume
            click.echo(str(exc), err=True)
            sys.exit(exc.exit_code)
        except LtmError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def positive_options(*named) -> None:
    for name, value in named:
        if value is not None and value <= 0:
            raise LtmError(f"{name} must be a positive integer, got {value}")


def progress_bar(desc: str, unit: str, disable: bool):
    """A progress factory for the library: entered with the total once every check has passed."""
    import contextlib

    @contextlib.contextmanager
    def factory(total: int):
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit=unit, disable=disable) as bar:
            yield bar.update

    return factory


def _num(value) -> str:
    """A diagnostic for the table: 3 decimals; NaN (stored as null in JSON) shown as nan."""
    return "nan" if value is None else f"{value:.3f}"


def emit_json(record: dict) -> None:
    click.echo(json.dumps(record))


@click.group(cls=LtmGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Latent-Thought Language Models as probabilistic programs (Pyro / NumPyro)."""


backend_option = click.option("--backend", type=click.Choice(list(registry.backends())), default=None, help="PPL backend.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where the decoder runs.")
seed_option = click.option("--seed", type=int, default=None, help="Random seed.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object last on stdout.")
inference_option = click.option(
    "--inference", default=None,
    help=f"Inference method: {', '.join(registry.methods())}.")


def _method_flag(option):
    """The click option of a method option (descriptor.Option) that has a flag."""
    if option.type is bool:
        name = option.flag.removeprefix("--")
        return click.option(f"{option.flag}/--no-{name}", option.field, default=None, help=option.help)
    return click.option(option.flag, option.field, type=option.type, default=None, help=option.help)


def method_options(command, without: tuple[str, ...] = ()):
    """The flags of every registered method's options (their descriptors), the same in every command
    (`without`: fields a command declares itself, with its own defaults)."""
    for option in reversed([o for o in registry.options() if o.flag and o.field not in without]):
        command = _method_flag(option)(command)
    return command


def method_overrides(kw: dict) -> dict:
    """The method flags' values as config overrides ("inference.<field>"), taken out of kw."""
    return {f"inference.{o.field}": kw.pop(o.field) for o in registry.options() if o.flag and o.field in kw}


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="Settings (TOML); flags override it.")
@backend_option
@inference_option
@method_options
@click.option("--data", default=None, help="builtin:kjv, a .txt file, a directory of .txt files, or .jsonl with a 'text' field.")
@click.option("--tokenizer", default=None, help="gpt2, bytes or bpe:N (trained on the corpus).")
@click.option("--iters", type=int, default=None, help="Total training iterations (with --resume: continue up to this).")
@click.option("--lr-decay-iters", type=int, default=None,
              help="Iteration where the cosine learning rate reaches its minimum (0: --iters). Stored with the run; "
                   "with --resume it moves the horizon.")
@click.option("--steps", type=int, default=None, help="Fast inner steps per iteration (T).")
@click.option("--batch-size", type=int, default=None, help="Windows per batch.")
@click.option("--out", default=None, help="Directory of the new run (default: runs/<timestamp>).")
@click.option("--resume", default=None, help="Continue this run from its last checkpoint.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the decoder.")
@seed_option
@device_option
@json_option
def fit(config_file, backend, inference, data, tokenizer, iters, lr_decay_iters, steps, batch_size, out, resume, compile_, seed, device, as_json, **kw):
    """Train an LTM; a new run directory unless --resume."""
    from .checkpoint import read_config
    from .train import fit as fit_run

    overrides = method_overrides(kw) | {
        "train.backend": backend, "inference.method": inference, "data.data": data, "data.tokenizer": tokenizer,
        "train.iters": iters, "train.lr_decay_iters": lr_decay_iters, "inference.steps": steps, "train.batch_size": batch_size, "train.compile": compile_,
        "train.seed": seed, "train.device": device,
    }
    if resume is not None:
        if out is not None:
            raise LtmError("--out and --resume exclude each other: --resume continues the run in place")
        for flag, value in (("--config", config_file), ("--tokenizer", tokenizer), ("--data", data)):
            if value is not None:
                raise LtmError(f"{flag} cannot change a run being resumed")
        cfg, _ = read_config(Path(resume))
    else:
        cfg = load_toml(config_file) if config_file else RunConfig()
    apply_overrides(cfg, overrides)
    summary = fit_run(cfg, out=out, resume=resume, echo=(lambda s: click.echo(s, err=True)) if as_json else click.echo)
    if as_json:
        emit_json(summary)


def _open_run(run: str, backend, device, overrides: dict | None = None):
    from .runs import open_run

    return open_run(run, {"train.backend": backend, "train.device": device, **(overrides or {})})


@cli.command(name="eval")
@click.argument("run")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", help="Which split to bound.")
@click.option("--data", default=None, help="Evaluate on another corpus (default: the run's).")
@click.option("--steps", default=None, help="Inference steps per sequence, or a list 4,16,64 (one row each).")
@click.option("--bound", "kind", type=click.Choice(["elbo", "iwae"]), default="elbo", help="ELBO (analytic KL) or IWAE_K.")
@click.option("--samples", type=int, default=1, help="Draws per sequence: the ELBO estimate's, or K of IWAE_K.")
@click.option("--fixed-noise", is_flag=True, help="Also the published reference's fixed-noise number (not a bound), labelled.")
@click.option("--batch-size", type=int, default=None, help="Windows per batch.")
@click.option("--max-windows", type=int, default=None, help="Bound only the first N windows of the split.")
@inference_option
@method_options
@backend_option
@seed_option
@device_option
@json_option
def eval_cmd(run, split, data, steps, kind, samples, fixed_noise, batch_size, max_windows, inference, backend, seed, device, as_json, **kw):
    """Held-out bounds of a run: nats/token and perplexity, corpus-level, fresh noise."""
    from .runs import check_eval_options, evaluate_run, parse_steps

    check_eval_options(samples, batch_size, max_windows)
    opened = _open_run(run, backend, device, method_overrides(kw) | {"inference.method": inference})
    steps = parse_steps(steps, opened.cfg.inference.eval_steps)
    record = evaluate_run(opened, split, data, steps, samples, kind, fixed_noise, batch_size, max_windows, seed,
                          progress_bar("eval", "seq", as_json))
    if as_json:
        emit_json(record)
        return
    click.echo(f"{record['data']} [{split}]: {record['num_tokens']} predicted tokens in {record['num_sequences']} windows; "
               f"{record['backend']}/{record['inference']} (trained {record['trained_with']}); q = {record['proposal']}")
    click.echo(f"{'steps':>6} {'bound':>6} {'nats/token':>11} {'perplexity':>11} {'KL/seq':>8} {'mean exp(-B/T)':>15}  what")
    for row in record["rows"]:
        kl = "-" if row["kl_per_sequence"] is None else f"{row['kl_per_sequence']:.3f}"
        kind_name = "fixed" if row.get("fixed_noise") else row["bound"]
        click.echo(f"{row['steps']:>6} {kind_name:>6} {row['nll_per_token']:>11.4f} {row['perplexity']:>11.3f} "
                   f"{kl:>8} {row['per_sequence_mean_perplexity']:>15.3f}  {row['label']}")
        if row["bound"] == "iwae":
            click.echo(f"{'':>6} {'':>6} {row['sampled_elbo_nll_per_token']:>11.4f}  sampled-KL ELBO of the same {row['samples']} draws")
    click.echo("perplexity: corpus-level exp(bound / predicted tokens); mean exp(-B/T): the paper's per-sequence mean")
    click.echo(f"unigram of the same tokens: {record['unigram_nll_per_token']:.4f} nats/token, perplexity {record['unigram_perplexity']:.3f}")
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

    positive_options(("--num", num), ("--max-tokens", max_tokens), ("--steps", steps))
    if temperature < 0 or top_k < 0:
        raise LtmError("--temperature and --top-k must not be negative")
    if prompt is not None and not prompt.strip():
        raise LtmError("--prompt is empty")
    opened = _open_run(run, backend, device, method_overrides(kw) | {"inference.method": inference})
    cfg = opened.cfg
    texts = generate_text(opened.inference, opened.tokenizer, prompt, num, max_tokens, temperature, top_k,
                          steps or cfg.inference.eval_steps, cfg.train.seed if seed is None else seed)
    if as_json:
        emit_json({"samples": texts, "prompt": prompt, "latents": "posterior" if prompt else "prior",
                   "backend": cfg.train.backend, "inference": cfg.inference.method})
        return
    for i, text in enumerate(texts):
        if num > 1:
            click.echo(f"--- sample {i + 1} ---")
        click.echo(text)


@cli.command()
@click.argument("run")
@click.option("--inference", "methods", default=None, help="Methods, comma-separated (default: the run's): "
              + ", ".join(m for m in registry.methods() if registry.descriptor(m).posterior_kind) + ".")
@click.option("--sequences", type=int, default=8, help="Held-out windows to diagnose.")
@click.option("--chains", type=int, default=4, help="Chains per sequence (langevin).")
@click.option("--draws", type=int, default=100, help="Draws per chain (at least 100 for k-hat of variational methods).")
@click.option("--steps", type=int, default=None, help="Fitting steps (local); langevin: warm-up steps unless --warmup, and the fast steps of --init local (default 200).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val")
@click.option("--data", default=None, help="Another corpus (default: the run's).")
@click.option("--out", default=None, help="New directory for NetCDF, plots and summary (default: RUN/diagnostics/<timestamp>).")
@backend_option
@seed_option
@device_option
@json_option
@functools.partial(method_options, without=("chains", "draws"))
def diagnose(run, methods, sequences, chains, draws, steps, split, data, out, backend, seed, device, as_json, **kw):
    """Posterior quality: R-hat / ESS of chains, PSIS k-hat of variational posteriors, collapse."""
    from .diagnostics import diagnose_run

    positive_options(("--steps", steps))
    names = [m.strip() for m in methods.split(",")] if methods else None
    summary = diagnose_run(run, names, sequences, chains, draws, steps, split, data, out, backend, device,
                           0 if seed is None else seed, progress_bar("diagnose", "method", as_json),
                           overrides=method_overrides(kw))
    if as_json:
        emit_json(summary)
        return
    click.echo(f"{summary['run']} [{split}], {sequences} sequences -> {summary['out']}")
    for m, r in summary["methods"].items():
        click.echo(f"{m}: {r['chains']} chain(s) x {r['draws']} draws, {r['steps']} steps")
        if "chains_diagnostics" in r:
            c = r["chains_diagnostics"]
            verdict = "converged" if c["converged"] else "NOT converged"
            click.echo(f"  R-hat max {_num(c['rhat_max'])}, share above 1.01 (NaN counted) {c['share_rhat_above_limit']:.3f}, "
                       f"R-hat of the log joint max {_num(c['rhat_log_joint_max'])}: {verdict}")
            click.echo(f"  ESS bulk min {c['ess_bulk_min']:.1f}, tail min {c['ess_tail_min']:.1f}; "
                       f"acceptance {r['accept_prob']:.3f}, step size {r['step_size']:.4f}")
            click.echo(f"  kernel {r['kernel']}, start {r['init']}, warm-up {r['warmup']}, "
                       f"{r['gradient_evaluations']:.0f} gradient evaluations per chain and sequence"
                       + (f", {r['divergences']} divergent transitions" if "divergences" in r else ""))
            click.echo(f"  {r['verdict']}")
        if "khat" in r:
            k = r["khat"]
            exact = sum(s == "exact" for s in k["status"])
            click.echo(f"  PSIS k-hat max {_num(k['khat_max'])}, share above {k['threshold']:.3f}: "
                       f"{k['share_above_threshold']:.3f} ({exact} of {len(k['status'])} exact)")
        col = r["collapse"]
        kl = ", ".join(f"{v:.2f}" for v in col["kl_per_latent_vector"])
        click.echo(f"  KL per latent vector [{kl}]; active units {col['active_units']} / {col['num_units']}")
    if "amortization_gap" in summary:
        g = summary["amortization_gap"]
        click.echo(f"amortization gap (local - amortized ELBO): {g['nats_per_sequence']:.3f} nats/sequence, {g['nats_per_token']:.4f} nats/token")


@cli.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val")
@click.option("--data", default=None, help="Corpus (default: the first run's).")
@click.option("--steps", type=int, default=None, help="Inference steps (default: each run's eval_steps).")
@click.option("--samples", type=int, default=1)
@click.option("--max-windows", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@backend_option
@seed_option
@device_option
@json_option
def compare(runs, split, data, steps, samples, max_windows, batch_size, backend, seed, device, as_json):
    """Bounds of several runs on the same tokens, with FLOPs per token (e.g. an LTM vs its baseline)."""
    from .runs import check_eval_options, compare_runs

    positive_options(("--steps", steps))
    check_eval_options(samples, batch_size, max_windows)
    table = compare_runs(list(runs), split, data, steps, samples, max_windows, batch_size, seed,
                         overrides={"train.backend": backend, "train.device": device})
    if as_json:
        emit_json(table)
        return
    click.echo(f"{table['data']} [{split}], {table['rows'][0]['num_tokens']} predicted tokens each")
    click.echo(f"{'run':<40} {'method':<18} {'params':>10} {'nats/token':>11} {'perplexity':>11} {'KL/seq':>8} {'train FLOPs/token':>18}")
    for r in table["rows"]:
        kl = "-" if r["kl_per_sequence"] is None else f"{r['kl_per_sequence']:.2f}"
        click.echo(f"{r['run'][-40:]:<40} {r['backend'] + '/' + r['inference']:<18} {r['params']:>10} "
                   f"{r['nll_per_token']:>11.4f} {r['perplexity']:>11.3f} {kl:>8} {r['flops_per_token']:>18.4g}")


def main():
    cli()

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_TOML, run_cli

from ltm_ppl.run import latest_checkpoint


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_one_line_error(result, *fragments, after_progress=False):
    """Exit code 2 and one `error:` line on stderr, nothing else; with after_progress (a failure
    that happens while training or evaluating) a progress bar may precede it."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    if after_progress:
        assert all(line.startswith(("fit:", "eval:")) for line in lines[:-1]), result.stderr
    else:
        assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_fit_eval_sample_end_to_end(trained_run):
    files = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "tokenizer.json", "checkpoints", "metrics.jsonl"} <= files
    assert {p.name for p in latest_checkpoint(trained_run).iterdir()} == {"weights.safetensors", "optimizer.safetensors", "trainer_state.json"}
    record = json.loads((trained_run / "config.json").read_text())
    assert record["format_version"] == 2 and record["versions"]["torch"] and record["seeds"]["train"] == 0

    result = run_cli("eval", trained_run, "--json", "--max-windows", "32", "--steps", "4")
    assert result.exit_code == 0, result.output
    out = last_json(result)
    assert {"nll_per_token", "perplexity", "kl_per_sequence", "num_tokens", "backend", "inference", "steps"} <= set(out)
    assert (out["backend"], out["inference"], out["steps"], out["num_tokens"]) == ("pyro", "local", 4, 32 * 64)
    # the trained LTM's honest bound is clearly below a unigram model of the same tokens
    assert out["nll_per_token"] < out["unigram_nll_per_token"] - 0.2, out
    assert out["perplexity"] == pytest.approx(2.718281828 ** out["nll_per_token"], rel=1e-6)

    text = run_cli("eval", trained_run, "--max-windows", "8")
    assert text.exit_code == 0 and "nats/token" in text.stdout and "unigram" in text.stdout

    sampled = run_cli("sample", trained_run, "--num", "2", "--max-tokens", "40", "--seed", "3", "--json")
    assert sampled.exit_code == 0, sampled.output
    samples = last_json(sampled)["samples"]
    assert len(samples) == 2 and all(len(s) > 10 for s in samples) and samples[0] != samples[1]
    assert sum(c.isalpha() or c.isspace() for c in samples[0]) > 0.6 * len(samples[0])  # bytes decoded to text

    prompted = run_cli("sample", trained_run, "--prompt", "And God said", "--max-tokens", "30", "--seed", "1", "--json")
    assert prompted.exit_code == 0, prompted.output
    out = last_json(prompted)
    assert out["latents"] == "posterior" and out["samples"][0].startswith("And God said")
    again = run_cli("sample", trained_run, "--prompt", "And God said", "--max-tokens", "30", "--seed", "1", "--json")
    assert last_json(again)["samples"] == out["samples"]  # --seed makes sampling reproducible


def test_fit_without_out_makes_a_new_run_each_time(tmp_path, tiny_toml, text_corpus):
    os.chdir(tmp_path)
    for _ in range(2):
        result = run_cli("fit", "--config", tiny_toml, "--data", text_corpus, "--iters", "2")
        assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom ltm_ppl.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'jax', 'pyro', 'numpyro', 'arviz', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture()
def fresh(tmp_path):
    """A place for a run that must not appear."""
    return tmp_path / "new-run"


def test_missing_corpus(fresh):
    assert_one_line_error(run_cli("fit", "--data", fresh.parent / "nope.txt", "--out", fresh), "corpus not found")
    assert not fresh.exists()


@pytest.mark.parametrize("content, fragment", [(b"", "is empty"), (b"ab\x00\x01cd" * 50, "binary"), (b"In the beginning.", "fewer than one window")])
def test_bad_or_short_corpus_file(tmp_path, fresh, tiny_toml, content, fragment):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    assert_one_line_error(run_cli("fit", "--config", tiny_toml, "--data", corpus, "--out", fresh), fragment)
    assert not fresh.exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--tokenizer", "wordpiece"], ["unknown tokenizer", "wordpiece"]),
        (["--backend", "stan"], ["--backend", "stan"]),
        (["--inference", "magic"], ["inference.method", "magic"]),
        (["--bogus"], ["No such option", "--bogus"]),
        (["--steps", "-1"], ["inference.steps (--steps) must be positive"]),
        (["--iters", "many"], ["--iters", "many"]),
        (["--attention-window", "-1"], ["model.attention_window (--attention-window)", "0 (full attention) or 1..model.block_size (256)"]),
        (["--attention-window", "257"], ["model.attention_window (--attention-window)", "got 257"]),
    ],
)
def test_bad_fit_flags(fresh, args, fragments):
    assert_one_line_error(run_cli("fit", "--out", fresh, *args), *fragments)
    assert not fresh.exists()


@pytest.mark.parametrize(
    "toml, fragments",
    [
        ('[inference]\nsteps = "four"\n', ["inference.steps must be int", "four"]),
        ("[model]\nn_layer = 4\nn_z = 5\n", ["model.n_z (5) must be divisible by model.n_layer (4)"]),
        ("[model\nn_z = 5\n", ["not valid TOML"]),
        ("[train]\nbatch_size = -3\n", ["train.batch_size (--batch-size) must be positive"]),
    ],
)
def test_bad_config_values(tmp_path, fresh, toml, fragments):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    assert_one_line_error(run_cli("fit", "--config", config, "--out", fresh), *fragments)
    assert not fresh.exists()


def snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}


def test_out_pointing_at_an_existing_run_is_refused(trained_run):
    before = snapshot(trained_run)
    assert_one_line_error(run_cli("fit", "--out", trained_run), "existing run", "--resume")
    assert snapshot(trained_run) == before


def test_missing_argument_and_not_a_run(tmp_path):
    assert_one_line_error(run_cli("eval"), "Missing argument")
    assert_one_line_error(run_cli("eval", tmp_path), "not a run directory")
    assert_one_line_error(run_cli("sample", tmp_path / "absent"), "run directory not found")


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (lambda run: (latest_checkpoint(run) / "weights.safetensors").write_bytes((latest_checkpoint(run) / "weights.safetensors").read_bytes()[:1000]), ["weights.safetensors", "damaged or truncated"]),
        (lambda run: (run / "config.json").write_text('{"format_version": 1, "config": '), ["config.json", "damaged"]),
        (lambda run: (run / "tokenizer.json").write_text("{}"), ["tokenizer", "damaged"]),
        (lambda run: (latest_checkpoint(run) / "trainer_state.json").unlink(), ["trainer_state.json", "not a complete run"]),
        (lambda run: shutil.rmtree(run / "checkpoints"), ["no committed checkpoint", "not a complete run"]),
    ],
)
def test_damaged_runs_are_refused_by_eval_and_sample(trained_run, tmp_path, damage, fragments):
    run = copy_run(trained_run, tmp_path / "copy")
    damage(run)
    before = snapshot(run)
    for command in ("eval", "sample"):
        assert_one_line_error(run_cli(command, run), *fragments)
    assert snapshot(run) == before


def test_bad_eval_and_sample_options(trained_run):
    assert_one_line_error(run_cli("eval", trained_run, "--samples", "0"), "--samples must be a positive integer")
    assert_one_line_error(run_cli("eval", trained_run, "--split", "dev"), "--split")
    assert_one_line_error(run_cli("sample", trained_run, "--max-tokens", "0"), "--max-tokens")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, fresh):
    config = tmp_path / "explode.toml"
    config.write_text(TINY_TOML.replace("lr = 3e-3", "lr = 1e30\nbeta1 = 0.0\nbeta2 = 0.0").replace("warmup_iters = 5", "warmup_iters = 0").replace("checkpoint_interval = 20", "checkpoint_interval = 1"))
    result = run_cli("fit", "--config", config, "--out", fresh, "--iters", "20")
    assert_one_line_error(result, "non-finite loss at iteration", "last good checkpoint", after_progress=True)
    state = json.loads((latest_checkpoint(fresh) / "trainer_state.json").read_text())
    assert f"(iteration {state['iteration']})" in result.stderr
    failed_at = int(result.stderr.split("non-finite loss at iteration ")[1].split(";")[0])
    assert state["iteration"] == failed_at - 1  # nothing was saved after the bad step
    # The kept checkpoint is intact (checksums match) and loads; its diverged weights give a clear
    # "not finite" error from eval rather than a NaN perplexity.
    assert_one_line_error(run_cli("eval", fresh, "--max-windows", "2"), "not finite", after_progress=True)


def test_failure_before_the_first_checkpoint_keeps_a_usable_run(tmp_path, fresh):
    """Iteration 0 is saved when the run starts, so a run that fails early is still a run."""
    config = tmp_path / "explode.toml"
    config.write_text(TINY_TOML.replace("lr = 3e-3", "lr = 1e30\nbeta1 = 0.0\nbeta2 = 0.0").replace("warmup_iters = 5", "warmup_iters = 0"))
    result = run_cli("fit", "--config", config, "--out", fresh, "--iters", "20")
    assert_one_line_error(result, "non-finite loss at iteration", "(iteration 0)", after_progress=True)
    out = run_cli("eval", fresh, "--max-windows", "2", "--json")
    assert out.exit_code == 0 and json.loads(out.stdout.strip().splitlines()[-1])["nll_per_token"] > 0


@pytest.mark.parametrize("toml, fragment", [("[inference]\nfast_lr = nan\n", "inference.fast_lr"), ("[train]\nlr = inf\n", "train.lr")])
def test_nan_and_inf_settings_are_refused(tmp_path, fresh, toml, fragment):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    assert_one_line_error(run_cli("fit", "--config", config, "--out", fresh), fragment, "must be positive and finite")
    assert not fresh.exists()


def test_unwritable_out_is_one_line(tiny_toml, text_corpus):
    assert_one_line_error(run_cli("fit", "--config", tiny_toml, "--data", text_corpus, "--out", "/proc/no/such/run"),
                          "cannot create the run directory")


def test_bare_ltm_prints_help():
    result = run_cli()
    assert result.exit_code == 0 and "Commands:" in result.stdout and not result.stderr

"""Fuzzing the run-directory reader of `eval`, `sample` and `diagnose`: any file under a run
(whatever the checkpoint layout) truncated, corrupted, replaced or removed. Every case ends in a
result or one `error:` line (exit 2), never a traceback, and the run is never changed."""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

COMMANDS = {
    "eval": ["eval", "{run}", "--max-windows", "1", "--steps", "1", "--json", "-q"],
    "sample": ["sample", "{run}", "--max-tokens", "3", "--prompt", "In the", "--steps", "1", "--json", "-q"],
    "diagnose": ["diagnose", "{run}", "--sequences", "2", "--draws", "100", "--steps", "1", "--out", "{out}", "--json", "-q"],
}


def digest(run: Path) -> dict:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


small_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=8), st.sampled_from(["local", "none", "pyro", "numpyro", "bytes", "gpt2", "bpe:300"])),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=5), inner, max_size=2)),
    max_leaves=4)


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, path + (i,))
    yield path


# Values of the right type, so that damage reaches past the type checks into shapes and methods.
SETTING_VALUES = {int: st.sampled_from([-1, 0, 1, 2, 3, 4, 7, 8, 16, 31, 64, 65, 128, 257, 300]),
                  float: st.sampled_from([-1.0, 0.0, 1e-9, 0.5, 1.0, 2.0, 1e6]),
                  bool: st.booleans(),
                  str: st.sampled_from(["local", "none", "langevin", "amortized", "pyro", "numpyro", "cpu", "cuda",
                                        "bytes", "gpt2", "bpe:300", "builtin:kjv", "builtin:nope", ""])}


@st.composite
def damage(draw, files: list[str]):
    """(file, how, data): a file of the run and what happens to it."""
    how = draw(st.sampled_from(["truncate", "overwrite", "flip", "remove", "replace", "json", "setting", "tokenizer",
                                "unchecked"]))
    name = {"setting": "config.json", "tokenizer": "tokenizer.json"}.get(how) or draw(st.sampled_from(files))
    return name, how, draw(st.data())


def change_setting(path: Path, data) -> None:
    """One field of config.json's settings set to another value of its type."""
    import dataclasses
    import typing

    from ltm_ppl.config import SECTIONS

    record = json.loads(path.read_text())
    section = data.draw(st.sampled_from(sorted(SECTIONS)))
    field = data.draw(st.sampled_from([f.name for f in dataclasses.fields(SECTIONS[section])]))
    kind = typing.get_type_hints(SECTIONS[section])[field]
    record["config"][section][field] = data.draw(SETTING_VALUES[kind])
    path.write_text(json.dumps(record))


def apply(path: Path, how: str, data) -> None:
    if how == "setting" and path.exists():
        change_setting(path, data)
        return
    if how == "tokenizer":  # another valid tokenizer: a different vocabulary than the weights'
        from ltm_ppl.data import build_tokenizer

        other = data.draw(st.sampled_from(["gpt2", "bpe"]))
        tok = build_tokenizer("gpt2") if other == "gpt2" else build_tokenizer("bpe:260", ["abc abd " * 50], "fuzz")
        tok.save(path)
        return
    if how == "unchecked":  # checksums gone from the state: damaged safetensors reach the parser
        # the state beside a checkpoint file, or (for a top-level file) every checkpoint's state
        for state_path in [*path.parent.glob("trainer_state.json"), *path.parent.glob("checkpoints/*/trainer_state.json")]:
            state = json.loads(state_path.read_text())
            for key in [k for k in state if k.endswith("sha256")]:
                del state[key]
            state_path.write_text(json.dumps(state))
        how = "overwrite" if path.suffix == ".safetensors" else "flip"
    raw = path.read_bytes()
    if how == "remove":
        path.unlink()
        return
    if how == "json" and path.suffix == ".json":
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, (dict, list)):
            where = data.draw(st.sampled_from(list(_leaves(doc))))
            value = data.draw(small_json)
            if not where:
                doc = value
            else:
                target = doc
                for key in where[:-1]:
                    target = target[key]
                target[where[-1]] = value
            path.write_text(json.dumps(doc))
            return
        how = "flip"
    if not raw:
        return
    if how == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))])
    elif how == "overwrite":
        at = data.draw(st.integers(0, len(raw) - 1))
        path.write_bytes(raw[:at] + data.draw(st.binary(min_size=1, max_size=64)) + raw[at + 64:])
    elif how == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        path.write_bytes(raw[:at] + bytes([raw[at] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[at + 1:])
    else:
        path.write_bytes(data.draw(st.binary(max_size=200)))


def check(result) -> None:
    assert "Traceback" not in result.output, result.output
    if result.exit_code != 0:
        assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


@pytest.fixture(scope="module")
def run_files(trained_run):
    return sorted(str(p.relative_to(trained_run)) for p in trained_run.rglob("*") if p.is_file())


def fuzz_command(trained_run, run_files, command: str, case) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("diagnostics"))
        name, how, data = case
        apply(run / name, how, data)
        before = digest(run)
        result = run_cli(*[a.format(run=run, out=Path(tmp) / "diag") for a in COMMANDS[command]])
        check(result)
        assert digest(run) == before, f"{command} changed the run"


FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                   HealthCheck.data_too_large])


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_damaged_runs_give_a_result_or_one_error(trained_run, run_files, command):
    @settings(max_examples=25, **FUZZ)
    @given(case=damage(run_files))
    def fuzz(case):
        fuzz_command(trained_run, run_files, command, case)

    fuzz()


def test_damaged_runs_in_diagnose(trained_run, run_files):
    @settings(max_examples=6, **FUZZ)
    @given(case=damage(run_files))
    def fuzz(case):
        fuzz_command(trained_run, run_files, "diagnose", case)

    fuzz()


def test_a_tokenizer_panic_is_one_error():
    """pyo3's PanicException is a BaseException: the guard turns it into LtmError."""
    from tokenizers import Tokenizer as HF

    from ltm_ppl.data import build_tokenizer
    from ltm_ppl.data.tokenizer import Tokenizer
    from ltm_ppl.errors import LtmError

    doc = json.loads(build_tokenizer("bytes").hf.to_str())
    doc["truncation"] = {"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 5}
    tok = Tokenizer(HF.from_str(json.dumps(doc)), "bytes")
    with pytest.raises(LtmError, match="tokenizer bytes failed on the text"):
        tok.encode("abcdef")


def test_a_run_tokenizer_that_would_panic_is_disarmed(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("diagnostics"))
    doc = json.loads((run / "tokenizer.json").read_text())
    doc["truncation"] = {"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 5}
    (run / "tokenizer.json").write_text(json.dumps(doc))
    result = run_cli("sample", run, "--prompt", "In the", "--max-tokens", "3", "--steps", "1", "-q")
    assert result.exit_code == 0 and result.stdout.startswith("In the"), result.output

"""Fuzzing the config loader: any TOML document (or any bytes) ends in a RunConfig or LtmError."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltm_ppl.config import SECTIONS, RunConfig, load_toml, validate
from ltm_ppl.errors import LtmError

FIELDS = {name: [f for f in cls.__dataclass_fields__] for name, cls in SECTIONS.items()}

scalars = st.one_of(
    st.booleans(), st.integers(-(2**70), 2**70), st.integers().map(lambda i: i * 10**400), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["local", "none", "langevin", "amortized", "pyro", "numpyro", "cpu", "bytes", "bpe:300"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2))


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def documents(draw) -> str:
    """Mostly known sections and fields with values of any type; sometimes unknown ones."""
    lines = []
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "extra"]), max_size=4, unique=True)):
        lines.append(f"[{section}]")
        names = FIELDS.get(section, ["x"]) + ["unknown_field"]
        for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
            lines.append(f"{name} = {toml_value(draw(values))}")
    return "\n".join(lines) + "\n"


def load(content: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_bytes(content)
        try:
            cfg = load_toml(path)
            validate(cfg, ("local", "amortized", "langevin", "none"))
            return cfg
        except LtmError as exc:
            assert "\n" not in str(exc)
            return exc
        finally:
            assert path.read_bytes() == content  # the loader never writes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_any_toml_document_is_a_config_or_one_error(doc):
    out = load(doc.encode("utf-8", errors="surrogatepass"))
    assert isinstance(out, (RunConfig, LtmError))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([(s, f) for s, fields in FIELDS.items() for f in fields]), values)
def test_any_value_of_any_setting_is_a_config_or_one_error(setting, value):
    section, name = setting
    out = load(f"[{section}]\n{name} = {toml_value(value)}\n".encode("utf-8", errors="surrogatepass"))
    assert isinstance(out, (RunConfig, LtmError))


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_any_bytes_are_a_config_or_one_error(content):
    assert isinstance(load(content), (RunConfig, LtmError))

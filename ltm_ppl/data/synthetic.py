"""Synthetic built-in corpora whose generative law is known exactly (data/truth.py scores it).

`builtin:topics?k=16&v=64&len=255&docs=5000&alpha=0.1&seed=0` (every parameter optional): K
topics, each with a start distribution pi_k and a V x V transition matrix T_k over V symbols, every
one of them (pi_k and each row of T_k) drawn Dirichlet(alpha, ..., alpha). Each document draws its
topic k uniformly from K, its first symbol from pi_k and each next symbol from the row of T_k of
the symbol before: exactly `len` symbols, written as the first V characters of ALPHABET, one
document per line.

`builtin:functions?inputs=8&outputs=8&pairs=64&docs=5000&seed=0`: each document draws a map f from
the first `inputs` lowercase letters to the first `outputs` digits (every f(x) independently
uniform), then `pairs` inputs x independently uniform, and lists "x>f(x)" separated by single
spaces: 4 * pairs - 1 characters.

The law (pi, T) is drawn from one child of numpy's SeedSequence(seed), the documents from others,
so a corpus with more documents starts with the same documents. Splits follow data/splits.py (with
20 documents or more, which is required here, every document lies whole in one split).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import string

import numpy as np

from ..errors import LtmError

GENERATOR_VERSION = 1  # part of the fingerprint: a change of the generator changes the token cache key
# Printable, no space (documents are single lines) and no "<" (so no run of symbols can spell the
# tokenizer's <|endoftext|> special token).
ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits + "".join(
    c for c in string.punctuation if c != "<")
MAX_CHARACTERS = 1 << 28  # generated text in memory (documents x line length)


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: type
    default: object
    low: float
    high: float
    low_open: bool = False  # low itself is excluded (alpha > 0)

    def range_text(self) -> str:
        if self.kind is float:
            return f"a number {'>' if self.low_open else '>='} {self.low:g} and <= {self.high:g}"
        return f"an integer from {int(self.low)} to {int(self.high)}"

    def parse(self, corpus: str, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        ok = value is not None and (math.isfinite(value) if self.kind is float else True) and (
            (value > self.low if self.low_open else value >= self.low) and value <= self.high)
        if not ok:
            raise LtmError(f"builtin:{corpus}: parameter {self.name} must be {self.range_text()}, got {text!r}")
        return value


TOPICS_PARAMS = (
    Param("k", int, 16, 1, 1024),
    Param("v", int, 64, 1, len(ALPHABET)),
    Param("len", int, 255, 1, 1 << 16),
    Param("docs", int, 5000, 20, 10_000_000),
    Param("alpha", float, 0.1, 0.0, 1e6, low_open=True),
    Param("seed", int, 0, 0, 2**32 - 1),
)
FUNCTIONS_PARAMS = (
    Param("inputs", int, 8, 1, 26),
    Param("outputs", int, 8, 1, 10),
    Param("pairs", int, 64, 1, 1 << 14),
    Param("docs", int, 5000, 20, 10_000_000),
    Param("seed", int, 0, 0, 2**32 - 1),
)


def parse_params(corpus: str, query: str, params: tuple[Param, ...]) -> dict:
    """The parameters of `builtin:<corpus>?<query>` with defaults filled in; an unknown, repeated or
    out-of-range one is one LtmError naming it and its allowed range."""
    known = {p.name: p for p in params}
    values = {p.name: p.default for p in params}
    seen = set()
    for part in (p for p in query.split("&") if p):
        key, eq, text = part.partition("=")
        if not eq:
            raise LtmError(f"builtin:{corpus}: parameter {part!r} needs a value, as in {params[0].name}={params[0].default}")
        if key not in known:
            raise LtmError(f"builtin:{corpus}: unknown parameter {key!r} (known: {', '.join(known)})")
        if key in seen:
            raise LtmError(f"builtin:{corpus}: parameter {key} given twice")
        seen.add(key)
        values[key] = known[key].parse(corpus, text)
    return values


def canonical_spec(corpus: str, values: dict, params: tuple[Param, ...]) -> str:
    return f"builtin:{corpus}?" + "&".join(f"{p.name}={values[p.name]!r}" if p.kind is float else f"{p.name}={values[p.name]}"
                                           for p in params)


@dataclasses.dataclass(frozen=True)
class TopicsLaw:
    """A topic-mixture of first-order Markov chains: start [K, V], trans [K, V, V] (float64)."""
    k: int
    v: int
    length: int
    alpha: float
    start: np.ndarray
    trans: np.ndarray
    symbols: str


@dataclasses.dataclass(frozen=True)
class FunctionsLaw:
    """Random maps from `inputs` letters to `outputs` digits, `pairs` pairs per document."""
    inputs: int
    outputs: int
    pairs: int
    input_symbols: str
    output_symbols: str

    @property
    def length(self) -> int:
        return 4 * self.pairs - 1


def _children(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _categorical(cdf_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index drawn from each row's cumulative distribution by inversion (clipped against rounding)."""
    return np.minimum((cdf_rows < u[:, None]).sum(-1), cdf_rows.shape[-1] - 1)


def topics_law(values: dict) -> TopicsLaw:
    law_rng = _children(values["seed"], 3)[0]
    K, V, alpha = values["k"], values["v"], values["alpha"]
    start = law_rng.dirichlet(np.full(V, alpha), size=K)
    trans = law_rng.dirichlet(np.full(V, alpha), size=(K, V))
    if not (np.all(np.isfinite(start)) and np.all(np.isfinite(trans))):
        raise LtmError(f"builtin:topics: alpha={alpha} is too small to draw the transition matrices in float64")
    return TopicsLaw(K, V, values["len"], alpha, start, trans, ALPHABET[:V])


def topics_documents(values: dict, law: TopicsLaw) -> tuple[np.ndarray, np.ndarray]:
    """(topic of each document [docs], symbol indices [docs, len])."""
    _, topic_rng, symbol_rng = _children(values["seed"], 3)
    n, L = values["docs"], values["len"]
    topic = topic_rng.integers(law.k, size=n)
    start_cdf, trans_cdf = np.cumsum(law.start, -1), np.cumsum(law.trans, -1)
    x = np.empty((n, L), dtype=np.int64)
    u = symbol_rng.random((n, L))
    x[:, 0] = _categorical(start_cdf[topic], u[:, 0])
    for t in range(1, L):
        x[:, t] = _categorical(trans_cdf[topic, x[:, t - 1]], u[:, t])
    return topic, x


def functions_law(values: dict) -> FunctionsLaw:
    return FunctionsLaw(values["inputs"], values["outputs"], values["pairs"],
                        string.ascii_lowercase[:values["inputs"]], string.digits[:values["outputs"]])


def functions_documents(values: dict, law: FunctionsLaw) -> tuple[np.ndarray, np.ndarray]:
    """(the map of each document [docs, inputs], its inputs [docs, pairs])."""
    _, map_rng, input_rng = _children(values["seed"], 3)
    n = values["docs"]
    return map_rng.integers(law.outputs, size=(n, law.inputs)), input_rng.integers(law.inputs, size=(n, law.pairs))


def _text(rows: np.ndarray, table: np.ndarray | None) -> list[str]:
    """Each row of characters (or of indices into `table`) as a string: one view, no Python loop
    over characters, so a 5000 x 255 corpus is text in milliseconds."""
    chars = np.ascontiguousarray(rows if table is None else table[rows])
    return [b.decode("ascii") for b in chars.view(f"S{chars.shape[1]}").ravel()]


def _topics_text(values: dict) -> tuple[list[str], TopicsLaw]:
    law = topics_law(values)
    _, x = topics_documents(values, law)
    return _text(x, np.frombuffer(law.symbols.encode(), dtype="S1")), law


def _functions_text(values: dict) -> tuple[list[str], FunctionsLaw]:
    law = functions_law(values)
    f, xs = functions_documents(values, law)
    ys = np.take_along_axis(f, xs, axis=1)
    cells = np.empty((len(xs), law.pairs, 4), dtype="S1")
    cells[:, :, 0] = np.frombuffer(law.input_symbols.encode(), dtype="S1")[xs]
    cells[:, :, 1] = b">"
    cells[:, :, 2] = np.frombuffer(law.output_symbols.encode(), dtype="S1")[ys]
    cells[:, :, 3] = b" "
    return _text(cells.reshape(len(xs), -1)[:, :-1], None), law


def generate(name: str, query: str) -> tuple[str, str, list[str], object]:
    """(canonical spec, fingerprint, documents, law) of builtin:<name>?<query>."""
    params, line, make = {
        "topics": (TOPICS_PARAMS, lambda v: v["len"] + 1, _topics_text),
        "functions": (FUNCTIONS_PARAMS, lambda v: 4 * v["pairs"], _functions_text),
    }[name]
    values = parse_params(name, query, params)
    size = values["docs"] * line(values)
    if size > MAX_CHARACTERS:
        raise LtmError(f"builtin:{name}: docs x document length must be at most {MAX_CHARACTERS} characters, got {size}")
    docs, law = make(values)
    spec = canonical_spec(name, values, params)
    digest = hashlib.sha256(f"{spec}|generator-{GENERATOR_VERSION}|".encode())
    for doc in docs:
        digest.update(doc.encode() + b"\n")
    return spec, digest.hexdigest(), docs, law


SYNTHETIC = ("topics", "functions")

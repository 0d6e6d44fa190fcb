"""Generation rules in both backends: valid UTF-8 while sampling, stop at end-of-text, bounded
--max-tokens; the UTF-8 automaton against Python's own decoder."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import twin_decoders
from hypothesis import given, settings
from hypothesis import strategies as st

from ltm_ppl.data.utf8 import REJECT, complete_prefix, utf8_tables
from ltm_ppl.errors import LtmError

# A 64-token vocabulary full of bytes that break UTF-8 when sampled blindly: lone continuation
# bytes, lead bytes, bytes never valid (C0, F5, FF), some multi-byte tokens; 63 is end-of-text.
PIECES = [b"a", b" ", b"\xc3", b"\xe4", b"\xf0", b"\x80", b"\xbf", b"\xa5", b"\x9f", b"\xff", b"\xc0",
          b"\xf5", b"\xed", b"\xc3\xa9", b"\xa9a", b"\xe2\x82", b"\x82\xac", b"b\xf0\x9f"]
VOCAB = [PIECES[i % len(PIECES)] for i in range(63)] + [None]
EOT = 63


def _proper_prefixes() -> set[bytes]:
    """Every proper prefix of the UTF-8 encoding of a code point (Python's encoder is the oracle)."""
    out = set()
    for c in range(0x80, 0x110000):
        if not 0xD800 <= c <= 0xDFFF:
            e = chr(c).encode()
            out.update(e[:k] for k in range(1, len(e)))
    return out | {b""}


PROPER_PREFIXES = _proper_prefixes()


def valid_so_far(data: bytes) -> bool:
    """Is `data` a prefix of some valid UTF-8? Whole characters that Python decodes strictly,
    then the start of one more. (Python's incremental decoder is no oracle: it accepts b"\\xed\\xbf"
    until the third byte.)"""
    for k in range(min(3, len(data)) + 1):
        head, tail = data[: len(data) - k], data[len(data) - k:]
        if tail in PROPER_PREFIXES:
            try:
                head.decode("utf-8")
                return True
            except UnicodeDecodeError:
                pass
    return False


def automaton_agrees(tokens, allowed, next_state):
    state, data, rejected = 0, b"", False
    for t in tokens:
        data += VOCAB[t]
        if not rejected and not allowed[state, t]:
            rejected = True
        state = next_state[state, t] if not rejected else state
    assert rejected == (not valid_so_far(data))
    if not rejected:
        assert "\ufffd" not in complete_prefix(data)


def test_the_automaton_agrees_with_pythons_decoder_on_every_short_text():
    import itertools

    tables = utf8_tables(VOCAB)
    for n in (1, 2, 3):
        for tokens in itertools.product(range(len(PIECES)), repeat=n):
            automaton_agrees(tokens, *tables)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 62), max_size=12))
def test_the_automaton_agrees_with_pythons_decoder_on_longer_texts(tokens):
    automaton_agrees(tokens, *utf8_tables(VOCAB))


def test_end_of_text_only_at_a_character_boundary():
    allowed, next_state = utf8_tables(VOCAB)
    assert allowed[0, EOT] and not allowed[1:, EOT].any()
    assert next_state[0, VOCAB.index(b"\xc3")] != 0 and next_state[0, VOCAB.index(b"\xc3\xa9")] == 0
    assert REJECT not in next_state


def _generate(backend, decoder, params, cfg, context, z, new, **options):
    if backend == "pyro":
        import torch

        from ltm_ppl.models.torch.generate import generate

        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return generate(decoder, torch.from_numpy(context), torch.from_numpy(z), new, generator=gen, **options).numpy()
    import jax
    import jax.numpy as jnp

    from ltm_ppl.models.jax import generate as jax_generate

    return jax_generate.generate(params, cfg, context, jnp.asarray(z), new, key=jax.random.PRNGKey(0), **options)


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_sampling_with_the_mask_gives_valid_utf8(backend, torch_one_thread):
    cfg, _, decoder, params = twin_decoders(5)
    rng = np.random.default_rng(0)
    context = rng.integers(0, 20, (6, 3))
    z = rng.standard_normal((6, cfg.n_z, cfg.d_model)).astype(np.float32)
    tables = utf8_tables(VOCAB)
    texts = lambda out: [b"".join(VOCAB[t] for t in row if VOCAB[t] is not None) for row in out]
    masked = _generate(backend, decoder, params, cfg, context, z, 24, utf8=tables)
    assert masked.shape == (6, 24)
    assert all(valid_so_far(data) for data in texts(masked))
    # Without the mask the same model writes invalid bytes: the check above has teeth.
    blind = _generate(backend, decoder, params, cfg, context, z, 24)
    assert not all(valid_so_far(data) for data in texts(blind))


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_generation_stops_once_every_row_has_ended(backend, torch_one_thread):
    cfg, _, decoder, params = twin_decoders(3)
    context = np.array([[1, 2, 3]])
    z = np.random.default_rng(1).standard_normal((1, cfg.n_z, cfg.d_model)).astype(np.float32)
    greedy = _generate(backend, decoder, params, cfg, context, z, 12, temperature=0)
    stop = int(greedy[0, 4])
    first = list(greedy[0]).index(stop)
    calls = []
    stopped = _generate(backend, decoder, params, cfg, context, z, 12, temperature=0, stop_id=stop, progress=calls.append)
    np.testing.assert_array_equal(stopped, greedy[:, : first + 1])
    assert len(calls) == first + 1  # one progress tick per token, none after the stop


def test_sample_settings_refuse_what_the_cli_refuses():
    from ltm_ppl.generate import MAX_NEW_TOKENS, SampleSettings

    SampleSettings(max_tokens=MAX_NEW_TOKENS)
    for bad, fragment in [({"max_tokens": MAX_NEW_TOKENS + 1}, "--max-tokens must be at most 100000"),
                          ({"max_tokens": 0}, "--max-tokens must be a positive integer"),
                          ({"num": -1}, "--num must be a positive integer"),
                          ({"temperature": float("nan")}, "--temperature must be a finite number, got nan"),
                          ({"top_k": -2}, "--top-k must be a non-negative integer"),
                          ({"prompt": "  "}, "--prompt is empty"),
                          ({"prompt": "a\udcff"}, r"--prompt is not UTF-8 text \(byte b'\\xff' at character 1\)"),
                          ({"steps": 10_001}, "--steps must be at most 10000")]:
        with pytest.raises(LtmError, match=fragment):
            SampleSettings(**bad)


def test_decode_text_of_the_byte_tokenizer():
    from ltm_ppl.data import build_tokenizer

    tok = build_tokenizer("bytes")
    ids = list("é".encode()) + [tok.eot_id] + list("ab€".encode())[:-1]  # the euro sign cut short
    assert tok.decode_text(ids) == "é<|endoftext|>ab"
    assert tok.decode(ids[:1]) == "\ufffd"  # what the plain decoder shows for the same byte


def test_python_api_refuses_before_touching_the_run():
    """generate_text and diagnose_run check their numbers first, with the CLI's lines."""
    from ltm_ppl.diagnostics import DiagnoseSettings
    from ltm_ppl.generate import generate_text

    with pytest.raises(LtmError, match="--max-tokens must be at most 100000"):
        generate_text(object(), object(), None, max_tokens=10**12)
    with pytest.raises(LtmError, match="--seed must be at most"):
        generate_text(object(), object(), "x", seed=2**40)
    with pytest.raises(LtmError, match="--chains must be a positive integer"):
        DiagnoseSettings(chains=0)
    with pytest.raises(LtmError, match="--steps must be a positive integer"):
        DiagnoseSettings(steps=-3)

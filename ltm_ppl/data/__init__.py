"""Corpora, tokenizers, the on-disk token cache and the window/batch iterator."""
from .cache import split_tokens
from .corpus import Corpus, load_corpus
from .tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from .windows import eval_batches, num_windows, require_windows, train_batch

__all__ = [
    "Corpus", "load_corpus", "Tokenizer", "build_tokenizer", "load_tokenizer", "split_tokens",
    "eval_batches", "num_windows", "require_windows", "train_batch",
]

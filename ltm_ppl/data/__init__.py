"""Corpora, tokenizers, the on-disk token cache and the window/batch iterator."""
from .corpus import Corpus, load_corpus
from .tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from .cache import split_tokens
from .windows import eval_batches, num_windows, train_batch

__all__ = [
    "Corpus", "load_corpus", "Tokenizer", "build_tokenizer", "load_tokenizer", "split_tokens",
    "eval_batches", "num_windows", "train_batch",
]

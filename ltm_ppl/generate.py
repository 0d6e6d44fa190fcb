"""Text from a trained run: latents from the prior, or from the posterior given a prompt.

Every argument check and default of `ltm sample` lives here, so the Python API refuses what the
CLI refuses, with the same line."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import numpy as np

from . import resources
from .checks import require_at_most, require_non_negative, require_positive, require_seed, require_steps
from .data.utf8 import widen
from .errors import LtmError

# New tokens per sample at most: generation is one decoder step per token (a few ms on a CPU), so
# 100k is minutes to hours; beyond it a typo (1e12) would run until killed.
MAX_NEW_TOKENS = 100_000


@dataclass
class SampleSettings:
    """What `ltm sample` asks for; None takes the run's value (steps: eval_steps, seed: train.seed)."""
    prompt: str | None = None
    num: int = 1
    max_tokens: int = 100
    temperature: float = 1.0
    top_k: int = 0
    steps: int | None = None
    seed: int | None = None
    stop_at_eos: bool = True  # stop at end-of-text (the output is cut there either way)

    def __post_init__(self):
        require_positive("--num", self.num)
        require_positive("--max-tokens", self.max_tokens)
        require_at_most("--max-tokens", self.max_tokens, MAX_NEW_TOKENS)
        require_steps("--steps", self.steps)
        require_non_negative("--temperature", self.temperature)
        require_non_negative("--top-k", self.top_k, integer=True)
        require_seed("--seed", self.seed)
        if self.prompt is not None:
            try:  # a shell's $'\xff' arrives as a lone surrogate, which no tokenizer takes
                self.prompt.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = self.prompt[exc.start].encode("utf-8", "surrogateescape")
                raise LtmError(f"--prompt is not UTF-8 text (byte {bad!r} at character {exc.start})") from None
        if self.prompt is not None and not self.prompt.strip():
            raise LtmError("--prompt is empty")


@contextlib.contextmanager
def no_progress(total: int):
    yield lambda n=1: None


def stop_token_sequences(tokenizer, stop: str) -> list[list[int]]:
    """Token sequences whose decoded text contains `stop`: its own encoding, and every single
    token whose bytes hold it (a stop may arrive inside a longer token, "\n" inside ".\n").
    A row that ends with one of them holds the stop in its text, so stopping there never changes
    the text before the stop; a stop that arrives split in other ways is found by the caller's
    cut, only later."""
    wanted = stop.encode("utf-8")
    singles = [[i] for i, b in enumerate(tokenizer.token_bytes()) if b is not None and wanted in b]
    return [tokenizer.encode(stop)] + singles


def generate_text(inference, tokenizer, prompt: str | None, num: int = 1, max_tokens: int = 100,
                  temperature: float = 1.0, top_k: int = 0, steps: int | None = None, seed: int | None = None,
                  stop_at_eos: bool = True, progress=no_progress, stop: str | None = None) -> list[str]:
    """`num` continuations. With a prompt, z ~ q(z | BOS + prompt) fitted by `steps` fast steps
    (the same local inference as training); without one, z ~ N(0, I). Tokens whose bytes cannot
    continue valid UTF-8 are masked while sampling (data/utf8.py). Each text ends at the first
    end-of-text unless stop_at_eos is False (then documents follow, separated by <|endoftext|>).
    stop: a row also stops generating once its new text holds this string (stop_token_sequences;
    the texts are returned whole to there and beyond, callers cut at the stop as before).
    progress(total new tokens) is entered after the checks and advanced per token."""
    s = SampleSettings(prompt, num, max_tokens, temperature, top_k, steps, seed, stop_at_eos)
    cfg = inference.cfg
    steps = s.steps or cfg.inference.eval_steps
    seed = cfg.train.seed if s.seed is None else s.seed
    ids = [tokenizer.eot_id] + (tokenizer.encode(prompt) if prompt else [])
    context = np.tile(np.asarray(ids, dtype=np.int64)[-(cfg.model.block_size + 1):], (num, 1))
    with progress(max_tokens) as advance, inference.rng_scope(seed):
        if prompt and cfg.model.latent and context.shape[1] > 1:
            z = inference.posterior_latents(context, steps)
        else:
            z = inference.prior_latents(num)
        steps_done = []

        def per_token(n=1):  # the bar counts steps of the batch: one token of every sample
            steps_done.append(n)
            advance(n)

        new = inference.generate(context, z, max_tokens, temperature, top_k,
                                 stop_id=tokenizer.eot_id if stop_at_eos else None,
                                 utf8=widen(tokenizer.utf8_tables(), cfg.model.vocab_size), progress=per_token,
                                 **({"stop_sequences": stop_token_sequences(tokenizer, stop)} if stop else {}))
        advance(max_tokens - len(steps_done))  # stopped early at end-of-text: the bar completes
    texts = []
    for row in new:
        row = [int(t) for t in row]
        if stop_at_eos and tokenizer.eot_id in row:  # a document ended: stop there
            row = row[: row.index(tokenizer.eot_id)]
        texts.append((prompt or "") + tokenizer.decode_text(row))
    return texts


@dataclass(frozen=True)
class SampleResult:
    """What `ltm sample` drew; `to_dict()` is the `--json` object, report.sample_text the text."""
    samples: list[str]
    prompt: str | None
    latents: str  # "posterior" (given the prompt) or "prior"
    backend: str
    inference: str

    def to_dict(self) -> dict:
        return asdict(self)


def sample_run(opened, settings: SampleSettings | None = None, progress=no_progress) -> SampleResult:
    """`ltm sample` on an opened run (eval_runs.open_run): the texts and what they were drawn from."""
    s = settings or SampleSettings()
    cfg = opened.cfg
    # all `num` samples decode at once, each with a key/value cache of every layer over the window
    needed = resources.inference_bytes(cfg.model, s.num) + 2 * resources.FLOAT * s.num * cfg.model.block_size * \
        cfg.model.d_model * cfg.model.n_layer
    resources.check("sampling", needed, cfg, "a smaller --num")
    texts = generate_text(opened.inference, opened.tokenizer, s.prompt, s.num, s.max_tokens, s.temperature, s.top_k,
                          s.steps, s.seed, s.stop_at_eos, progress)
    return SampleResult(texts, s.prompt, "posterior" if s.prompt else "prior", cfg.train.backend, cfg.inference.method)


__all__ = ["MAX_NEW_TOKENS", "SampleResult", "SampleSettings", "generate_text", "sample_run", "stop_token_sequences"]

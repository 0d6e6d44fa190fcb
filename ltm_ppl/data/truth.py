"""Exact answers for the synthetic corpora (data/synthetic.py), in float64, numpy only.

A split is the token stream EOT doc EOT doc ... EOT of byte tokens (data/cache.py); every document
has the same length L, so the token at stream position p is the EOT when p % (L + 1) == 0 and
else symbol j = p % (L + 1) of document p // (L + 1). Windows are data/windows.py's: window i is
stream[iB : iB + B + 1], its first token conditioned on and the B others predicted.

Two numbers per predicted token p, each a log-probability under the true law:
- the truth, log p(x_p | x_0 .. x_{p-1}): everything before p, the window's start ignored (documents
  are independent, so this is the forward sum over the current document's prefix). Summed over a
  split's windows it is the exact log-probability of the split's stream.
- the best window-R autoregressive predictive: the R tokens before p, cut at the window's start,
  v = max(iB, p - R), are what a model sees. Where windows are documents (B = L + 1, the default
  layout of these corpora), a model knows where it is in the document only from what it sees: an
  end-of-text in view fixes it, otherwise the view could sit at any place in a document, and the
  exact predictive p(x_p | x_v .. x_{p-1}) weighs every such place (uniformly: every window holds
  every place once) by the law. That is the best expected NLL any model with this view reaches
  (position_known=False). Elsewhere the floor is p(x_p | x_v .. x_{p-1}, p): positions given for
  free, so still no model beats it, but it may be lower than what one reaches (position_known=True).
  R = B is full attention within the window; it equals the truth where windows are documents.
A decoder of n layers whose self-attention sees the W keys ending at each token sees the last
receptive_field(...) = n (W - 1) + 1 tokens: pass that as R.

Topics, place known: with view x_s .. x_{j-1} of a document (document positions, s >= 1), the unseen prefix is
marginalised exactly: p(x_s .. x_j) = sum_k 1/K m_k^(s)[x_s] prod_{u=s+1..j} T_k[x_{u-1}, x_u] with
m_k^(1) = pi_k, m_k^(s+1) = m_k^(s) T_k the symbol marginals of topic k; p(x_j | view) is the ratio
of that sum at j and at j - 1. End-of-text and the separators of functions cost 0 (known position).
Place unknown (no end-of-text in view, view x_{s0} .. x_{j-1} of R symbols, C_k its transitions):
p(next = symbol y) is proportional to sum_k M_k(L - R) C_k T_k[x_{j-1}, y], p(next = end-of-text) to
sum_k m_k^(L+1-R)[x_{s0}] C_k, with M_k(S) = sum_{s=1..S} m_k^(s)[x_{s0}]: the view starts at s' <= L - R
before a symbol, at s' = L + 1 - R before the end-of-text.

Functions: inputs cost log I each. An output f(x) costs 0 when a complete pair x>y is in view, else
log O, except when the view starts inside a pair whose output y0 is visible and input hidden: then
p(f(x) = y) = (c + [y = y0] + n / O) / (O c + 1 + n), c the visible inputs v with f(v) = y0, n the
inputs neither visible nor x (the hidden input is uniform over all I inputs). Place unknown: the
characters' kinds show where pairs start, so only the end-of-text is uncertain: after an output it
has probability 1 / N3, N3 the places t' > R in a window where a space or it may come.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import LtmError
from .cache import split_tokens
from .synthetic import FunctionsLaw, TopicsLaw
from .windows import num_windows

DOC_CHUNK = 256  # documents scored at once (memory: K x chunk x L floats, several arrays)


def receptive_field(n_layer: int, attention_window: int, block_size: int) -> int:
    """Tokens a decoder's prediction can depend on: W keys per layer ending at each token, stacked."""
    if attention_window <= 0:
        return block_size
    return min(block_size, n_layer * (attention_window - 1) + 1)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - top), axis=axis)) + np.squeeze(top, axis)


def _view_start(p: np.ndarray, block_size: int, window: int | None) -> np.ndarray:
    """First stream position each predicted position p sees (window None: 0, everything)."""
    if window is None:
        return np.zeros_like(p)
    return np.maximum((p - 1) // block_size * block_size, p - window)


def _law_table(law, eot_id: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbol index of each token id, -1 elsewhere; byte values of the law's characters)."""
    if isinstance(law, TopicsLaw):
        chars = law.symbols
    else:
        chars = law.input_symbols + ">" + law.output_symbols + " "
    table = np.full(max(vocab, 256, eot_id + 1), -1, dtype=np.int64)
    table[np.frombuffer(chars.encode(), dtype=np.uint8)] = np.arange(len(chars))
    return table, np.frombuffer(chars.encode(), dtype=np.uint8)


def stream_documents(law, tokens: np.ndarray, eot_id: int) -> np.ndarray:
    """The documents of a byte-token stream as law symbol indices [docs, L]; a stream that is not
    EOT doc EOT ... of this law (another tokenizer, another corpus) is an LtmError."""
    L = law.length
    tokens = np.asarray(tokens, dtype=np.int64)
    n_docs = (len(tokens) - 1) // (L + 1)
    if len(tokens) != n_docs * (L + 1) + 1 or n_docs == 0:
        raise LtmError(f"the token stream ({len(tokens)} tokens) is not whole documents of {L} byte tokens each")
    table, _ = _law_table(law, eot_id, 0)
    body = tokens[1:].reshape(n_docs, L + 1)
    if np.any(body[:, L] != eot_id) or np.any(tokens[0] != eot_id) or np.any(body[:, :L] >= len(table)):
        raise LtmError("the token stream does not separate documents by end-of-text where the law puts them (use --tokenizer bytes)")
    docs = table[body[:, :L]]
    if np.any(docs < 0):
        raise LtmError("the token stream holds tokens outside the corpus' alphabet (use --tokenizer bytes)")
    return docs


def _topics_marginals(law: TopicsLaw) -> np.ndarray:
    """log m_k^(s)[a] for s = 1..L: [K, L + 1, V] (index 0 unused)."""
    m = np.ones((law.k, law.length + 1, law.v))
    m[:, 1] = law.start
    for s in range(2, law.length + 1):
        m[:, s] = np.einsum("ka,kab->kb", m[:, s - 1], law.trans)
    with np.errstate(divide="ignore"):
        return np.log(m)


def topics_token_logprobs(law: TopicsLaw, docs: np.ndarray, block_size: int, window: int | None,
                          positions: np.ndarray | None = None) -> np.ndarray:
    """log p of each predicted token at stream `positions` (default: all of 1 .. n_docs (L + 1)),
    given everything before (window None) or the window-R view (module docstring)."""
    L, K = law.length, law.k
    P = L + 1
    n_docs = len(docs)
    if positions is None:
        positions = np.arange(1, n_docs * P + 1)
    out = np.zeros(len(positions))
    with np.errstate(divide="ignore"):
        log_t = np.log(law.trans)
    log_m = _topics_marginals(law)
    doc_of = (positions - 1) // P  # the EOT ending document d belongs to document d
    j_of = positions - doc_of * P  # 1..L symbols, L + 1 the EOT (cost 0)
    for first in range(0, n_docs, DOC_CHUNK):
        chunk = docs[first : first + DOC_CHUNK]
        pick = np.nonzero((doc_of >= first) & (doc_of < first + len(chunk)) & (j_of <= L))[0]
        if not len(pick):
            continue
        # step[k, d, u] = log T_k[x_{u-1}, x_u] for document positions u = 2..L (index u - 1);
        # cumulative sums of its finite part and of its -inf count: window sums without inf - inf
        step = log_t[:, chunk[:, :-1], chunk[:, 1:]]  # [K, docs, L - 1]
        finite = np.where(np.isfinite(step), step, 0.0)
        zero = ~np.isfinite(step)
        cum = np.concatenate([np.zeros((K, len(chunk), 1)), np.cumsum(finite, -1)], -1)  # [K, docs, L]: sum u <= j
        cum_zero = np.concatenate([np.zeros((K, len(chunk), 1), dtype=np.int64), np.cumsum(zero, -1)], -1)
        p = positions[pick]
        d = doc_of[pick] - first
        j = j_of[pick]
        e = doc_of[pick] * P  # the stream position of the EOT that starts document d
        s = np.maximum(1, _view_start(p, block_size, window) - e)
        first_symbol = chunk[d, s - 1]
        head = log_m[:, s, first_symbol] - math.log(K)  # [K, n]

        def joint(upto):
            total = cum[:, d, upto - 1] - cum[:, d, s - 1]
            blocked = cum_zero[:, d, upto - 1] - cum_zero[:, d, s - 1] > 0
            return _logsumexp(np.where(blocked, -np.inf, head + total), 0)

        num = joint(j)
        den = np.where(j > s, joint(np.maximum(j - 1, s)), 0.0)
        out[pick] = num - den
    return out


def _topics_blind(law: TopicsLaw, docs: np.ndarray, window: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices into positions, log p) of the targets whose window-R view holds no end-of-text, in
    windows that are documents (block = L + 1): the view's place in the document is unknown, each
    of the places it could hold (view start s' = 1 .. L + 1 - R) weighted by the law."""
    L, K, R = law.length, law.k, window
    P = L + 1
    doc_of = (positions - 1) // P
    j_of = positions - doc_of * P  # 1..L symbols, L + 1 the end-of-text
    pick = np.nonzero(j_of > R)[0]
    out = np.zeros(len(pick))
    if not len(pick):
        return pick, out
    with np.errstate(divide="ignore"):
        log_t = np.log(law.trans)
        m = np.exp(_topics_marginals(law))
        m[:, 0] = 0.0
        log_cum = np.log(np.cumsum(m, axis=1))  # log sum_{s' <= s} m_k^(s')[a]: [K, L + 1, V]
        log_m = np.log(m)
    for first in range(0, len(pick), DOC_CHUNK * P):
        rows = pick[first : first + DOC_CHUNK * P]
        d, j = doc_of[rows], j_of[rows]
        s0 = j - R  # document position of the view's first token (the view is s0 .. j - 1)
        doc = docs[d]  # [n, L]
        a = doc[np.arange(len(rows)), s0 - 1]
        # the view's transitions, and the target's when it is a symbol
        u = s0[:, None] + 1 + np.arange(R)[None, :]  # positions s0 + 1 .. s0 + R = j
        inside = u <= np.minimum(j, L)[:, None]
        prev = np.take_along_axis(doc, np.clip(u - 2, 0, L - 1), 1)
        cur = np.take_along_axis(doc, np.clip(u - 1, 0, L - 1), 1)
        steps = np.where(inside[None], log_t[:, prev, cur], 0.0)  # [K, n, R]
        is_target = (u == j[:, None])[None] & (j <= L)[None, :, None]
        view = steps.sum(-1, where=~is_target & ~np.isneginf(steps)) + np.where(
            np.any(np.isneginf(steps) & ~is_target, -1), -np.inf, 0.0)
        target = np.where(j <= L, np.sum(np.where(is_target, steps, 0.0), -1), 0.0)
        head_den = log_cum[:, L + 1 - R, a]
        head_num = np.where(j <= L, log_cum[:, max(L - R, 0), a] if L > R else -np.inf, log_m[:, L + 1 - R, a])
        out[first : first + len(rows)] = _logsumexp(head_num + view + target, 0) - _logsumexp(head_den + view, 0)
    return pick, out


def functions_token_logprobs(law: FunctionsLaw, docs: np.ndarray, block_size: int, window: int | None,
                             positions: np.ndarray | None = None) -> np.ndarray:
    """As topics_token_logprobs, for builtin:functions (docs: symbol indices, inputs 0..I-1, '>' I,
    outputs I+1..I+O, ' ' I+O+1)."""
    L, I, O = law.length, law.inputs, law.outputs
    P = L + 1
    if positions is None:
        positions = np.arange(1, len(docs) * P + 1)
    out = np.zeros(len(positions))
    doc_of = (positions - 1) // P
    j_of = positions - doc_of * P
    slot = (j_of - 1) % 4
    out[(j_of <= L) & (slot == 0)] = -math.log(I)
    for index in np.nonzero((j_of <= L) & (slot == 2))[0]:
        p, d, j = int(positions[index]), int(doc_of[index]), int(j_of[index])
        s = max(1, int(_view_start(np.array([p]), block_size, window)[0]) - d * P)
        q = (j - 1) // 4
        if 4 * q + 1 < s:  # the input of this pair is hidden: f(x) of a uniform unseen x
            out[index] = -math.log(O)
            continue
        doc = docs[d]
        x, y = int(doc[4 * q]), int(doc[4 * q + 2]) - I - 1
        r_lo = (s - 1 + 3) // 4  # first pair whose input is in view
        seen = {int(doc[4 * r]): int(doc[4 * r + 2]) - I - 1 for r in range(r_lo, q)}
        if x in seen:
            out[index] = 0.0 if seen[x] == y else -math.inf
            continue
        r0 = r_lo - 1
        if r0 >= 0 and 4 * r0 + 3 >= s:  # a pair cut by the view: output y0 seen, input hidden
            y0 = int(doc[4 * r0 + 2]) - I - 1
            c = sum(1 for v in seen.values() if v == y0)
            n = I - len(seen) - 1
            out[index] = math.log((c + (y == y0) + n / O) / (O * c + 1 + n))
        else:
            out[index] = -math.log(O)
    return out


def _functions_blind(law: FunctionsLaw, window: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As _topics_blind for functions: the view shows where pairs start (its characters' kinds) and
    its probability is the same at every place, so only the end-of-text is uncertain: after an
    output, end-of-text has probability 1 / (the places t' > R where a space or it may come)."""
    P, R = law.length + 1, window
    t = positions - (positions - 1) // P * P
    after_output = np.nonzero((t > R) & (t % 4 == 0))[0]
    places = sum(1 for q in range(law.pairs) if 4 * q + 4 > R)
    eot = t[after_output] == P
    return after_output, np.where(eot, -math.log(places), math.log1p(-1 / places) if places > 1 else -math.inf)


def token_logprobs(law, docs: np.ndarray, block_size: int, window: int | None, positions=None,
                   position_known: bool = True) -> np.ndarray:
    """log p of each target at stream `positions` (module docstring). position_known False: the
    window-R predictive of a model that knows positions only from what it sees, for windows that
    are exactly documents (block_size = L + 1)."""
    fn = topics_token_logprobs if isinstance(law, TopicsLaw) else functions_token_logprobs
    if positions is None:
        positions = np.arange(1, len(docs) * (law.length + 1) + 1)
    out = fn(law, docs, block_size, window, positions)
    if not position_known and window is not None and window < block_size:
        if block_size != law.length + 1:
            raise LtmError(f"a position-blind window predictive needs windows that are documents (block size {law.length + 1})")
        pick, blind = (_topics_blind(law, docs, window, positions) if isinstance(law, TopicsLaw)
                       else _functions_blind(law, window, positions))
        out[pick] = blind
    return out


def window_nlls(law, tokens, eot_id: int, block_size: int, window: int | None,
                max_windows: int | None = None, position_known: bool | None = None) -> np.ndarray:
    """NLL (nats) of each of the first `max_windows` windows (all when None) that eval scores:
    the truth (window None) or the best window-R AR (window R; R >= block_size: full attention).
    position_known None: False (the tight floor) where windows are documents, else True."""
    if position_known is None:
        position_known = block_size != law.length + 1
    n = num_windows(len(tokens), block_size)
    if max_windows is not None:
        n = min(n, max_windows)
    L = law.length
    needed = n * block_size + 1  # the stream positions those windows cover
    whole = -(-(needed - 1) // (L + 1)) * (L + 1) + 1  # rounded up to whole documents
    docs = stream_documents(law, np.asarray(tokens[: min(len(tokens), whole)]), eot_id)
    logp = token_logprobs(law, docs, block_size, window, np.arange(1, needed), position_known)
    return -logp.reshape(n, block_size).sum(1)


@dataclasses.dataclass(frozen=True)
class SplitTruth:
    """Per-token NLLs (nats) over the windows eval scores, with standard errors over windows."""
    split: str
    windows: int
    tokens: int
    true_nll: float
    true_nll_se: float
    best_window_nll: float  # the best window-R AR (R = Truth.receptive_field)
    best_window_nll_se: float
    best_full_nll: float  # the best AR with full attention within the window (R = block size)
    best_full_nll_se: float


@dataclasses.dataclass(frozen=True)
class Truth:
    corpus: str
    block_size: int
    receptive_field: int  # R tokens seen by the windowed predictive (block_size: full attention)
    position_known: bool  # False: the window floor is exact (windows are documents); True: a lower floor
    splits: dict

    def to_json(self) -> dict:
        return {"corpus": self.corpus, "block_size": self.block_size, "receptive_field": self.receptive_field,
                "position_known": self.position_known,
                "splits": {name: dataclasses.asdict(s) for name, s in self.splits.items()}}


def _per_token(nlls: np.ndarray, block_size: int) -> tuple[float, float]:
    se = float(nlls.std(ddof=1) / math.sqrt(len(nlls))) if len(nlls) > 1 else float("nan")
    return float(nlls.mean() / block_size), se / block_size


def corpus_truth(corpus, tokenizer, block_size: int, receptive: int | None = None, splits=("val",),
                 max_windows: int | None = None) -> Truth | None:
    """The exact answers for `corpus` cut into eval's windows of `block_size` predicted tokens:
    true NLL, best window-R AR (R = `receptive`, None: full attention) and best full-attention AR,
    per split over its first `max_windows` windows. None when the corpus has no known law or the
    tokenizer is not `bytes` (the answers are for byte tokens)."""
    law = getattr(corpus, "law", None)
    if law is None or tokenizer.name != "bytes":
        return None
    R = block_size if receptive is None else min(int(receptive), block_size)
    if R < 1:
        raise LtmError(f"the receptive field must be at least 1 token, got {receptive}")
    out = {}
    for split in splits:
        tokens = split_tokens(corpus, split, tokenizer)
        truth = window_nlls(law, tokens, tokenizer.eot_id, block_size, None, max_windows)
        best = window_nlls(law, tokens, tokenizer.eot_id, block_size, R, max_windows)
        full = best if R == block_size else window_nlls(law, tokens, tokenizer.eot_id, block_size, block_size, max_windows)
        out[split] = SplitTruth(split, len(truth), len(truth) * block_size, *_per_token(truth, block_size),
                                *_per_token(best, block_size), *_per_token(full, block_size))
    return Truth(corpus.spec, block_size, R, block_size != law.length + 1, out)

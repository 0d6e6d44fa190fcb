"""Text views of the result records: the lines `ltm` prints. The JSON (`--json`, summary.json) is
the record itself (its `to_dict()`); here only the tables and their labels.

Each function returns the whole text, one output line per line, without a final newline.

Adding a labelled row to the eval table (e.g. a true NLL): put it in `EvalResult.rows` with its
`bound` (the name in the bound column), `label` (the "what" column) and the columns' numbers
(`kl_per_sequence` None prints "-"); a note line under such rows goes in `EVAL_ROW_NOTES`, keyed by
`bound`. Adding one to the compare table: a `CompareRow` field, and its line(s) in `compare_row_lines`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .diagnostics import DiagnoseResult, khat_verdict
from .fewshot import FewshotResult
from .generate import SampleResult
from .eval_runs import CompareResult, CompareRow, EvalResult
from .zeroshot import PUBLISHED_MAP_BATCH, PUBLISHED_NUM_PROC, ZeroShotComparison, ZeroShotResult


def _num(value) -> str:
    """A diagnostic for the table: 3 decimals; NaN (stored as null in JSON) shown as nan."""
    return "nan" if value is None else f"{value:.3f}"


def _dash(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# Lines printed under an eval row of the given `bound`, after it (e.g. IWAE's sampled-KL ELBO).
EVAL_ROW_NOTES: dict[str, Callable[[dict], str]] = {
    "iwae": lambda row: (f"{'':>6} {'':>6} {row['sampled_elbo_nll_per_token']:>11.4f}  "
                         f"sampled-KL ELBO of the same {row['samples']} draws"),
}


def eval_row_lines(result: EvalResult, row: dict) -> list[str]:
    """One row of the eval table (bounds, or the exact likelihood of `none`), and its notes."""
    steps = "-" if row.get("fitted_steps") is None else str(row["steps"])
    kind_name = "exact" if result.exact else row["bound"]
    line = (f"{steps:>6} {kind_name:>6} {row['nll_per_token']:>11.4f} {row['perplexity']:>11.3f} "
            f"{_dash(row['kl_per_sequence'], '.3f'):>8} {row['per_sequence_mean_perplexity']:>15.3f}  {row['label']}")
    note = EVAL_ROW_NOTES.get(row["bound"])
    return [line] + ([note(row)] if note else [])


def fixed_noise_lines(row: dict) -> list[str]:
    """A fixed-noise row of the published reference, below the table: labelled, never a column."""
    return [f"  {row['steps']:>4} steps: fixed-noise per-sequence perplexity {row['per_sequence_mean_perplexity']:.3f} "
            "(mean of exp[(cross-entropy + KL) / N] at q fitted to the same eps that scores it: not a bound)",
            f"  {row['steps']:>4} steps: no-KL reconstruction perplexity {row['reconstruction_perplexity']:.3f} "
            "(cross-entropy at the fitted z, which has seen the tokens it predicts: not a bound, not a likelihood)"]


def _view_name(truth: dict) -> tuple[str, str]:
    """(bound column, label) of the best-AR row: window W, naming the receptive field if it differs."""
    B, R, W = truth["block_size"], truth["receptive_field"], truth["attention_window"]
    if W <= 0 or W >= B:
        name, what = "AR", f"best full-attention AR (all {B} tokens of a window in view)"
    else:
        name = f"AR-{W}"
        what = f"best window-{W} AR" + (f" ({truth['n_layer']} layers: receptive field {R} tokens)" if R != W else "")
    floor = ("positions given free: a floor, possibly below what a model reaches" if truth["position_known"]
             else "the lowest expected NLL of a model with that view")
    return name, f"{what}, se {_se(truth['best_window_nll_se'])}; {floor}"


def truth_lines(truth: dict | None) -> list[str]:
    """The corpus' exact answers on the evaluated windows, as rows of the eval table (not bounds:
    the bounds above are read against them). Nothing on a corpus without a law."""
    if truth is None:
        return []
    name, what = _view_name(truth)
    lines = []
    for kind, nll, label in (("true", truth["true_nll"], f"true NLL (the corpus' law, exact), se {_se(truth['true_nll_se'])}"),
                             (name, truth["best_window_nll"], what)):
        lines.append(f"{'-':>6} {kind:>6} {nll:>11.4f} {math.exp(nll):>11.3f} {'-':>8} {'-':>15}  {label}")
    return lines


def eval_text(result: EvalResult) -> str:
    """The eval table. Bounds (and the exact likelihood of `none`) in the table; the reference's
    fixed-noise figures below it, each labelled as what it is: never in a column read as a bound."""
    r, head = result, result.headline
    covered = "all" if head["num_sequences"] == r.split_windows else f"the first {head['num_sequences']} of"
    lines = [f"{r.data} [{r.split}]: {covered} {r.split_windows} windows, {head['num_tokens']} predicted "
             f"tokens (every number below covers these windows); {r.backend}/{r.inference} "
             f"(trained {r.trained_with}); q = {r.proposal}",
             f"{'steps':>6} {'bound':>6} {'nats/token':>11} {'perplexity':>11} {'KL/seq':>8} {'mean exp(-B/T)':>15}  what"]
    for row in r.rows:
        if not row.get("fixed_noise"):
            lines += eval_row_lines(r, row)
    lines += truth_lines(r.truth)
    what = "exact: corpus-level exp(NLL / predicted tokens)" if r.exact else \
        "corpus-level exp(bound / predicted tokens), a bound on the perplexity"
    lines += [f"perplexity: {what}; mean exp(-B/T): the per-sequence mean of the same terms (the paper's averaging)",
              f"unigram of the same tokens: {r.unigram_nll_per_token:.4f} nats/token, perplexity {r.unigram_perplexity:.3f}",
              f"training FLOPs per token: {r.flops_per_token:.4g} (decoder forward {r.decoder_flops_per_token:.4g})"]
    fixed = [row for row in r.rows if row.get("fixed_noise")]
    if fixed:
        lines.append("the published reference's numbers on the same windows -- NOT bounds, not comparable to the bounds above:")
        for row in fixed:
            lines += fixed_noise_lines(row)
    return "\n".join(lines)


def compare_row_lines(row: CompareRow) -> list[str]:
    """One run of the compare table."""
    return [f"{row.run[-40:]:<40} {row.backend + '/' + row.inference:<18} {row.params:>10} "
            f"{row.nll_per_token:>11.4f} {row.perplexity:>11.3f} {_dash(row.kl_per_sequence, '.2f'):>8} "
            f"{row.flops_per_token:>18.4g} {_dash(row.difference, '+.4f'):>10}"]


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _se(value: float | None) -> str:
    """A standard error; None: one window or seed, none to estimate."""
    return "-" if value is None else f"{value:.4f}"


def paired_lines(result: CompareResult) -> list[str]:
    """Each later run minus the first, paired over the shared windows: mean, se, 95% interval."""
    rows = [row for row in result.rows[1:] if row.paired is not None]
    if not rows:
        return []
    n = rows[0].paired["windows"]
    lines = [f"paired over the {n} windows, each run minus the first ({Path(result.rows[0].run).name}), nats/token "
             "(mean of per-window differences; se over windows; 95% t interval):"]
    for row in rows:
        p = row.paired
        verdict = ("resolved" if p["resolved"] else "not resolved (one window: no interval)" if p["se"] is None
                   else "not resolved (the interval covers 0)")
        lines.append(f"  {row.run[-40:]:<40} {_signed(p['nats_per_token'])}  se {_se(p['se'])}  "
                     f"95% CI [{_signed(p['ci_low'])}, {_signed(p['ci_high'])}]  {verdict}")
    return lines


def compare_truth_lines(result: CompareResult) -> list[str]:
    """The corpus' exact answers on the compared windows, and the best AR of each run's view."""
    if result.truth is None:
        return []
    t = result.truth
    lines = [f"true NLL of these windows (the corpus' law, exact): {t['true_nll']:.4f} nats/token, se {_se(t['true_nll_se'])}"]
    views: dict[int, list[CompareRow]] = {}
    for row in result.rows:
        if row.best_window_nll is not None:
            views.setdefault(row.receptive_field, []).append(row)
    for R, rows in views.items():
        names = ", ".join(dict.fromkeys(Path(row.run).name for row in rows))
        lines.append(f"best AR seeing {R} tokens (the view of {names}): {rows[0].best_window_nll:.4f} nats/token, "
                     f"se {_se(rows[0].best_window_nll_se)}")
    return lines


def compare_text(result: CompareResult) -> str:
    """The compare table: one line per run, on the same tokens; then the paired differences and
    the exact answers where the corpus has them."""
    lines = [f"{result.data} [{result.split}], {result.rows[0].num_tokens} predicted tokens each",
             f"{'run':<40} {'method':<18} {'params':>10} {'nats/token':>11} {'perplexity':>11} {'KL/seq':>8} "
             f"{'train FLOPs/token':>18} {'vs first':>10}"]
    for row in result.rows:
        lines += compare_row_lines(row)
    lines += paired_lines(result)
    lines += compare_truth_lines(result)
    return "\n".join(lines)


def _chain_lines(r: dict) -> list[str]:
    c = r["chains_diagnostics"]
    verdict = "converged" if c["converged"] else "NOT converged"
    return [f"  R-hat max {_num(c['rhat_max'])}, share above 1.01 (NaN counted) {c['share_rhat_above_limit']:.3f}, "
            f"R-hat of the log joint max {_num(c['rhat_log_joint_max'])}: {verdict}",
            f"  ESS bulk min {c['ess_bulk_min']:.1f}, tail min {c['ess_tail_min']:.1f}; "
            f"acceptance {r['accept_prob']:.3f}, step size {r['step_size']:.4f}",
            f"  kernel {r['kernel']}, start {r['init']}, warm-up {r['warmup']}, "
            f"{r['gradient_evaluations']:.0f} gradient evaluations per chain and sequence"
            + (f", {r['divergences']} divergent transitions" if "divergences" in r else ""),
            f"  {r['verdict']}"]


def _method_lines(m: str, r: dict, sequences: int) -> list[str]:
    """One method's diagnostics: chains or k-hat, then collapse (and its noise floor)."""
    lines = [f"{m}: {r['chains']} chain(s) x {r['draws']} draws, {r['steps']} steps"]
    if "chains_diagnostics" in r:
        lines += _chain_lines(r)
    if "khat" in r:
        k = r["khat"]
        exact = sum(s == "exact" for s in k["status"])
        lines.append(f"  PSIS k-hat max {_num(k['khat_max'])}, share above {k['threshold']:.3f}: "
                     f"{k['share_above_threshold']:.3f} ({exact} of {len(k['status'])} exact)")
        lines.append(f"  k-hat {khat_verdict(k)}")
    col = r["collapse"]
    kl = ", ".join(f"{v:.2f}" for v in col["kl_per_latent_vector"])
    source = "from q's parameters" if col.get("source") == "q" else "from the draws"
    n, windows = sequences, col.get("active_sequences")
    over = (f"over these {n} sequences" if windows == n else
            f"variance of q's mean over {windows} windows: these {n} sequences and the next {windows - n}")
    lines.append(f"  KL per latent vector [{kl}] ({source}, mean over the {n} sequences); active units "
                 f"{col['active_units']} of {col['num_units']} coordinates ({over})")
    if "collapse_noise_floor" in r:  # what the same estimator gives on as many prior draws
        floor = r["collapse_noise_floor"]
        lines.append(f"  noise floor (as many prior draws): KL per latent vector up to {max(floor['kl_per_latent_vector']):.2f}; "
                     f"active units {floor['active_units']}")
    return lines


def diagnose_text(result: DiagnoseResult) -> str:
    """Each method's posterior diagnostics, their bounds side by side, the amortization gap."""
    lines = [f"{result.run} [{result.split}]: {result.sequences} sequences (the split's first {result.sequences} windows) "
             f"-> {result.out}"]
    for m, r in result.methods.items():
        lines += _method_lines(m, r, result.sequences)
    with_bounds = {m: r for m, r in result.methods.items() if "bounds" in r}
    if with_bounds:  # the methods side by side: each q's bounds, and whether its chains converged
        k = next(iter(with_bounds.values()))["bounds"]["samples"]
        lines += [f"bounds of each method's q on these windows (nats/token, {k} draws; langevin: the Gaussian fitted to its draws):",
                  f"  {'method':<16} {'steps':>6} {'ELBO':>9} {f'IWAE_{k}':>9}  chains"]
        for m, r in with_bounds.items():
            b = r["bounds"]
            lines.append(f"  {m:<16} {b['steps']:>6} {b['elbo_nll_per_token']:>9.4f} {b['iwae_nll_per_token']:>9.4f}  "
                         f"{r.get('verdict', '-')}")
    if result.amortization_gap is not None:
        g = result.amortization_gap
        lines.append(f"amortization gap (local - amortized ELBO): {g['nats_per_sequence']:.3f} nats/sequence, "
                     f"{g['nats_per_token']:.4f} nats/token")
    return "\n".join(lines)


def sample_text(result: SampleResult) -> str:
    """The samples, each under a `--- sample i ---` line when there are several."""
    lines = []
    for i, text in enumerate(result.samples):
        if len(result.samples) > 1:
            lines.append(f"--- sample {i + 1} ---")
        lines.append(text)
    return "\n".join(lines)


def sample_notes(result: SampleResult) -> list[str]:
    """Notices (for stderr) on samples with no new text: the model ended the text at once."""
    empty = [i + 1 for i, text in enumerate(result.samples) if text == (result.prompt or "")]
    if not empty:
        return []
    which = "the sample is" if len(result.samples) == 1 else f"sample{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))} {'are' if len(empty) > 1 else 'is'}"
    return [f"notice: {which} empty: the model ended the text at its first new token (end-of-text); "
            f"another --seed, a --prompt or --no-stop-at-eos gives text"]


def import_text(summary: dict) -> str:
    """What `ltm import` made of a published checkpoint, and how to bound it."""
    m = summary["model"]
    return (f"imported {summary['source']} (published iteration {summary['iter_num']}): {m['n_layer']} layers, "
            f"d {m['d_model']}, {m['n_head']} heads, {m['n_z']} latent vectors, {m['block_size']}-token windows, "
            f"{summary['params']} parameters; {summary['steps']} fast steps at lr {summary['fast_lr']:g}\n"
            f"run: {summary['run']}  (bound it: ltm eval {summary['run']} --fixed-noise --bound iwae --samples 16)")


def plot_text(summary: dict) -> str:
    """What `ltm plot` drew: per run its last logged numbers, then the file."""
    lines = []
    for run in summary["runs"]:
        train, val = run["series"]["train"], run["series"]["val"]
        loss, bound = train.get("loss"), val.get("nll_per_token")
        parts = [f"{len(loss['iter'])} training records to iteration {loss['iter'][-1]}, last loss {loss['value'][-1]:.4f}"
                 if loss else "no training record"]
        if bound:
            what = "NLL" if run["exact"] else "bound"
            parts.append(f"val {what} {bound['value'][-1]:.4f} nats/token at iteration {bound['iter'][-1]}")
        lines.append(f"{run['label']} ({run['backend']}/{run['method']}): {'; '.join(parts)}")
    lines.append(f"plot: {summary['out']} (against {'iterations' if summary['x'] == 'iters' else 'training tokens'})")
    return "\n".join(lines)


def study_text(summary: dict, table: str) -> str:
    """How far a study is, and where its table (`table`, study.md) and plots are."""
    return (f"{summary['points_done']} of {summary['points_total']} runs done; table: {table}; "
            f"plots: {', '.join(summary['plots'])}")


def fewshot_text(result: FewshotResult) -> str:
    """The lines `ltm fewshot` prints, without a final newline."""
    r = result
    lines = [f"few-shot {r.task}: {r.shots} shots, {r.scored} questions scored of {r.test_size} in test "
             f"(train {r.train_size}); {r.backend} / {r.inference} (trained with {r.trained_with}), "
             f"{r.steps} inference steps, seed {r.seed}",
             f"{'protocol':<10} {'decoding':<8} {'metric':<20} {'value':>7}  {'95% interval':<17} interval"]
    for row in r.rows:
        lines.append(f"{row['protocol']:<10} {row['decoding']:<8} {row['metric']:<20} {row['value']:>7.3f}  "
                     f"[{row['low']:.3f}, {row['high']:.3f}]   {row['interval']}")
    lines += [f"  {row['protocol']}: {row['label']}" for row in r.rows if row["protocol"] == "published"]
    lines += [f"note: {note}" for note in r.notes]
    lines.append(f"every question, prompt, sample and verdict: {r.out}")
    return "\n".join(lines)


def _blocks_line(r: ZeroShotResult) -> str:
    head = r.honest
    covered = "all" if head["num_sequences"] == r.blocks else f"the first {head['num_sequences']} of"
    detok = f"detokenizer {r.detokenizer}" if r.detokenizer else "no detokenizer"
    return (f"{r.data} [{r.split}], published zero-shot protocol: {r.documents} documents, one EOS after each, "
            f"no BOS ({detok}); {r.corpus_tokens} tokens joined and cut into blocks of {r.block_size}, "
            f"{r.dropped_tokens} dropped (each batch of {PUBLISHED_MAP_BATCH} documents in {PUBLISHED_NUM_PROC} "
            f"shards drops its remainder); {covered} {r.blocks} blocks scored, {r.predicted_per_block} predicted "
            f"tokens each ({head['num_tokens']})")


def zeroshot_compare_text(result: ZeroShotComparison) -> str:
    """`ltm compare --protocol published`: one line per run on the same blocks, then the paired
    differences of the honest (or exact) numbers."""
    lines = [_blocks_line(result.results[0]),
             f"{'run':<32} {'method':<14} {'published':>10} {'noise':>6} {'nats/token':>11} {'perplexity':>11} "
             f"{'iwae nats/token':>16}"]
    for r in result.results:
        iwae = r.iwae
        lines.append(f"{_short(r):<32} {r.backend + '/' + r.inference:<14} "
                     f"{r.published['per_sequence_mean_perplexity']:>10.3f} {r.published_noise:>6} "
                     f"{r.honest['nll_per_token']:>11.4f} {r.honest['perplexity']:>11.3f} "
                     f"{_dash(iwae and iwae['nll_per_token'], '.4f'):>16}")
    lines.append("published: the mean over blocks of exp(loss / N) (fixed noise: q fitted to the eps that scores it, NOT a "
                 "bound; exact: a run without a latent); nats/token, perplexity: the honest corpus-level ELBO, or "
                 "the exact NLL")
    name = result.results[0].run
    for r, p in zip(result.results[1:], result.paired[1:]):
        if p is None:
            continue
        verdict = "resolved" if p["resolved"] else "not resolved"
        lines.append(f"paired over the {p['windows']} blocks, {_short(r)} minus {Path(name).name}: "
                     f"{_signed(p['nats_per_token'])} nats/token, se {_se(p['se'])}, "
                     f"95% CI [{_signed(p['ci_low'])}, {_signed(p['ci_high'])}] ({verdict})")
    return "\n".join(lines)


def _short(r: ZeroShotResult) -> str:
    return str(r.run)[-32:]


def zeroshot_text(result: ZeroShotResult) -> str:
    """`ltm eval --protocol published`: the blocks, the published per-sequence figure (labelled,
    never read as a bound) and the honest numbers of the same blocks."""
    r, head = result, result.honest
    steps = "" if r.steps is None else f", {r.steps} inference steps"
    lines = [f"{_blocks_line(r)}; {r.backend}/{r.inference} (trained {r.trained_with}){steps}",
             f"{'number':<10} {'nats/token':>11} {'perplexity':>11} {'per-block mean':>14} {'KL/seq':>8}  what"]

    def line(name: str, row: dict, corpus_level: bool = True) -> str:
        nll, ppl = (row["nll_per_token"], row["perplexity"]) if corpus_level else (None, None)
        kl = None if r.exact else row.get("kl_per_sequence")
        return (f"{name:<10} {_dash(nll, '.4f'):>11} {_dash(ppl, '.3f'):>11} {row['per_sequence_mean_perplexity']:>14.3f} "
                f"{_dash(kl, '.3f'):>8}  {row['label']}")

    lines.append(line("published", r.published, corpus_level=False))
    lines.append(line("exact" if r.exact else "elbo", head))
    if r.iwae is not None:
        note = " (K = 1: a sampled-KL ELBO; --samples K for a tighter one)" if r.iwae["samples"] == 1 else ""
        lines.append(line(f"iwae_{r.iwae['samples']}", r.iwae) + note)
    lines.append("perplexity: corpus-level exp(sum of the blocks' -bound (or NLL) / their predicted tokens); per-block "
                 "mean: the mean over blocks of exp(each block's / N), the published averaging (never below the "
                 "corpus-level figure of the same numbers, by Jensen)")
    return "\n".join(lines)

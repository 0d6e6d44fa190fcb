"""PNG plots (matplotlib, Agg): training curves (`ltm plot`), bounds (`ltm eval --plot`, `ltm
compare --plot`), the study's and `ltm diagnose`'s (ArviZ rank / energy plots, k-hat, KL). Every LTM curve is labelled as a bound; an AR (no latent) number
as exact."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .durable import naming
from .errors import LtmError
from .inference import descriptor


def check_plot_path(path: str | Path | None, flag: str = "--plot") -> Path | None:
    """A --plot destination: a .png file whose folder exists. Checked before any work is done."""
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise LtmError(f"{flag} {path}: the plot is a PNG file; name it *.png")
    if not path.parent.is_dir():
        raise LtmError(f"{flag} {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise LtmError(f"{flag} {path} is a directory")
    try:  # a folder that exists but takes no files (/proc, read-only): found now, not after the work
        fd, probe = tempfile.mkstemp(prefix=".ltm-probe-", suffix=".png", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LtmError(f"{flag} {path}: cannot write in {path.parent} ({exc.strerror or exc})") from None
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.23 announces its 1.0 refactor
        import arviz as az
    return az


def _savefig(fig, path: Path) -> None:
    """A diagnose figure, written into its (hidden, renamed at the end) folder."""
    with naming(path):
        fig.savefig(path, dpi=80)


def _save(fig, path: Path) -> None:
    """Written to a hidden sibling, then renamed: a plot is either complete or absent."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        with naming(path):  # a full disk inside savefig carries no file name
            fig.savefig(tmp, dpi=90, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _pyplot().close(fig)


# The training record's scalars drawn by `ltm plot`, and the validation record's.
TRAIN_SCALARS = ("loss", "nll", "kl", "lr", "grad_norm")
VAL_SCALARS = ("nll_per_token", "kl_per_sequence")


def tokens_seen(records: list[dict], batch_size: int, block_size: int):
    """iteration -> training tokens predicted up to it (batch_size windows of block_size predicted
    tokens per iteration, data/windows.py). A resume that changed train.batch_size left an event
    record saying so at its iteration: the tokens before it count at the old size. `batch_size` is
    the run's present one (config.json)."""
    changes = [(r["iter"], r["changed"]["train.batch_size"]) for r in records
               if r.get("event") == "resume" and "train.batch_size" in r.get("changed", {})]
    segments = [(0, changes[0][1]["was"] if changes else batch_size)] + [(it, c["now"]) for it, c in changes]

    def tokens(iteration: int) -> int:
        total = 0
        for (start, size), (end, _) in zip(segments, segments[1:] + [(iteration, None)]):
            total += max(0, min(iteration, end) - start) * size * block_size
        return total

    return tokens


def training_series(records: list[dict], batch_size: int, block_size: int) -> dict:
    """The curves of one run's metrics.jsonl, exactly as logged: {"train": {scalar: {"iter", "tokens",
    "value"}}, "val": {...}} for each scalar some record has. Event records (a resume's notice) are
    not points."""
    tokens = tokens_seen(records, batch_size, block_size)
    series: dict[str, dict] = {"train": {}, "val": {}}
    for record in records:
        if "event" in record:
            continue
        part, names = ("val", VAL_SCALARS) if record.get("split") == "val" else ("train", TRAIN_SCALARS)
        for name in names:
            if isinstance(record.get(name), (int, float)):
                curve = series[part].setdefault(name, {"iter": [], "tokens": [], "value": []})
                curve["iter"].append(record["iter"])
                curve["tokens"].append(tokens(record["iter"]))
                curve["value"].append(float(record[name]))
    return series


def plot_training(runs: list[dict], path: Path, x: str = "iters") -> None:
    """Training curves of one or more runs overlaid (`ltm plot`): each run a dict with "label",
    "series" (training_series), "exact" (no latent: its val number is the exact NLL) and
    "grad_clip". x: "iters" or "tokens".

    The axes: KL and learning rate start at 0 (a KL that collapses to 0 is the thing to see); the
    gradient norm is on a log axis (its spikes would flatten the rest); loss and val bound are
    scaled to the data, as line plots are read by their differences, and the legend gives each
    run's last value in numbers, so no gap is read off a truncated axis."""
    plt = _pyplot()
    from matplotlib.ticker import LogFormatter

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), layout="constrained")
    panels = [
        (axes[0, 0], "train", "loss", "training loss (nats/token)"),
        (axes[0, 1], "val", "nll_per_token", "val bound (nats/token; exact if no latent)"),
        (axes[0, 2], "train", "kl", "KL of q (nats/sequence); dots: val"),
        (axes[1, 0], "train", "lr", "learning rate"),
        (axes[1, 1], "train", "grad_norm", "gradient norm before clipping (log)"),
    ]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    key = "iter" if x == "iters" else "tokens"
    handles = []
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        series = run["series"]
        loss, val = series["train"].get("loss"), series["val"].get("nll_per_token")
        last = [f"loss {loss['value'][-1]:.3f}" if loss else None,
                f"val {'NLL' if run['exact'] else 'bound'} {val['value'][-1]:.3f}" if val else None]
        label = f"{run['label']} ({', '.join(t for t in last if t)})"
        for ax, part, name, _ in panels:
            curve = series[part].get(name)
            if curve is None or (name == "kl" and run["exact"]):  # no latent: its logged KL 0 is no measure
                continue
            style = {"marker": "o", "ms": 4, "lw": 1} if part == "val" else {"lw": 1}
            line, = ax.plot(curve[key], curve["value"], color=color, **style)
            if ax is axes[0, 0]:
                line.set_label(label)
                handles.append(line)
        val_kl = series["val"].get("kl_per_sequence")
        if val_kl is not None and not run["exact"]:
            axes[0, 2].plot(val_kl[key], val_kl["value"], "o", color=color, ms=4)
    clips = {run["grad_clip"] for run in runs}
    if len(clips) == 1 and next(iter(clips)) and axes[1, 1].lines:
        axes[1, 1].axhline(next(iter(clips)), color="gray", ls="--", lw=1, label="train.grad_clip")
        axes[1, 1].legend(fontsize=7)
    for ax, part, name, title in panels:
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration" if x == "iters" else "training tokens (predicted)", fontsize=8)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        elif name in ("kl", "lr"):
            ax.set_ylim(bottom=0)
        elif name == "grad_norm":
            ax.set_yscale("log")
            plain = LogFormatter(labelOnlyBase=False)  # 1.5, not 1.5 x 10^0
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axes[1, 2].axis("off")
    axes[1, 2].legend(handles=handles, loc="center", fontsize=8, title="run (last values)", title_fontsize=8)
    _save(fig, path)


def plot_eval_steps(record: dict, path: Path) -> None:
    """Bound (nats/token) vs inference steps of one `ltm eval` record (one point per row)."""
    plt = _pyplot()
    rows = [r for r in record["rows"] if not r.get("fixed_noise")]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if record["exact"] or any(r.get("fitted_steps") is None for r in rows):
        ax.axhline(rows[-1]["nll_per_token"], color="k", label="exact NLL (no latent)" if record["exact"] else "bound (no steps)")
    else:
        steps = [r["steps"] for r in rows]
        kind = rows[0]["bound"].upper() + (f"_{rows[0]['samples']}" if rows[0]["bound"] == "iwae" else "")
        ax.plot(steps, [r["nll_per_token"] for r in rows], "o-", label=f"{kind} (upper bound on NLL)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
    ax.axhline(record["unigram_nll_per_token"], color="gray", ls=":", label="unigram (same tokens)")
    ax.set_xlabel("inference steps at evaluation (T)")
    ax.set_ylabel("nats / token")
    ax.set_title(f"{record['backend']}/{record['inference']}, {record['num_tokens']} {record['split']} tokens", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_compare(table: dict, path: Path) -> None:
    """`ltm compare`: left, one bar per run from 0 (its bound, or exact NLL without a latent), so
    bar heights compare as ratios honestly; right, each later run minus the first with its paired
    95% interval (when measured), where a margin of 0.01 is visible on its own scale."""
    plt = _pyplot()
    rows = table["rows"]
    exact = [not descriptor(r["inference"]).latent for r in rows]  # no latent: the exact NLL
    fig, (ax, diff) = plt.subplots(1, 2, figsize=(max(7.0, 2.2 * len(rows) + 3), 3.8))
    names = [Path(r["run"]).name for r in rows]
    values = [r["nll_per_token"] for r in rows]
    colors = ["tab:gray" if e else "tab:blue" for e in exact]
    bars = ax.bar(range(len(rows)), values, color=colors)
    for bar, r, e in zip(bars, rows, exact):
        what = "exact" if e else "bound"
        ax.annotate(f"{r['nll_per_token']:.3f}\n{what}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    labels = [f"{n}\n{r['inference']}" for n, r in zip(names, rows)]
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(0, max(values) * 1.15)
    ax.set_ylabel("nats / token (blue: upper bound, gray: exact)")
    ax.set_title(f"{table['data']} [{table['split']}], {rows[0]['num_tokens']} tokens each", fontsize=9)
    later = list(range(1, len(rows)))
    for i in later:
        r = rows[i]
        d = r.get("difference", values[i] - values[0])
        paired = r.get("paired") or {}
        err = None
        if paired.get("ci_low") is not None:
            err = [[d - paired["ci_low"]], [paired["ci_high"] - d]]
        diff.errorbar([i], [d], yerr=err, fmt="o", color=colors[i], capsize=4)
    diff.axhline(0.0, color="black", linewidth=0.8)
    diff.set_xticks(later, labels[1:], fontsize=7)
    diff.set_xlim(0.5, len(rows) - 0.5)
    diff.set_ylabel(f"minus {names[0]} (nats/token, 95% CI)")
    diff.set_title("paired difference per window", fontsize=9)
    _save(fig, path)


def study_plots(ltm: list[dict], twins: dict[str, dict], rows: list[dict], out: Path) -> list[str]:
    """The study's three pictures; returns the file names written under out."""
    plt = _pyplot()
    written = []

    # 1. Bound vs training tokens (fit's periodic val evaluations), LTM points and their AR twins.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rec in ltm:
        c = rec["curve"]
        ax.plot([p["tokens"] for p in c], [p["nll_per_token"] for p in c], "o-", ms=3, label=f"{rec['point']} s{rec['seed']} (bound)")
    styles = {"same window": "--", "full attention": "-.", "equal FLOPs": ":"}
    for tid, rec in twins.items():
        c = rec["curve"]
        window = f"window {rec['attention_window']}" if rec["attention_window"] else "full attention"
        ax.plot([p["tokens"] for p in c], [p["nll_per_token"] for p in c], color="k", ls=styles.get(rec["twin"], "--"), lw=1,
                label=f"AR {window}, {rec['iters']} it (exact)")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens (AR dotted: trained for an LTM's training FLOPs)")
    ax.set_ylabel("val nats/token (fit's periodic evaluation)")
    ax.legend(fontsize=6, ncol=2)
    _save(fig, out / "bound_vs_tokens.png")
    written.append("bound_vs_tokens.png")

    # 2. Bound vs test-time steps T, per point (ELBO), with the same-window AR twin as a line.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rec in ltm:
        elbo = [r for r in rec["rows"] if r["bound"] == "elbo"]
        line, = ax.plot([r["steps"] for r in elbo], [r["nll_per_token"] for r in elbo], "o-", ms=3,
                        label=f"{rec['point']} s{rec['seed']} ELBO (bound)")
        same = next((twins[t["id"]] for t in rec["twins"] if t["twin"] == "same window" and t["id"] in twins), None)
        if same is not None:
            ax.axhline(same["rows"][0]["nll_per_token"], color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("inference steps at evaluation (T); dotted: the point's AR twin (exact)")
    ax.set_ylabel("val nats/token")
    ax.legend(fontsize=6, ncol=2)
    _save(fig, out / "bound_vs_steps.png")
    written.append("bound_vs_steps.png")

    # 3. Bound vs latent size: points that change nothing but model.n_z, and the base; one line per
    # seed at the largest test-time T all of them have, each seed's AR twin dashed in its colour.
    sized = [r for r in rows if set(r["settings"]) <= {"model.n_z"}]
    if len({r["settings"].get("model.n_z") for r in sized}) >= 2:
        T = max(set.intersection(*({x["eval_steps"] for x in sized if x["point"] == p} for p in {r["point"] for r in sized})))
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for seed in sorted({r["seed"] for r in sized}):
            pts = sorted((r["settings"].get("model.n_z") or next(x["n_z"] for x in ltm if x["point"] == r["point"]),
                          r["best_bound"], r["ar_nll"]) for r in sized if r["seed"] == seed and r["eval_steps"] == T)
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"best bound, T={T}, seed {seed}")
            ar = [p[2] for p in pts if p[2] is not None]
            if ar:
                ax.axhline(ar[0], color=line.get_color(), ls="--", lw=1, label=f"AR twin, seed {seed} (exact)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("latent vectors per sequence (n_z)")
        ax.set_ylabel("val nats/token")
        ax.legend(fontsize=7)
        _save(fig, out / "bound_vs_latent_size.png")
        written.append("bound_vs_latent_size.png")
    return written


def plot_method(method: str, post: dict, report: dict, out: Path, idata) -> list[str]:
    """`ltm diagnose`'s PNG plots of one method in folder `out`: rank plot of a few coordinates
    (chains), energy plot of sequence 0 (HMC / NUTS, from its InferenceData `idata`), k-hat per
    sequence (variational), KL per latent vector (all). Returns the file names written."""
    from matplotlib.ticker import MaxNLocator

    plt, az = _pyplot(), _arviz()
    written = []
    if post["z"].shape[0] > 1:
        coords = {f"z[0,0,{k}]": post["z"][:, :, 0, 0, k] for k in range(min(3, post["z"].shape[-1]))}
        coords["log_joint[0]"] = post["log_joint"][:, :, 0]
        axes = az.plot_rank(az.convert_to_dataset(coords))
        _savefig(np.ravel(axes)[0].figure, out / f"{method}_rank.png")
        plt.close("all")
        written.append(f"{method}_rank.png")
    if "energy" in post:  # HMC / NUTS: marginal energy against energy transitions, sequence 0
        ax = az.plot_energy(idata.sel(seq=0))
        _savefig(np.ravel(ax)[0].figure, out / f"{method}_energy.png")
        plt.close("all")
        written.append(f"{method}_energy.png")
    if "khat" in report:
        fig, ax = plt.subplots(figsize=(6, 3))
        k = report["khat"]["khat"]
        ax.scatter(np.arange(len(k)), np.nan_to_num(k, nan=-0.5), c=["green" if s == "exact" else "C0" for s in report["khat"]["status"]])
        ax.axhline(report["khat"]["threshold"], color="red", ls="--", label="threshold")
        ax.set(xlabel="sequence", ylabel="PSIS k-hat", title=f"{method}: k-hat per sequence (exact at -0.5)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # sequence numbers: no 0.5 ticks
        ax.legend()
        fig.tight_layout()
        _savefig(fig, out / f"{method}_khat.png")
        plt.close(fig)
        written.append(f"{method}_khat.png")
    fig, ax = plt.subplots(figsize=(6, 3))
    kl = report["collapse"]["kl_per_latent_vector"]
    ax.bar(np.arange(len(kl)), kl)
    ax.set(xlabel="latent vector", ylabel="KL(q || prior), nats", title=f"{method}: KL per latent vector")
    fig.tight_layout()
    _savefig(fig, out / f"{method}_kl.png")
    plt.close(fig)
    written.append(f"{method}_kl.png")
    return written

"""Simulation-based calibration (Talts et al. 2018) of the langevin kernels on a tiny non-conjugate model.

Model: z ~ N(0, I_2); tokens x_t ~ Categorical(softmax(A_t z + b_t)), t = 1..16, vocabulary 8, with
A [16, 8, 2], b [16, 8] fixed random (seed 0; A ~ N(0, 1), b ~ N(0, 0.5^2)): a softmax likelihood,
no conjugacy, posterior sd ~0.3 per coordinate. For n = 1..N: z*_n ~ prior, x_n ~ p(x | z*_n),
then the kernel runs on p(z | x_n) from an independent prior draw (never from z*): `warmup` steps,
then L * thin steps of which every thin-th is kept. The rank of z*_n (per coordinate) among its L
draws is in 0..L; if the kernel samples the posterior, each rank is uniform on L + 1 values
(Talts et al., theorem 1). The N replications are one batch of N sequences (one chain each).

The test: Pearson's chi-square of the N ranks of each coordinate grouped into `bins` equal bins of
(L + 1) / bins ranks (expected N / bins per bin), df = bins - 1, and the smaller p-value of the
two coordinates against alpha / 2 (Bonferroni). Defaults N = 1000, L = 19, 10 bins: expected 100
per bin, so the chi-square approximation is sound, and a bin of 2 ranks keeps power against the
smooth shapes a biased sampler makes (a U or a hump: too narrow or too wide; a slope: shifted).
Thinning by 10 (every kernel) makes the kept draws nearly independent: correlated draws alone bend
the histogram (a correct but sticky chain fails SBC: HMC thinned by 2 gives a U, chi-square ~80).

The kernels are the library's own functions (pyro.langevin_chains, pyro_hmc.hmc_chains,
numpyro.langevin_sample, blackjax_kernels.sample_pairs). The broken variants are made here only:
`mutated` recompiles a library function from its source with one line replaced (the library is
untouched); `half_gradient` wraps the log density so its value is right and its gradient halved.

    python bench/sbc.py --out bench/results-cpu-sbc.json

prints each rank histogram (text) and writes one JSON: settings, and per (backend, kernel,
variant) the chi-square statistic, p-value, pass / reject, acceptance, histogram counts.
"""
from __future__ import annotations

import argparse
import inspect
import json
import textwrap
import time

import numpy as np
from scipy import stats

T, V, D = 16, 8, 2
THIN = {"mala": 10, "hmc": 10, "nuts": 10}
WARMUP = 200


def decoder(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, V, D)).astype(np.float32), 0.5 * rng.standard_normal((T, V)).astype(np.float32)


def simulate(n: int, seed: int = 1):
    """(z* [N, 2], tokens [N, 16], chain starts [N, 2]) of the N replications."""
    A, b = decoder()
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, D)).astype(np.float32)
    logits = np.einsum("tvd,nd->ntv", A, z) + b
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    u = rng.random((n, T, 1))
    tokens = (u > p.cumsum(-1)).sum(-1).clip(max=V - 1)
    return z, tokens, rng.standard_normal((n, D)).astype(np.float32)


def mutated(module, name: str, old: str, new: str):
    """module.name recompiled from its source with `old` (which must occur once) replaced by `new`."""
    src = textwrap.dedent(inspect.getsource(getattr(module, name)))
    assert src.count(old) == 1, f"{name}: the line to mutate is not in the source (the library changed?)"
    namespace = dict(vars(module))
    exec(compile(src.replace(old, new), f"<mutated {name}>", "exec"), namespace)
    return namespace[name]


# The broken variants (made in run_pyro / run_numpyro below), by name
BROKEN = {
    "no-proposal-correction": "MALA's acceptance ratio without the proposal densities q(z | z') / q(z' | z)",
    "no-kinetic-energy": "HMC's acceptance ratio without the change of kinetic energy",
    "half-gradient": "every gradient scaled by 0.5 (the log density itself right)",
    "unadjusted": "no Metropolis step at all (ULA: the library's mala = False), step 0.3",
}


def run_pyro(kernel: str, tokens, z0, warmup: int, draws: int, variant: str | None = None, seed: int = 0):
    import torch

    from ltm_ppl.inference.langevin import pyro as lpyro
    from ltm_ppl.inference.langevin import pyro_hmc

    torch.manual_seed(seed)
    A, b = (torch.as_tensor(a) for a in decoder())
    tok = torch.as_tensor(tokens)

    def log_joint(z):  # z [C, N, 2] -> [C, N]
        logits = torch.einsum("tvd,cnd->cntv", A, z) + b
        ll = torch.log_softmax(logits, -1).gather(-1, tok.expand(z.shape[0], *tok.shape).unsqueeze(-1)).squeeze(-1)
        lp = ll.sum(-1) - 0.5 * (z * z).sum(-1)
        return 0.5 * lp + 0.5 * lp.detach() if variant == "half-gradient" else lp

    mala, hmc = lpyro.langevin_chains, pyro_hmc.hmc_chains
    if variant == "no-proposal-correction":
        mala = mutated(lpyro, "langevin_chains", """log_alpha = (lp_new - lp - ((z - mean_backward) ** 2).sum(event) / (2 * s2)
                         + ((proposal - mean_forward) ** 2).sum(event) / (2 * s2))""", "log_alpha = lp_new - lp")
    if variant == "no-kinetic-energy":
        hmc = mutated(pyro_hmc, "hmc_chains", "h1 = -lp_new + 0.5 * (p_new * p_new * inv_mass).sum(event)",
                      "h1 = -lp_new + 0.5 * (p * p * inv_mass).sum(event)")
    start = torch.as_tensor(z0)[None]
    if kernel == "hmc":
        out = hmc(log_joint, start, warmup, draws, 0.3, 4, 0.8)
    else:
        out = mala(log_joint, start, warmup, draws, 0.3, variant != "unadjusted", 0.57)
    return out["z"][0].numpy(), out["accept_prob"].mean().item()  # [draws, N, 2]


def run_numpyro(kernel: str, tokens, z0, warmup: int, draws: int, variant: str | None = None, seed: int = 0):
    import jax
    import jax.numpy as jnp

    from ltm_ppl.inference.langevin import blackjax_kernels
    from ltm_ppl.inference.langevin import numpyro as lnumpyro

    A, b = (jnp.asarray(a) for a in decoder())
    tok = jnp.asarray(tokens)

    def logp_pair(tok_n, z):  # one sequence: tokens [16], z [2] -> scalar
        ll = jnp.take_along_axis(jax.nn.log_softmax(jnp.einsum("tvd,d->tv", A, z) + b), tok_n[:, None], -1).sum()
        lp = ll - 0.5 * (z * z).sum()
        return 0.5 * lp + jax.lax.stop_gradient(0.5 * lp) if variant == "half-gradient" else lp

    batched = jax.vmap(jax.vmap(logp_pair, in_axes=(0, 0)), in_axes=(None, 0))  # ([N, 16], [C, N, 2]) -> [C, N]
    key = jax.random.PRNGKey(seed)
    start = jnp.asarray(z0)[None]
    if kernel == "mala":
        sampler = lnumpyro.langevin_sample
        if variant == "no-proposal-correction":
            sampler = mutated(lnumpyro, "langevin_sample", "log_alpha = lp_new - lp - backward / (2 * s2) + forward / (2 * s2)",
                              "log_alpha = lp_new - lp")
        run = jax.jit(lambda k, z: sampler(lambda u: batched(tok, u), z, k, warmup=warmup, draws=draws, step_size=0.3,
                                           mala=variant != "unadjusted", target_accept=0.57))
        out = run(key, start)
        return np.asarray(out["draws"][:, 0]), float(out["accept"].mean())
    settings = blackjax_kernels.SamplerSettings(kernel=kernel, warmup=warmup, draws=draws, step_size=0.3, target_accept=0.8,
                                                leapfrog_steps=4, schedule="vmap")
    out = jax.jit(lambda k, z: blackjax_kernels.sample_pairs(logp_pair, tok, z, k, settings))(key, start)
    return np.asarray(out["draws"][:, 0]), float(out["accept"].mean())


def ranks(z_true, draws, L: int, thin: int):
    """Rank of z* among the L kept draws (every thin-th of draws [L * thin, N, 2]): [N, 2] in 0..L."""
    kept = draws[thin - 1::thin][:L]
    assert kept.shape[0] == L
    return (kept < z_true[None]).sum(0)


def chi_square(r, L: int, bins: int):
    """Per coordinate: (statistic, p-value, counts) of the ranks r [N, 2] grouped into `bins` bins."""
    assert (L + 1) % bins == 0
    out = []
    for d in range(r.shape[1]):
        counts = np.bincount(r[:, d] * bins // (L + 1), minlength=bins)
        stat, p = stats.chisquare(counts)
        out.append((float(stat), float(p), counts.tolist()))
    return out


def sbc(backend: str, kernel: str, variant: str | None = None, n: int = 1000, L: int = 19, bins: int = 10,
        alpha: float = 0.01, warmup: int = WARMUP, thin: int | None = None, seed: int = 1) -> dict:
    thin = thin or THIN[kernel]
    z_true, tokens, z0 = simulate(n, seed)
    started = time.perf_counter()
    run = run_pyro if backend == "pyro" else run_numpyro
    draws, accept = run(kernel, tokens, z0, warmup, L * thin, variant, seed)
    seconds = time.perf_counter() - started
    tests = chi_square(ranks(z_true, draws, L, thin), L, bins)
    p_min = min(p for _, p, _ in tests)
    return {"backend": backend, "kernel": kernel, "variant": variant or "correct", "n": n, "L": L, "bins": bins,
            "thin": thin, "warmup": warmup, "alpha": alpha, "seed": seed,
            "chi_square": [s for s, _, _ in tests], "p_value": [p for _, p, _ in tests], "p_min": p_min,
            "passed": p_min > alpha / len(tests), "accept": accept, "counts": [c for _, _, c in tests],
            "seconds": round(seconds, 2)}


CASES = [("pyro", "mala", None), ("pyro", "hmc", None), ("numpyro", "mala", None), ("numpyro", "hmc", None),
         ("numpyro", "nuts", None),
         ("pyro", "mala", "no-proposal-correction"), ("numpyro", "mala", "no-proposal-correction"),
         ("pyro", "hmc", "no-kinetic-energy"), ("pyro", "mala", "unadjusted"),
         ("pyro", "mala", "half-gradient"), ("pyro", "hmc", "half-gradient"), ("numpyro", "hmc", "half-gradient")]


def histogram(result) -> str:
    lines = [f"{result['backend']:8s} {result['kernel']:5s} {result['variant']:23s} chi2 "
             + " ".join(f"{s:6.1f}" for s in result["chi_square"]) + "  p " + " ".join(f"{p:.3g}" for p in result["p_value"])
             + f"  {'pass' if result['passed'] else 'REJECT'}  accept {result['accept']:.2f}  {result['seconds']} s"]
    top = max(max(c) for c in result["counts"])
    for d, counts in enumerate(result["counts"]):
        for c in counts:
            lines.append(f"  z{d} {c:4d} " + "#" * round(40 * c / top))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--L", type=int, default=19)
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--only", default="", help="comma-separated backend:kernel[:variant]")
    ap.add_argument("--seed", type=int, default=1, help="seed of the replications (z*, tokens, starts) and kernels")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    cases = CASES
    if args.only:
        cases = [tuple(s.split(":")) + (None,) * (3 - len(s.split(":"))) for s in args.only.split(",")]
    results = []
    for backend, kernel, variant in cases:
        result = sbc(backend, kernel, variant, args.n, args.L, args.bins, seed=args.seed)
        print(histogram(result), flush=True)
        results.append(result)
    if args.out:
        settings = {"model": f"z ~ N(0, I_{D}); {T} tokens, vocabulary {V}, softmax(A_t z + b_t), A ~ N(0,1), b ~ N(0, 0.25), seed 0",
                    "n": args.n, "seed": args.seed, "L": args.L, "bins": args.bins, "warmup": WARMUP, "thin": THIN, "alpha": 0.01,
                    "test": "Pearson chi-square per coordinate, pass if min p > alpha / 2",
                    "draws_shape": "[L * thin, N, 2] per run, one chain per replication", "variants": BROKEN}
        with open(args.out, "w") as f:
            json.dump({"settings": settings, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

"""The LTM `local` training iteration in plain JAX, no NumPyro, side by side with the NumPyro path.

The plain step does the same maths with the same kernels (models/jax/decoder.py's scanned decoder,
models/jax/likelihood.py's chunked head + log-softmax) and the same optimisers (optax Adam for the
T fast steps on (mu, log sigma), clipped AdamW for the slow step, the on-device finiteness guard),
but writes the ELBO by hand: sum of token log-probs at z = mu + sigma * eps, minus the analytic
KL(N(mu, sigma^2) || N(0, 1)). The bench runs the two interleaved (NumPyro, plain, NumPyro, ...),
each repeat timing `--iters` iterations, and reports tokens/s of each and the median ratio
NumPyro / plain (the PPL's cost; target <= 1.05).

    python bench/plain_jax_step.py --shape tiny --repeats 5 --out bench/results-cpu-numpyro-vs-plain-tiny.json
    python bench/plain_jax_step.py --shape small --repeats 5
Default config otherwise (init "prior", Adam fast steps, one noise sample).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_step import SHAPES  # noqa: E402
from report import emit  # bench/ is on sys.path when a bench script runs


def plain_local_step(cfg, dtype):
    """jit-compiled step(params, opt_state, tokens, lrs, key, lr) -> (params, opt_state, metrics)."""
    import jax
    import jax.numpy as jnp
    import optax

    from ltm_ppl.models.jax.likelihood import token_log_probs
    from ltm_ppl.models.jax.decoder import decoder_hidden

    m, inf, t = cfg.model, cfg.inference, cfg.train
    assert inf.init in ("prior", "narrow") and inf.optimizer == "adam" and inf.scale_param == "log_sigma"
    assert not inf.fixed_noise
    S = inf.num_samples
    fast_opt = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
    slow_opt = optax.chain(
        optax.scale_by_adam(b1=t.beta1, b2=t.beta2, eps=1e-8),
        optax.add_decayed_weights(t.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
    )

    def loglik_kl(params, tokens, loc, log_scale, eps):
        """log p(x | z) [S, B] at z = loc + sigma eps, and KL(q || N(0, I)) [B]."""
        z = loc + jnp.exp(log_scale) * eps  # [S, B, n_z, d]
        B, L = tokens.shape
        inputs = jnp.broadcast_to(tokens[:, :-1], (S, B, L - 1)).reshape(S * B, L - 1)
        hidden = decoder_hidden(params, m, inputs, z.reshape(S * B, *z.shape[2:]), dtype=dtype)
        targets = jnp.broadcast_to(tokens[:, 1:], (S, B, L - 1)).reshape(S * B, L - 1)
        loglik = token_log_probs(hidden, params["tok_emb.weight"], targets, dtype).sum(-1).reshape(S, B)
        kl = (0.5 * (jnp.exp(2 * log_scale) + loc**2 - 1) - log_scale).sum((-2, -1))
        return loglik, kl

    def step(params, opt_state, tokens, lrs, key, lr):
        B, L = tokens.shape
        shape = (B, m.n_z, m.d_model)
        fit_key, slow_key = jax.random.split(key)
        frozen = jax.lax.stop_gradient(params)

        def fast_loss(local, eps):
            loglik, kl = loglik_kl(frozen, tokens, local[0], local[1], eps)
            return -(loglik.mean(0) - kl).sum() / (L - 1)

        def body(carry, xs):
            local, state = carry
            step_lr, k = xs
            grads = jax.grad(fast_loss)(local, jax.random.normal(k, (S, *shape), jnp.float32))
            updates, state = fast_opt.update(grads, state, local)
            return (jax.tree.map(lambda p, u: p - step_lr * u, local, updates), state), None

        local = (jnp.zeros(shape, jnp.float32), jnp.full(shape, inf.init_log_scale, jnp.float32))
        (local, _), _ = jax.lax.scan(body, (local, fast_opt.init(local)), (lrs, jax.random.split(fit_key, lrs.shape[0])))
        loc, log_scale = jax.lax.stop_gradient(local)
        eps = jax.random.normal(slow_key, (S, *shape), jnp.float32)
        n_tokens = B * (L - 1)

        def slow_loss(p):
            loglik, kl = loglik_kl(p, tokens, loc, log_scale, eps)
            nll = -loglik.mean(0).sum() / n_tokens
            loss = nll + kl.sum() / n_tokens
            return loss, {"loss": loss, "nll": nll, "kl": kl.mean()}

        (loss, out), grads = jax.value_and_grad(slow_loss, has_aux=True)(params)
        norm = optax.tree.norm(grads)
        if t.grad_clip:
            grads = jax.tree.map(lambda g: g * jnp.minimum(1.0, t.grad_clip / (norm + 1e-6)), grads)
        updates, new_state = slow_opt.update(grads, opt_state, params)
        new_params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        return keep(new_params, params), keep(new_state, opt_state), out | {"grad_norm": norm, "finite": ok}

    return jax.jit(step), slow_opt


def config(shape: str, batch: int, device: str):
    from ltm_ppl.config import RunConfig

    cfg = RunConfig()
    n_layer, n_head, d, n_z, block, vocab, steps = SHAPES[shape]
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.n_z, m.block_size, m.vocab_size = n_layer, n_head, d, n_z, block, vocab
    cfg.inference.steps = steps
    cfg.train.batch_size, cfg.train.device, cfg.train.backend = batch, device, "numpyro"
    return cfg


class PlainRunner:
    """The plain step with its own weights (the NumPyro object's initial ones) and key stream."""

    def __init__(self, inference):
        import jax

        from ltm_ppl.inference.local.numpyro import fast_lrs

        cfg = inference.cfg
        self.step, opt = plain_local_step(cfg, inference.dtype)
        self.params = jax.tree.map(lambda x: x.copy(), inference.params)
        self.opt_state = opt.init(self.params)
        self.lrs = inference.array(fast_lrs(cfg.inference.steps, cfg.inference))
        self.key = jax.random.PRNGKey(1)
        self.cfg = cfg

    def run(self, tokens):
        import jax

        from ltm_ppl.inference.schedules import slow_lr

        self.key, sub = jax.random.split(self.key)
        self.params, self.opt_state, out = self.step(self.params, self.opt_state, tokens, self.lrs, sub,
                                                     np.float32(slow_lr(0, self.cfg.train)))
        return out


CPU_S = {"numpyro": [], "plain": []}  # process CPU time per iteration: robust to other jobs' load


def timed(fn, n: int, sync, name: str | None = None) -> float:
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    sync()
    if name:
        CPU_S[name].append((time.process_time() - cpu) / n)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5, help="iterations per timed repeat")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import jax

    from ltm_ppl.run import library_versions
    from ltm_ppl.inference import create

    cfg = config(args.shape, args.batch, args.device)
    inference = create(cfg)
    plain = PlainRunner(inference)
    B, L = args.batch, cfg.model.block_size
    batch = np.random.default_rng(0).integers(0, cfg.model.vocab_size, size=(B, L + 1))
    tokens = inference.tensor(batch)
    sync_numpyro = inference.synchronize
    sync_plain = lambda: jax.block_until_ready(plain.params)  # noqa: E731

    compile_s = {"numpyro": timed(lambda: inference.step(batch), 1, sync_numpyro),
                 "plain": timed(lambda: plain.run(tokens), 1, sync_plain)}
    timed(lambda: inference.step(batch), 1, sync_numpyro)  # a second call may still compile (committed inputs)
    timed(lambda: plain.run(tokens), 1, sync_plain)
    times = {"numpyro": [], "plain": []}
    for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
        times["numpyro"].append(timed(lambda: inference.step(batch), args.iters, sync_numpyro, "numpyro"))
        times["plain"].append(timed(lambda: plain.run(tokens), args.iters, sync_plain, "plain"))
    ratios = [a / b for a, b in zip(times["numpyro"], times["plain"])]
    cpu_ratios = [a / b for a, b in zip(CPU_S["numpyro"], CPU_S["plain"])]
    result = {
        "benchmark": "numpyro_vs_plain_jax",
        "method": "local",
        "shape": {"name": args.shape, "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head,
                  "d_model": cfg.model.d_model, "n_z": cfg.model.n_z, "block_size": L,
                  "vocab_size": cfg.model.vocab_size, "batch": B, "fast_steps": cfg.inference.steps},
        "device": str(inference.device),
        "dtype": str(np.dtype(inference.dtype)),
        "tokens_per_s": {k: B * L / statistics.median(v) for k, v in times.items()},
        "s_per_iteration": {k: statistics.median(v) for k, v in times.items()},
        "s_per_iteration_all": times,
        "ratio_numpyro_over_plain_median": statistics.median(ratios),
        "ratios": ratios,
        "cpu_s_per_iteration_all": CPU_S,
        "ratio_numpyro_over_plain_cpu_time_median": statistics.median(cpu_ratios),
        "first_call_s": compile_s,
        "repeats": args.repeats,
        "iters_per_repeat": args.iters,
        "machine": platform.machine(),
        "versions": library_versions(),
        "argv": sys.argv[1:],
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()

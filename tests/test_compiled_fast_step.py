"""`--compile`'s whole fast step (local/compiled_fast_step.py) computes what the Pyro program does:
its loss and gradients equal those of Pyro's own trace (elbo_terms) for the same draws, its T
steps end where the eager loop (Pyro trace + autograd + torch.optim) ends, for Adam on log sigma
and the published AdamW on log variance, with and without KL shaping, and one compilation serves
T = 1 and T = 4 (a per-step recompile, e.g. a Python-float learning rate, fails the count).
The default-suite test captures the step with dynamo + AOT autograd (backend aot_eager: the same
graph and gradients, seconds to build); the slow one runs inductor through `ltm`'s own route."""
from __future__ import annotations

import functools

import pyro
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from ltm_ppl.config import RunConfig
from ltm_ppl.inference.local.compiled_fast_step import CompiledFastStep, step_scalars
from ltm_ppl.inference.local.fast_fit import FastFit
from ltm_ppl.inference.local.pyro import PyroLocal, fit_local_posterior
from ltm_ppl.inference.pyro_backend import frozen
from ltm_ppl.inference.pyro_elbo import elbo_terms
from ltm_ppl.models.torch.program import local_guide
from ltm_ppl.noise import FastNoise

B, N_Z, D, L = 3, 4, 32, 16


def tiny_config(optimizer="adam", scale_param="log_sigma", compile_=False) -> RunConfig:
    cfg = RunConfig()
    m = cfg.model
    m.n_layer, m.n_head, m.d_model, m.n_z, m.block_size, m.vocab_size = 2, 2, D, N_Z, L, 257
    cfg.train.device = "cpu"
    cfg.train.compile = compile_
    inf = cfg.inference
    inf.optimizer, inf.scale_param = optimizer, scale_param
    if optimizer == "adamw":
        inf.fast_lr_denominator = "T"
    return cfg


def draws(seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 257, (B, L + 1), generator=g)
    loc = 0.3 * torch.randn(B, N_Z, D, generator=g)
    log_scale = 0.1 * torch.randn(B, N_Z, D, generator=g) - 0.5
    eps = torch.randn(1, B, N_Z, D, generator=g)
    return tokens, loc, log_scale, eps


def pyro_loss_and_grads(inference, tokens, loc, scale_param, eps, factor, shaping=None):
    """The fast loop's loss through Pyro's traces (elbo_terms) and its autograd gradients."""
    from ltm_ppl.inference.gaussian import shaped_kl

    loc = loc.clone().requires_grad_(True)
    scale_param = scale_param.clone().requires_grad_(True)
    log_scale = scale_param / factor
    guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
    with frozen(inference.decoder), pyro.validation_enabled(False):
        loglik, kl = elbo_terms(inference.model, guide, tokens, latent_value=loc + log_scale.exp() * eps)
    if shaping is not None:
        kl = shaped_kl(loc, log_scale, *shaping, torch)
    loss = -(loglik.mean(0) - kl).sum() / L
    return (loss, *torch.autograd.grad(loss, [loc, scale_param]))


def assert_step_and_fits_match(inference, step, optimizer, factor, shaping):
    """inference: an eager PyroLocal whose decoder has the weights step's decoder has."""
    tokens, loc, log_scale, eps = draws()
    scale_param = factor * log_scale
    moments = tuple((torch.zeros_like(loc), torch.zeros_like(loc)) for _ in range(2))
    shaping_t = None if shaping is None else tuple(torch.tensor(float(v)) for v in shaping)
    with frozen(step.decoder):
        step.decoder.rope(0, L, loc.device), step.decoder.latent_rope(loc.device)
        got = step.compiled(tokens, eps, loc, scale_param, moments, step_scalars(4, inference.cfg.inference, loc.device)[0],
                            shaping_t)
    expected = pyro_loss_and_grads(inference, tokens, loc, scale_param, eps, factor, shaping)
    for name, a, b in zip(("loss", "grad loc", "grad scale"), got[:3], expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)

    for T in (1, 4):  # the same compiled function for every step and every T
        noise = torch.randn(T, 1, B, N_Z, D, generator=torch.Generator().manual_seed(T))
        eager = inference.fit_posterior(tokens, T, fast_noise=noise, kl_shaping=shaping)
        with frozen(step.decoder), pyro.validation_enabled(False):
            fitted = fit_local_posterior(inference.model, tokens, inference.latent_shape, inference.cfg.inference, T,
                                         inference.device, FastFit(FastNoise(per_step=noise), kl_shaping=shaping, compiled=step))
        for name, a, b in zip(("loc", "log_scale"), fitted[:2], eager[:2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} after T={T}")


@pytest.mark.parametrize("optimizer, scale_param, shaping", [
    ("adam", "log_sigma", None),
    ("adamw", "log_variance", (0.5, 0.05)),
])
def test_compiled_fast_step_equals_pyros_trace_and_compiles_once(optimizer, scale_param, shaping):
    inference = PyroLocal(tiny_config(optimizer, scale_param))
    factor = 2.0 if scale_param == "log_variance" else 1.0
    counter = CompileCounterWithBackend("aot_eager")
    step = CompiledFastStep(inference.decoder, False, optimizer, factor, backend=counter)
    assert_step_and_fits_match(inference, step, optimizer, factor, shaping)
    assert counter.frame_count == 1  # one graph for the single step, T = 1 and T = 4


@pytest.mark.slow  # inductor's compile takes ~45 s on one loaded core
def test_ltm_compile_runs_the_inductor_step_once_for_every_T():
    torch._dynamo.reset()
    inference = PyroLocal(tiny_config(compile_=True))
    step = inference.compiled_fast_step
    assert step is not None and step is inference.compiled_fast_step  # built once, kept
    before = counters["stats"]["unique_graphs"]
    assert_step_and_fits_match(PyroLocal(tiny_config()), step, "adam", 1.0, None)  # same seed: same weights
    assert counters["stats"]["unique_graphs"] - before == 1
    batch = draws()[0].numpy()
    assert bool(inference.step(batch)["finite"])  # compiled fast steps + the slow step (decoder compiled)
    graphs = counters["stats"]["unique_graphs"]
    assert bool(inference.step(batch)["finite"])
    assert counters["stats"]["unique_graphs"] == graphs  # the next iteration compiles nothing


def test_a_step_that_does_not_capture_falls_back_to_the_decoder_only_route(monkeypatch, capsys):
    """A kernel the capture cannot take (here a forced graph break) costs a warning, not the run."""
    from ltm_ppl.inference.local import compiled_fast_step

    original = compiled_fast_step.negative_elbo

    def breaking(*args, **kwargs):
        torch._dynamo.graph_break()
        return original(*args, **kwargs)

    monkeypatch.setattr(compiled_fast_step, "negative_elbo", breaking)
    torch._dynamo.reset()
    inference = PyroLocal(tiny_config(compile_=True))
    reference = PyroLocal(tiny_config())
    tokens = draws()[0]
    noise = torch.randn(2, 1, B, N_Z, D, generator=torch.Generator().manual_seed(5))
    inference.net = inference.decoder  # the decoder-only route's decoder, uncompiled: seconds, not minutes
    got = inference.fit_posterior(tokens, 2, fast_noise=noise)
    assert "did not compile" in capsys.readouterr().err and not inference.compile_fast_step
    expected = reference.fit_posterior(tokens, 2, fast_noise=noise)
    torch.testing.assert_close(got[0], expected[0])

"""What `fit` reports and what it trains from, checked on the path training runs (issue 25).

One training iteration of every registered method (the four built in and the test-registered
`prior`, which inherits the generic slow step), in both backends: its records `loss`, `nll`,
`kl`, the method's extras, `lr` and `grad_norm` equal an independent computation on the same
batch, at the same q and the same noise (the negative ELBO per predicted token from the PPL's own
TraceMeanField_ELBO, with z replayed / substituted; the analytic KL summed over the batch; the
gradient of that independent loss); and `ppl` is exp(loss), as metrics.jsonl records it and the
progress bar prints it. The q and noise are read off the step as it runs (a spy that records the
arguments of the backend's own ELBO call and passes them on unchanged); NumPyro's step runs under
jax.disable_jit so that they are concrete values.
"""
from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
import torch
from helpers import random_weights, tiny_cfg

from ltm_ppl.inference import registry

pytestmark = pytest.mark.usefixtures("jax_caches", "torch_one_thread")

RTOL = 2e-5  # float32: sums of ~100 token log-probs and 128 KL terms per sequence, another order
S = 2  # noise draws per ELBO: a sum instead of a mean over draws cannot hide
B = 3


@pytest.fixture(autouse=True)
def prior_registered():
    """The fifth method of tests/test_fifth_method.py: the generic slow step, no override."""
    from test_fifth_method import PRIOR

    registry.register(PRIOR)
    yield
    registry.unregister("prior")


def training_setup(method: str, backend: str, cls=None, **inference):
    """An inference object at random weights (far from the init: z matters) and a batch."""
    from ltm_ppl.inference import create

    cfg = tiny_cfg(method, backend=backend, train=dict(lr=1e-3, warmup_iters=3), num_samples=S, **inference)
    obj = create(cfg) if cls is None else cls(cfg)
    weights = random_weights({k: v.shape for k, v in obj.weights().items()}, seed=41)
    for name, value in weights.items():  # an encoder at these scales would give a KL of ~1e4 nats
        if name.startswith("encoder.") and value.ndim >= 2:
            weights[name] = 0.1 * value
    obj.load_weights(weights)
    batch = np.random.default_rng(42).integers(0, 64, (B, cfg.model.block_size + 1))
    return obj, batch


def analytic_kl_per_vector(loc, log_scale) -> np.ndarray:
    """KL(N(loc, exp(log_scale)^2) || N(0, 1)) of each latent vector (the last axis summed), in float64."""
    loc, log_scale = np.asarray(loc, np.float64), np.asarray(log_scale, np.float64)
    return (0.5 * (loc**2 + np.exp(2 * log_scale) - 1 - 2 * log_scale)).sum(-1)


def analytic_kl(loc, log_scale) -> np.ndarray:
    """KL(N(loc, exp(log_scale)^2) || N(0, 1)) per sequence [B], in float64."""
    kl = analytic_kl_per_vector(loc, log_scale)
    return kl.reshape(len(kl), -1).sum(-1)


def printed(cfg, metrics: dict) -> tuple[dict, dict]:
    """(the metrics.jsonl record, the progress bar's postfix) that fit makes of a step's metrics."""
    from tqdm import tqdm

    from ltm_ppl.inference import descriptor
    from ltm_ppl.train import MetricsBuffer, _show

    written = []
    buffer = MetricsBuffer(None, cfg, descriptor(cfg.inference.method).loss_is_bound, write=lambda run, r: written.append(r))
    buffer.add(1, metrics, 0.0)
    buffer.flush(0)
    assert written == [buffer.last]
    bar = tqdm(total=1, file=io.StringIO())
    _show(bar, buffer.last, None)
    postfix = dict(item.split("=") for item in bar.postfix.split(", "))
    bar.close()
    return buffer.last, postfix


def check_records(obj, metrics: dict, expected: dict, grads: list[np.ndarray], bound: bool = True):
    """The step's records against the independent numbers, then through fit's record and bar."""
    from ltm_ppl.inference.schedules import slow_lr

    got = {k: float(v) for k, v in metrics.items()}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=RTOL, abs=1e-6), name
    assert got["lr"] == pytest.approx(slow_lr(0, obj.cfg.train), rel=1e-7)
    norm = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads))
    assert norm > 0 and got["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert got["finite"] == 1.0 and obj.iteration == 1
    extras = set(got) - set(expected) - {"lr", "grad_norm", "finite"}
    assert not extras, f"records not checked: {extras}"
    record, postfix = printed(obj.cfg, metrics)
    assert record["loss"] == got["loss"] and postfix["loss"] == f"{got['loss']:.3f}"
    if bound:  # exp(loss): a bound on the perplexity, on the bar as written
        assert record["ppl"] == pytest.approx(math.exp(expected["loss"]), rel=1e-4)
        assert postfix["ppl"] == f"{record['ppl']:.1f}"
    else:
        assert "ppl" not in record and "ppl" not in postfix
    if "kl" in expected:
        assert postfix["kl"] == f"{record['kl']:.2f}"


# ----- Pyro ----------------------------------------------------------------------------------------
def pyro_elbo_sum(model, tokens, loc, log_scale, z):
    """sum_i ELBO_i of q = N(loc, exp(log_scale)^2), the log-likelihood averaged over the draws z
    [S, B, *event]: -TraceMeanField_ELBO with the guide's z replayed (analytic KL). Differentiable."""
    import pyro
    from pyro import poutine

    from ltm_ppl.models.torch.program import local_guide

    guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
    total = 0.0
    with pyro.validation_enabled(False):
        for zs in z:
            at_z = poutine.trace(guide).get_trace(tokens)
            at_z.nodes["z"]["value"] = zs
            total = total - pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(
                model, poutine.replay(guide, trace=at_z), tokens)
    return total / len(z)


def pyro_loglik(model, tokens, z):
    """log p(x_i | z_ci) [C, B] from a trace of the model with z [C, B, *event] conditioned on
    (z None: the model without latent, [B])."""
    import pyro
    from pyro import poutine

    with pyro.validation_enabled(False):
        if z is None:
            trace = poutine.trace(model).get_trace(tokens)
        else:
            with pyro.plate("chains", z.shape[0], dim=-2):
                trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(tokens)
    site = trace.nodes["x"]
    return site["fn"].log_prob(site["value"])


def pyro_grads(obj, loss_of_params):
    """Gradients of loss_of_params() w.r.t. every trained parameter (decoder and encoder)."""
    params = obj.parameters()
    grads = torch.autograd.grad(loss_of_params(), params, allow_unused=True)  # (local: the encoder has none here)
    return [np.zeros(p.shape, np.float32) if g is None else g.numpy() for p, g in zip(params, grads)]


def spy(monkeypatch, owner, name, record):
    """owner.name recorded (record(args, kwargs, result)) and otherwise left as it is."""
    real = getattr(owner, name)

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        record(args, kwargs, result)
        return result

    monkeypatch.setattr(owner, name, wrapped)


def shifted(prior_class):
    """The fifth method with its q moved off the prior (KL > 0), so that the generic slow step's
    KL term counts; everything else is the registered class's."""
    class Shifted(prior_class):
        def proposal(self, tokens, steps=0, fast_noise=None):
            self.steps_asked = steps  # the step asks for inference.steps (a method that fits q uses them)
            loc, log_scale = super().proposal(tokens, steps, fast_noise)[:2]
            return loc + 0.4, log_scale - 0.3

    return Shifted


def pyro_shifted():
    from prior_method.pyro import PyroPrior

    return shifted(PyroPrior)


@pytest.mark.parametrize("method,options,cls", [("local", {}, None), ("local", {"init": "amortized"}, None),
                                                ("prior", {}, None), ("prior", {}, pyro_shifted)],
                         ids=["local", "semi-amortized", "prior", "prior-shifted"])
def test_pyro_gaussian_slow_step_records_are_the_trace_elbo_of_its_q_and_noise(monkeypatch, method, options, cls):
    """local (the slow step at the fitted q, keyed noise; semi-amortized: and the encoder's own
    ELBO) and the generic slow step a new method inherits (PyroBackend.variational_step, fresh
    noise from the torch stream): loss = -ELBO / tokens, nll = loss - KL / tokens, kl = mean KL."""
    obj, batch = training_setup(method, "pyro", cls=cls and cls(), **options)
    tokens = obj.tensor(batch)
    calls = []
    real = obj.gaussian_elbo

    def recording(tokens, loc, log_scale, num_samples, noise=None):
        calls.append((loc.detach().clone(), log_scale.detach().clone(), num_samples, noise, torch.get_rng_state()))
        return real(tokens, loc, log_scale, num_samples, noise)

    monkeypatch.setattr(obj, "gaussian_elbo", recording)
    before = {k: v.copy() for k, v in obj.weights().items()}  # (Pyro's arrays share the tensors' memory)
    metrics = obj.step(batch)
    obj.load_weights(before)  # the records are of the weights before the update
    monkeypatch.undo()

    def z_of(loc, log_scale, num_samples, noise, rng):
        if noise is None:  # fresh noise: the same torch stream, drawn again
            torch.set_rng_state(rng)
            noise = torch.randn((num_samples, *loc.shape))
        return loc + log_scale.exp() * noise

    loc, log_scale, num_samples, noise, rng = calls[0]
    assert num_samples == S and (noise is None) == (method == "prior")
    if cls is not None:
        assert obj.steps_asked == obj.cfg.inference.steps > 0
    z = z_of(*calls[0])
    n_tokens = B * (batch.shape[1] - 1)
    kl = analytic_kl(loc, log_scale)
    if cls is not None or method != "prior":  # the fifth method's own q is the prior: KL 0
        assert kl.sum() > 1.0  # large enough for a dropped or halved KL to show
    with torch.no_grad():
        elbo = float(pyro_elbo_sum(obj.model, tokens, loc, log_scale, z))
    expected = {"loss": -elbo / n_tokens, "nll": -elbo / n_tokens - kl.sum() / n_tokens, "kl": kl.mean()}

    def loss_of_params():
        return -pyro_elbo_sum(obj.model, tokens, loc, log_scale, z) / n_tokens

    if obj.encoder is not None:
        assert len(calls) == 2
        enc_loc, enc_log_scale, _, enc_noise, _ = calls[1]
        with torch.no_grad():
            enc_elbo = float(pyro_elbo_sum(obj.model, tokens, enc_loc, enc_log_scale, enc_loc + enc_log_scale.exp() * enc_noise))
        expected["encoder_loss"] = -enc_elbo / n_tokens
    else:
        assert len(calls) == 1
    grads = pyro_grads(obj, loss_of_params)
    if obj.encoder is not None:  # plus the encoder's own ELBO at its output and keyed eps, decoder held constant
        def encoder_loss():
            enc_loc, enc_log_scale = obj.encoder(tokens)
            enc_z = enc_loc + enc_log_scale.exp() * enc_noise
            return -pyro_elbo_sum(obj.model, tokens, enc_loc, enc_log_scale, enc_z) / n_tokens

        names = [name for name, _ in obj.named_parameters()]
        encoder_grads = torch.autograd.grad(encoder_loss(), list(obj.encoder.parameters()))
        by_name = dict(zip([n for n in names if n.startswith("encoder.")], encoder_grads))
        grads = [g + by_name[n].numpy() if n in by_name else g for n, g in zip(names, grads)]
    check_records(obj, metrics, expected, grads)


def test_pyro_amortized_records_are_the_trace_elbo_of_the_encoders_q(monkeypatch):
    import ltm_ppl.inference.amortized.pyro as amortized

    obj, batch = training_setup("amortized", "pyro")
    tokens = obj.tensor(batch)
    calls = []
    spy(monkeypatch, amortized, "amortized_objective", lambda args, kwargs, result: calls.append(args[-1].clone()))
    before = {k: v.copy() for k, v in obj.weights().items()}  # (Pyro's arrays share the tensors' memory)
    metrics = obj.step(batch)
    obj.load_weights(before)
    monkeypatch.undo()
    (eps,) = calls
    assert eps.shape == (S, B, *obj.latent_shape)
    n_tokens = B * (batch.shape[1] - 1)

    def loss_of_params():
        loc, log_scale = obj.encoder(tokens)
        return -pyro_elbo_sum(obj.model, tokens, loc, log_scale, loc + log_scale.exp() * eps) / n_tokens

    with torch.no_grad():
        loc, log_scale = obj.encoder(tokens)
        loss = float(loss_of_params())
    kl = analytic_kl(loc, log_scale)
    assert kl.sum() > 1.0
    expected = {"loss": loss, "nll": loss - kl.sum() / n_tokens, "kl": kl.mean(), "beta": 1.0}
    check_records(obj, metrics, expected, pyro_grads(obj, loss_of_params))


def test_pyro_amortized_step_noise_is_the_keyed_slow_draw_of_the_batch(monkeypatch):
    """The eps of the amortized step is noise.torch_eps of the global batch's rows (seed, iteration,
    step SLOW): per sequence, as on any number of workers."""
    import ltm_ppl.inference.amortized.pyro as amortized
    from ltm_ppl import noise

    obj, batch = training_setup("amortized", "pyro")
    calls = []
    spy(monkeypatch, amortized, "amortized_objective", lambda args, kwargs, result: calls.append(args[-1].clone()))
    obj.step(batch)
    (eps,) = calls
    expected = noise.torch_eps(noise.Rows(obj.cfg.train.seed, 0), noise.SLOW, B, obj.latent_shape, S, "cpu")
    assert torch.equal(eps, expected)


def test_pyro_langevin_records_are_the_loglik_at_the_chains_last_state(monkeypatch):
    """Monte Carlo EM: loss = nll = -mean over chains of sum_i log p(x_i | z_K) / tokens, at the
    chains' last state; log_prior, accept and step_size are the chains' own. No ppl (no bound)."""
    obj, batch = training_setup("langevin", "pyro", chains=2)
    tokens = obj.tensor(batch)
    runs = []
    spy(monkeypatch, obj, "sample", lambda args, kwargs, result: runs.append({k: v.detach().clone() for k, v in result.items()
                                                                             if isinstance(v, torch.Tensor)}))
    before = {k: v.copy() for k, v in obj.weights().items()}  # (Pyro's arrays share the tensors' memory)
    metrics = obj.step(batch)
    obj.load_weights(before)
    monkeypatch.undo()
    (run,) = runs
    z = run["last"]
    assert z.shape == (2, B, *obj.latent_shape)
    n_tokens = B * (batch.shape[1] - 1)
    loss_of_params = lambda: -pyro_loglik(obj.model, tokens, z).mean(0).sum() / n_tokens  # noqa: E731
    with torch.no_grad():
        loss = float(loss_of_params())
    log_prior = (-0.5 * z.double() ** 2 - 0.5 * math.log(2 * math.pi)).sum((-1, -2))
    expected = {"loss": loss, "nll": loss, "log_prior": float(log_prior.mean()),
                "accept": float(run["accept_prob"].double().mean()), "step_size": float(run["step_size"].double().mean())}
    check_records(obj, metrics, expected, pyro_grads(obj, loss_of_params), bound=False)


@pytest.mark.parametrize("init", ["prior", "local", "amortized"])
def test_pyro_langevin_chains_start_at_the_q_that_init_names(monkeypatch, init):
    """The (loc, scale) training's chains start from and are preconditioned by (PyroLangevin.start
    on the step's path): the prior N(0, 1); the local q after inference.steps fast steps keyed by
    the training rows, as sigma; the encoder's q of the batch before the update, as sigma. One fast
    step is a local start too."""
    import ltm_ppl.inference.langevin.pyro as langevin
    from ltm_ppl.noise import Rows

    obj, batch = training_setup("langevin", "pyro", chains=2, init=init)
    tokens = obj.tensor(batch)
    fits, starts = [], []
    spy(monkeypatch, langevin, "fit_local_posterior", lambda args, kwargs, result: fits.append((args, kwargs, result)))
    spy(monkeypatch, obj, "start", lambda args, kwargs, result: starts.append(result))
    if init == "amortized":
        with torch.no_grad():
            enc_loc, enc_log_scale = obj.encoder(tokens)
    obj.step(batch)
    (loc, scale), = starts
    assert loc.shape == scale.shape == (B, *obj.latent_shape) and loc.dtype == scale.dtype == torch.float32
    if init == "prior":
        assert not fits and (loc == 0).all() and (scale == 1).all()
    elif init == "local":
        (args, kwargs, (fit_loc, fit_log_scale, _)), = fits
        assert args[4] == obj.cfg.inference.steps == 4 and args[6].noise.key == Rows(obj.cfg.train.seed, 0, 0, B)
        assert torch.equal(loc, fit_loc) and torch.equal(scale, fit_log_scale.exp())
        assert (fit_log_scale != 0).any() and (fit_loc != 0).any()  # a fitted q, not the prior
        fits.clear()
        one = obj.start(tokens, 1)
        (args, _, (fit_loc, fit_log_scale, _)), = fits
        assert args[4] == 1 and torch.equal(one[0], fit_loc) and torch.equal(one[1], fit_log_scale.exp())
    else:
        assert not fits
        torch.testing.assert_close(loc, enc_loc, rtol=0, atol=0)
        torch.testing.assert_close(scale, enc_log_scale.exp(), rtol=0, atol=0)
        assert enc_log_scale.std() > 1e-3


def test_pyro_langevin_step_with_a_non_finite_chain_statistic_changes_no_weight(monkeypatch):
    """A NaN acceptance rate (a diverged chain) with a finite loss: the step reports itself
    non-finite and skips the update (fit then stops naming the iteration), as for a NaN loss."""
    obj, batch = training_setup("langevin", "pyro", chains=2)
    real = obj.sample

    def diverged(*args, **kwargs):
        run = real(*args, **kwargs)
        run["accept_prob"] = run["accept_prob"] * float("nan")
        return run

    monkeypatch.setattr(obj, "sample", diverged)
    before = {k: v.copy() for k, v in obj.weights().items()}
    metrics = obj.step(batch)
    assert float(metrics["finite"]) == 0.0 and math.isfinite(float(metrics["loss"]))
    assert all(np.array_equal(before[k], v) for k, v in obj.weights().items())


def test_pyro_none_records_are_the_exact_nll():
    obj, batch = training_setup("none", "pyro")
    tokens = obj.tensor(batch)
    before = {k: v.copy() for k, v in obj.weights().items()}  # (Pyro's arrays share the tensors' memory)
    metrics = obj.step(batch)
    obj.load_weights(before)
    n_tokens = B * (batch.shape[1] - 1)
    loss_of_params = lambda: -pyro_loglik(obj.model, tokens, None).sum() / n_tokens  # noqa: E731
    with torch.no_grad():
        loss = float(loss_of_params())
    check_records(obj, metrics, {"loss": loss, "nll": loss, "kl": 0.0}, pyro_grads(obj, loss_of_params))


# ----- NumPyro -------------------------------------------------------------------------------------
def numpyro_elbo_sum(model, tokens, loc, log_scale, z):
    """sum_i ELBO_i of q = N(loc, exp(log_scale)^2), the log-likelihood averaged over the draws z
    [S, B, *event]: -TraceMeanField_ELBO of NumPyro with the guide's z substituted. Differentiable."""
    import jax
    import numpyro
    from numpyro import handlers

    from ltm_ppl.models.jax.program import local_guide

    guide = functools.partial(local_guide, loc=loc, log_scale=log_scale)
    total = 0.0
    for zs in z:
        at_z = handlers.substitute(guide, data={"z": zs})
        total = total - numpyro.infer.TraceMeanField_ELBO().loss(jax.random.PRNGKey(0), {}, model, at_z, tokens)
    return total / len(z)


def numpyro_guide_draws(guide, tokens, num_samples, key):
    """The z [S, B, *event] a guide draws from `key` in S particles: NumPyro's own sampler, keyed as
    numpyro_elbo.traced keys the guide (the first half of the split)."""
    import jax
    import numpyro
    from numpyro import handlers

    def in_particles(*args):
        with numpyro.plate("particles", num_samples, dim=-2):
            return guide(*args)

    guide_key = jax.random.split(key)[0]
    return handlers.trace(handlers.seed(in_particles, guide_key)).get_trace(tokens)["z"]["value"]


def numpyro_step(obj, batch, monkeypatch, spies: dict):
    """One training iteration with jit off (concrete q and noise for the spies), the parameters
    before it, and the spies' records {name: [(args, kwargs), ...]}."""
    import jax

    records = {name: [] for name in spies}
    for name, owner in spies.items():
        real = getattr(owner, name)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            records[_name].append((args, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapped)
    params = obj.params
    with jax.disable_jit():
        metrics = obj.step(batch)
    monkeypatch.undo()
    return metrics, params, records


def numpyro_shifted():
    from prior_method.numpyro import NumPyroPrior, PriorPrograms

    class ShiftedPrograms(PriorPrograms):
        def proposal(self, params, tokens, key, fast_noise, fit, static):
            self.asked = (params, key, fit, static)  # what a method that fits q would fit from
            loc, log_scale, _ = super().proposal(params, tokens, key, fast_noise, fit, static)
            return loc + 0.4, log_scale - 0.3, None

    class Shifted(NumPyroPrior):
        programs_class = ShiftedPrograms

        def fit_args(self, steps):
            self.steps_asked = steps  # the step asks for inference.steps (a method that fits q uses them)
            return np.float32(steps), ("steps", steps)  # (fit, static): handed to the proposal unchanged

    return Shifted


@pytest.mark.parametrize("method,options,cls", [
    ("local", {}, None),
    pytest.param("local", {"init": "amortized"}, None, marks=pytest.mark.slow),  # 25 s with jit off
    ("prior", {}, None), ("prior", {}, numpyro_shifted)], ids=["local", "semi-amortized", "prior", "prior-shifted"])
def test_numpyro_gaussian_slow_step_records_are_the_trace_elbo_of_its_q_and_noise(monkeypatch, method, options, cls):
    """local (the default method: the slow step at the fitted q, keyed noise; semi-amortized: and
    the encoder's own ELBO) and the generic slow step (Programs._variational_step, noise from the
    step's key): loss = -ELBO / tokens, nll = loss - KL / tokens, kl = mean KL; and the update:
    every weight down its gradient (semi-amortized: the decoder down the ELBO's at the refined q
    only, the encoder down its own ELBO's too, from noise of its own key)."""
    import jax
    import jax.numpy as jnp

    from ltm_ppl.models.jax import encoder as jax_encoder
    from ltm_ppl.models.jax.program import amortized_guide, local_guide

    obj, batch = training_setup(method, "numpyro", cls=cls and cls(), **options)
    programs = obj.programs
    spies = {"elbo": programs} | ({"encoder_elbo": programs, "fit": programs} if options.get("init") == "amortized" else {})
    before = obj.weights()
    metrics, params, records = numpyro_step(obj, batch, monkeypatch, spies)
    after = obj.weights()
    tokens = obj.tensor(batch)
    (args, _), = records["elbo"]
    _, _, loc, log_scale, num_samples, noise, key = args
    assert num_samples == S and (noise is None) == (method == "prior")
    if cls is not None:  # the proposal sees the parameters, a key of its own and the method's (fit, static)
        steps = obj.cfg.inference.steps
        assert obj.steps_asked == steps > 0
        asked_params, asked_key, asked_fit, asked_static = programs.asked
        assert float(asked_fit) == steps and asked_static == ("steps", steps)
        assert asked_key is not None and not np.array_equal(np.asarray(asked_key), np.asarray(key))
        assert all(np.array_equal(asked_params[k], params[k]) for k in params)
    if noise is None:  # drawn by the guide from the step's key
        z = numpyro_guide_draws(functools.partial(local_guide, loc=loc, log_scale=log_scale), tokens, S, key)
    else:
        z = loc + jnp.exp(log_scale) * noise
    n_tokens = B * (batch.shape[1] - 1)
    kl = analytic_kl(loc, log_scale)
    if cls is not None or method != "prior":
        assert kl.sum() > 1.0  # large enough for a dropped or halved KL to show
    model = programs.model
    loss_of = lambda p: -numpyro_elbo_sum(model(p), tokens, loc, log_scale, z) / n_tokens  # noqa: E731
    loss = float(loss_of(params))
    expected = {"loss": loss, "nll": loss - kl.sum() / n_tokens, "kl": kl.mean()}
    grads = jax.grad(loss_of)(params)
    if "encoder_elbo" in records:  # the encoder's own ELBO at its output, decoder held constant
        (enc_args, _), = records["encoder_elbo"]
        enc_key = enc_args[-1]
        (fit_args, _), = records["fit"]
        # The encoder's noise has a key of its own, neither the fast loop's nor the slow draw's.
        assert not any(np.array_equal(np.asarray(enc_key), np.asarray(k)) for k in (fit_args[3], key))
        encode = lambda p: jax_encoder.encode(p, obj.cfg.model, tokens, jnp.float32)  # noqa: E731
        enc_loc, enc_log_scale = encode(params)
        enc_z = numpyro_guide_draws(functools.partial(amortized_guide, encoder_fn=lambda t: (enc_loc, enc_log_scale)),
                                    tokens, S, enc_key)
        enc_eps = (enc_z - enc_loc) / jnp.exp(enc_log_scale)

        def encoder_loss(p):
            loc_p, log_scale_p = encode(p)
            frozen = {k: v if k.startswith(jax_encoder.PREFIX) else jax.lax.stop_gradient(v) for k, v in p.items()}
            return -numpyro_elbo_sum(model(frozen), tokens, loc_p, log_scale_p, loc_p + jnp.exp(log_scale_p) * enc_eps) / n_tokens

        expected["encoder_loss"] = float(encoder_loss(params))
        enc_grads = jax.grad(encoder_loss)(params)
        grads = {k: grads[k] + enc_grads[k] for k in grads}
    check_records(obj, metrics, expected, list(grads.values()))
    # The update itself (grad_norm cannot see a sign, or which term a weight's gradient came from).
    moved = check_first_adamw_step(obj.cfg.train, before, after, grads, metrics)
    assert "layers" in moved and ("encoder" in moved) == ("encoder_elbo" in records)


def test_numpyro_amortized_records_are_the_trace_elbo_of_the_encoders_q(monkeypatch):
    import jax
    import jax.numpy as jnp

    import ltm_ppl.inference.amortized.numpyro as amortized
    from ltm_ppl.models.jax import encoder as jax_encoder
    from ltm_ppl.models.jax.program import amortized_guide

    obj, batch = training_setup("amortized", "numpyro")
    before = obj.weights()
    metrics, params, records = numpyro_step(obj, batch, monkeypatch, {"elbo_terms_by_vector": amortized})
    after = obj.weights()
    (args, kwargs), = records["elbo_terms_by_vector"]
    assert kwargs["num_particles"] == S
    tokens = obj.tensor(batch)
    n_tokens = B * (batch.shape[1] - 1)
    encode = lambda p: jax_encoder.encode(p, obj.cfg.model, tokens, jnp.float32)  # noqa: E731
    loc, log_scale = encode(params)
    z = numpyro_guide_draws(functools.partial(amortized_guide, encoder_fn=lambda t: (loc, log_scale)), tokens, S,
                            kwargs["rng_key"])
    eps = (z - loc) / jnp.exp(log_scale)

    def loss_of(p):
        loc_p, log_scale_p = encode(p)
        return -numpyro_elbo_sum(obj.programs.model(p), tokens, loc_p, log_scale_p, loc_p + jnp.exp(log_scale_p) * eps) / n_tokens

    kl = analytic_kl(loc, log_scale)
    assert kl.sum() > 1.0
    loss = float(loss_of(params))
    expected = {"loss": loss, "nll": loss - kl.sum() / n_tokens, "kl": kl.mean(), "beta": 1.0}
    grads = jax.grad(loss_of)(params)
    check_records(obj, metrics, expected, list(grads.values()))
    # The update itself: the records are computed before it (a NaN learning rate would not show there).
    assert check_first_adamw_step(obj.cfg.train, before, after, grads, metrics) >= {"encoder", "layers"}


def numpyro_loglik(model, tokens, z):
    """log p(x_i | z_ci) [C, B] from a trace of the model with z [C, B, *event] substituted (z None:
    the model without latent, [B])."""
    import jax
    import numpyro
    from numpyro import handlers

    if z is None:
        site = handlers.trace(handlers.seed(model, jax.random.PRNGKey(0))).get_trace(tokens)["x"]
        return site["fn"].log_prob(site["value"])

    def in_chains(tokens):
        with numpyro.plate("chains", z.shape[0], dim=-2):
            return model(tokens)

    trace = handlers.trace(handlers.substitute(handlers.seed(in_chains, jax.random.PRNGKey(0)), data={"z": z})).get_trace(tokens)
    return trace["x"]["fn"].log_prob(trace["x"]["value"])


def test_numpyro_langevin_records_are_the_loglik_at_the_chains_last_state(monkeypatch):
    import jax

    obj, batch = training_setup("langevin", "numpyro", chains=2)
    runs = []
    real = obj.programs.sample

    def recording(*args, **kwargs):
        runs.append(real(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(obj.programs, "sample", recording)
    params = obj.params
    with jax.disable_jit():
        metrics = obj.step(batch)
    monkeypatch.undo()
    (run,) = runs
    z = np.asarray(run["last"])
    assert z.shape == (2, B, *obj.latent_shape)
    tokens = obj.tensor(batch)
    n_tokens = B * (batch.shape[1] - 1)
    loss_of = lambda p: -numpyro_loglik(obj.programs.model(p), tokens, z).mean(0).sum() / n_tokens  # noqa: E731
    loss = float(loss_of(params))
    log_prior = (-0.5 * z.astype(np.float64) ** 2 - 0.5 * math.log(2 * math.pi)).sum((-1, -2))
    expected = {"loss": loss, "nll": loss, "log_prior": log_prior.mean(),
                "accept": np.asarray(run["accept_prob"], np.float64).mean(), "step_size": np.asarray(run["step_size"], np.float64).mean()}
    check_records(obj, metrics, expected, list(jax.grad(loss_of)(params).values()), bound=False)


@pytest.mark.parametrize("init", ["prior", "local", "amortized"])
def test_numpyro_langevin_chains_start_at_the_q_that_init_names(monkeypatch, init):
    """LangevinPrograms.start, as the compiled step calls it (fit_steps = inference.steps): the
    prior; the local q after those fast steps at the fast schedule, as sigma; the encoder's q."""
    import jax
    import jax.numpy as jnp

    import ltm_ppl.inference.langevin.numpyro as langevin
    from ltm_ppl.inference.local.numpyro import fast_lrs
    from ltm_ppl.models.jax import encoder as jax_encoder

    obj, batch = training_setup("langevin", "numpyro", chains=2, init=init)
    tokens = obj.tensor(batch)
    fits = []
    spy(monkeypatch, langevin, "fit_local_posterior", lambda args, kwargs, result: fits.append((args, kwargs, result)))
    for steps in (obj.cfg.inference.steps, 1):
        fits.clear()
        key = jax.random.PRNGKey(5)
        loc, scale = obj.programs.start(obj.params, tokens, key, steps)
        assert loc.shape == scale.shape == (B, *obj.latent_shape) and loc.dtype == scale.dtype == jnp.float32
        if init == "prior":
            assert not fits and (loc == 0).all() and (scale == 1).all()
        elif init == "local":
            (args, _, (fit_loc, fit_log_scale)), = fits
            np.testing.assert_array_equal(args[4], fast_lrs(steps, obj.cfg.inference))
            assert np.array_equal(args[5].noise.key, key) and args[3] == obj.cfg.inference
            np.testing.assert_array_equal(loc, fit_loc)
            np.testing.assert_array_equal(scale, jnp.exp(fit_log_scale))
            assert (np.asarray(fit_log_scale) != 0).any() and (np.asarray(fit_loc) != 0).any()
        else:
            enc_loc, enc_log_scale = jax_encoder.encode(obj.params, obj.cfg.model, tokens, jnp.float32)
            np.testing.assert_array_equal(loc, enc_loc)
            np.testing.assert_array_equal(scale, jnp.exp(enc_log_scale))
            assert not fits and np.std(np.asarray(enc_log_scale)) > 1e-3


def test_numpyro_none_records_are_the_exact_nll():
    import jax

    obj, batch = training_setup("none", "numpyro")
    params = obj.params
    metrics = obj.step(batch)
    tokens = obj.tensor(batch)
    n_tokens = B * (batch.shape[1] - 1)
    loss_of = lambda p: -numpyro_loglik(obj.programs.model(p), tokens, None).sum() / n_tokens  # noqa: E731
    loss = float(loss_of(params))
    check_records(obj, metrics, {"loss": loss, "nll": loss, "kl": 0.0}, list(jax.grad(loss_of)(params).values()))


# ----- fit's records and progress bar, on numbers known exactly ------------------------------------
def test_record_and_bar_show_exp_loss_as_ppl_only_for_a_bound():
    cfg = tiny_cfg("local", backend="pyro")
    record, postfix = printed(cfg, {"loss": 2.0, "nll": 1.5, "kl": 3.0, "lr": 1e-3, "finite": True})
    assert record == {"iter": 1, "loss": 2.0, "nll": 1.5, "kl": 3.0, "lr": 1e-3, "elapsed_s": 0.0, "ppl": math.exp(2.0)}
    assert postfix == {"loss": "2.000", "ppl": "7.4", "kl": "3.00"}
    assert printed(cfg, {"loss": 60.0, "finite": True})[0]["ppl"] == math.exp(50.0)  # capped, still a bound
    cfg.inference.kl_warmup_iters = 4  # a shaped loss (beta < 1) bounds nothing: no ppl
    record, postfix = printed(cfg, {"loss": 2.0, "kl": 3.0, "beta": 0.25, "finite": True})
    assert "ppl" not in record and set(postfix) == {"loss", "kl"}
    langevin = tiny_cfg("langevin", backend="pyro")
    record, postfix = printed(langevin, {"loss": 2.0, "accept": 0.5, "finite": True})
    assert "ppl" not in record and postfix == {"loss": "2.000", "accept": "0.50"}


def test_flush_writes_each_pending_record_reduced_in_order_and_stops_at_a_non_finite_one():
    """MetricsBuffer.flush on numbers known exactly: every pending iteration reduced (the workers'
    mean), written in order to the run with its elapsed time in ms, the bound rule asked with the
    record's values; the first non-finite iteration (the step's own verdict or a NaN) stops the run
    after the records before it; and the bar shows the newest record and the evaluation."""
    from tqdm import tqdm

    from ltm_ppl.errors import LtmError
    from ltm_ppl.train import MetricsBuffer, _show

    cfg = tiny_cfg("local", backend="pyro")
    written, asked = [], []

    def bound(cfg_, values):
        asked.append((cfg_, dict(values)))
        return values["loss"] < 3.0

    def buffer_of(*items):
        buffer = MetricsBuffer("RUN", cfg, bound, reduce=lambda m: {k: v + 1.0 if k == "loss" else v for k, v in m.items()},
                               write=lambda run, record: written.append((run, record)))
        for item in items:
            buffer.add(*item)
        return buffer

    buffer = buffer_of((4, {"loss": 1.0, "kl": 2.0, "finite": 1.0}, 0.12345), (5, {"loss": 2.5, "kl": 4.0}, 7.0))
    buffer.flush(0)
    assert written == [("RUN", {"iter": 4, "loss": 2.0, "kl": 2.0, "elapsed_s": 0.123, "ppl": math.exp(2.0)}),
                       ("RUN", {"iter": 5, "loss": 3.5, "kl": 4.0, "elapsed_s": 7.0})]
    assert asked == [(cfg, {"loss": 2.0, "kl": 2.0}), (cfg, {"loss": 3.5, "kl": 4.0})]
    assert buffer.last == written[-1][1] and buffer.pending == []
    written.clear()
    buffer.flush(0)  # nothing pending: nothing written twice
    assert written == []
    for bad in ({"loss": 1.0, "finite": 0.0}, {"loss": 1.0, "finite": 0.5}, {"loss": float("nan")}, {"loss": 1.0, "kl": float("inf")}):
        written.clear()
        buffer = buffer_of((7, {"loss": 1.0}, 1.0), (8, bad, 2.0), (9, {"loss": 1.0}, 3.0))
        with pytest.raises(LtmError, match="iteration 8.*iteration 6"):
            buffer.flush(6)
        assert [r["iter"] for _, r in written] == [7]
    bar = tqdm(total=1, file=io.StringIO())
    _show(bar, None, {"perplexity": 9.0})
    assert not bar.postfix
    _show(bar, {"loss": 1.23456, "ppl": 3.4567, "kl": 0.5, "accept": 0.256, "nll": 1.0}, {"perplexity": 12.345})
    assert dict(item.split("=") for item in bar.postfix.split(", ")) == {
        "loss": "1.235", "ppl": "3.5", "kl": "0.50", "accept": "0.26", "val_ppl": "12.3"}
    bar.close()


# ----- the starts of the fast loop, on fit's path and on eval's ------------------------------------
STARTS = ("prior", "narrow", "published", "amortized")
MANY = 64  # sequences: 64 * 4 * 32 = 8192 draws of each start parameter


def start_spies(monkeypatch, backend, obj, starts: list):
    """Record every (loc, log_scale) a fast loop begins from: initial_local's (a fixed point, the
    published draw) or the method's `start` hook's (the encoder's q), as numpy."""
    if backend == "pyro":
        import ltm_ppl.inference.local.pyro as module
        owner = obj
    else:
        import ltm_ppl.inference.local.numpyro as module
        owner = obj.programs
    keep = lambda args, kwargs, result: result is not None and starts.append(tuple(np.asarray(x, dtype=np.float64) for x in result))  # noqa: E731
    spy(monkeypatch, module, "initial_local", keep)
    spy(monkeypatch, owner, "start", keep)


def check_start(obj, backend, init, batch, loc, log_scale):
    assert loc.shape == log_scale.shape == (len(batch), *obj.latent_shape)
    if init == "prior":
        assert (loc == 0).all() and (log_scale == 0).all()
    elif init == "narrow":
        assert (loc == 0).all() and (log_scale == -5).all()
    elif init == "amortized":  # the encoder's q of these sequences
        if backend == "pyro":
            with torch.no_grad():
                expected = [t.numpy() for t in obj.encoder(obj.tensor(batch))]
        else:
            import jax.numpy as jnp

            from ltm_ppl.models.jax import encoder as jax_encoder

            expected = jax_encoder.encode(obj.params, obj.cfg.model, obj.tensor(batch), jnp.float32)
        np.testing.assert_allclose(loc, expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(log_scale, expected[1], rtol=1e-5, atol=1e-6)
        assert np.std(loc) > 1e-3  # not a fixed point
    else:  # published: mu = 0.01 N(0, 1), log variance = -5 + 0.1 N(0, 1), every element its own draw
        check_published_spread(loc, 2 * log_scale)


def check_published_spread(mu, log_var):
    """Mean and standard deviation within 5 standard errors of the published ones: the mean's SE is
    sd / sqrt(n), the sample standard deviation's sd / sqrt(2 (n - 1)) (normal draws)."""
    for values, mean, sd in ((mu, 0.0, 0.01), (log_var, -5.0, 0.1)):
        n = values.size
        assert n >= 8000
        assert abs(values.mean() - mean) < 5 * sd / math.sqrt(n)
        assert abs(values.std(ddof=1) - sd) < 5 * sd / math.sqrt(2 * (n - 1))
    assert len(np.unique(mu.reshape(len(mu), -1), axis=0)) == len(mu)  # each sequence its own draw
    corr = np.corrcoef(mu.ravel(), log_var.ravel())[0, 1]  # the mean and the log variance: independent draws
    assert abs(corr) < 5 / math.sqrt(mu.size)


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_published_start_is_the_keyed_init_draw(backend):
    """The published start of the training fast loop (keyed: noise.Rows in Pyro, the iteration's key
    in NumPyro) is mu = 0.01 e0, log variance = -5 + 0.1 e1 with e0, e1 the two samples of the keyed
    draw at step noise.INIT (90 floats in all: torch's CPU sampler fills a draw 16 at a time, and a
    draw of another size would differ in its last values)."""
    from ltm_ppl import noise
    from ltm_ppl.config import InferenceConfig

    inf = InferenceConfig(init="published")
    shape = (5, 3)
    if backend == "pyro":
        from ltm_ppl.inference.local.pyro import initial_local

        rows = noise.Rows(seed=4, iteration=9)
        loc, log_scale = initial_local(3, shape, inf, "cpu", rows)
        e = noise.torch_eps(rows, noise.INIT, 3, shape, 2, "cpu").numpy()
    else:
        import jax
        import jax.numpy as jnp

        from ltm_ppl.inference.local.numpyro import initial_local

        key = jax.random.PRNGKey(11)
        loc, log_scale = initial_local(3, shape, inf, key)
        e = np.asarray(noise.jax_eps(key, noise.INIT, jnp.arange(3), shape, 2))
    assert np.asarray(loc).shape == np.asarray(log_scale).shape == (3, *shape)
    np.testing.assert_allclose(np.asarray(loc), 0.01 * e[0], rtol=1e-6)
    np.testing.assert_allclose(2 * np.asarray(log_scale), -5 + 0.1 * e[1], rtol=1e-6)


def many_windows(obj, seed=51):
    return np.random.default_rng(seed).integers(0, 64, (MANY, obj.cfg.model.block_size + 1))


@pytest.mark.parametrize("init", STARTS)
def test_pyro_fit_starts_on_one_worker_and_on_two(monkeypatch, init):
    """The start training's fast loop takes (keyed per sequence, noise.Rows from the iteration and
    the worker's share): what --init says, and the same for a sequence on one worker or on either
    of two (distributed.World as torchrun sets it, each worker stepping on its half)."""
    from ltm_ppl import distributed

    obj, _ = training_setup("local", "pyro", init=init, steps=1)
    batch = many_windows(obj)
    before = {k: v.copy() for k, v in obj.weights().items()}
    starts = []
    start_spies(monkeypatch, "pyro", obj, starts)
    obj.step(batch)
    obj.load_weights(before)  # (the encoder's q before its update)
    (one,) = starts
    check_start(obj, "pyro", init, batch, *one)
    halves = []
    for rank in range(2):
        obj.load_weights(before)
        obj.iteration = 0
        monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank=rank, size=2, runtime="torch"))
        starts.clear()
        obj.step(batch[rank * MANY // 2 : (rank + 1) * MANY // 2])
        halves.append(starts[0])
    for i in range(2):
        np.testing.assert_allclose(np.concatenate([h[i] for h in halves]), one[i], rtol=1e-6, atol=1e-7)
    if init == "published":  # fresh at the next iteration
        monkeypatch.setattr(distributed, "_WORLD", distributed.World())
        starts.clear()
        obj.step(batch)
        assert not np.allclose(starts[0][0], one[0])
        check_published_spread(starts[0][0], 2 * starts[0][1])


# NumPyro's start checks run with jit off (8-22 s each): the published start's stays in the default
# suite, the other three run with the slow tests.
NUMPYRO_STARTS = [s if s == "published" else pytest.param(s, marks=pytest.mark.slow) for s in STARTS]


@pytest.mark.parametrize("init", NUMPYRO_STARTS)
def test_numpyro_fit_starts(monkeypatch, init):
    """The start of the compiled step's fast loop (keyed per global row: a mesh of several devices
    draws the same rows, tests/test_distributed.py), what --init says; fresh at the next iteration."""
    import jax

    obj, _ = training_setup("local", "numpyro", init=init, steps=1)
    batch = many_windows(obj)
    starts = []
    start_spies(monkeypatch, "numpyro", obj, starts)
    params = obj.params
    with jax.disable_jit():
        obj.step(batch)
        (first,) = starts
        updated, obj.params = obj.params, params  # (the encoder's q before its update)
        check_start(obj, "numpyro", init, batch, *first)
        obj.params = updated
        if init == "published":
            obj.step(batch)
            assert not np.allclose(starts[1][0], first[0])
            check_published_spread(starts[1][0], 2 * starts[1][1])


@pytest.mark.parametrize("init,backend", [
    pytest.param(init, backend, id=f"{init}-{backend}",
                 marks=[pytest.mark.slow] if backend == "numpyro" and init != "published" else [])
    for init in STARTS for backend in ("pyro", "numpyro")])
def test_eval_starts(monkeypatch, backend, init):
    """The start of the fast loop of a reported bound (evaluate.windows_bound: keyed by the eval
    batch and row in Pyro, by the bound's key in NumPyro), what --init says, over many windows."""
    import jax

    from ltm_ppl.evaluate import windows_bound

    obj, _ = training_setup("local", backend, init=init)
    tokens = np.random.default_rng(52).integers(0, 64, MANY * obj.cfg.model.block_size + 1)
    starts = []
    start_spies(monkeypatch, backend, obj, starts)
    with jax.disable_jit():
        windows_bound(obj, tokens, steps=1, num_samples=1, batch_size=MANY // 2, seed=3)
    assert len(starts) == 2  # two eval batches
    loc, log_scale = (np.concatenate([s[i] for s in starts]) for i in range(2))
    batch = np.stack([tokens[i * obj.cfg.model.block_size : (i + 1) * obj.cfg.model.block_size + 1] for i in range(MANY)])
    check_start(obj, backend, init, batch, loc, log_scale)


# ----- issue 25, third mutation pass (docs/mutation.md): the slow steps' remaining branches ------------
def test_pyro_amortized_objective_without_eps_is_the_trace_elbo_at_the_guides_own_draw():
    """amortized_objective with eps None (the encoder as the guide, Pyro drawing z itself, S
    particles) against the shaped objective recomputed at the draw the torch stream gives: z = loc +
    sigma eps with eps the next S x B x event standard normals; beta and free bits applied per
    latent vector, nll per predicted token, the KL per sequence."""
    import ltm_ppl.inference.amortized.pyro as amortized

    obj, batch = training_setup("amortized", "pyro")
    tokens = obj.tensor(batch)
    n_tokens = B * (batch.shape[1] - 1)
    beta, free_bits = 0.7, 1.5
    torch.manual_seed(5)
    with torch.no_grad():
        objective, nll, kl = amortized.amortized_objective(obj.model, obj.encoder, tokens, S, beta, free_bits, n_tokens)
        torch.manual_seed(5)
        eps = torch.randn((S, B, *obj.latent_shape))
        loc, log_scale = obj.encoder(tokens)
        elbo = float(pyro_elbo_sum(obj.model, tokens, loc, log_scale, loc + log_scale.exp() * eps))
    per_vector = analytic_kl_per_vector(loc, log_scale)  # [B, n_z]
    assert (per_vector < free_bits).any() and (per_vector > free_bits).any()  # the floor binds for some vectors only
    expected_nll = -(elbo + per_vector.sum()) / n_tokens
    assert float(nll) == pytest.approx(expected_nll, rel=RTOL)
    assert kl.shape == (B,) and kl.numpy() == pytest.approx(per_vector.sum(-1), rel=RTOL)
    assert float(objective) == pytest.approx(expected_nll + beta * np.maximum(per_vector, free_bits).sum() / n_tokens, rel=RTOL)


def record_gaussian_elbo(obj, monkeypatch) -> list:
    """Spies on the Pyro slow step's gaussian_elbo: each call's (loc, log_scale, noise), copied."""
    calls = []
    real = obj.gaussian_elbo

    def recording(tokens, loc, log_scale, num_samples, noise=None):
        calls.append((loc.detach().clone(), log_scale.detach().clone(), noise.clone()))
        return real(tokens, loc, log_scale, num_samples, noise)

    monkeypatch.setattr(obj, "gaussian_elbo", recording)
    return calls


def test_pyro_local_shaped_step_records_the_shaped_objective_and_trains_on_the_plain_gradient(monkeypatch):
    """local with a KL warm-up and free bits (the shaped training objective, iteration 0): loss =
    nll + beta * sum_ij max(free_bits, KL_ij) / tokens at the fitted q, beta recorded; nll and kl
    are the plain ELBO's; the decoder's gradient is the ELBO's (the shaped KL is constant in it)."""
    from ltm_ppl.inference.schedules import kl_weight

    free_bits = 12.5  # nats per latent vector: between the smallest and the largest KL_ij of the fitted q here
    obj, batch = training_setup("local", "pyro", kl_warmup_iters=4, free_bits=free_bits)
    tokens = obj.tensor(batch)
    calls = record_gaussian_elbo(obj, monkeypatch)
    before = {k: v.copy() for k, v in obj.weights().items()}  # (Pyro's arrays share the tensors' memory)
    metrics = obj.step(batch)
    obj.load_weights(before)
    monkeypatch.undo()
    (loc, log_scale, noise), = calls
    z = loc + log_scale.exp() * noise
    n_tokens = B * (batch.shape[1] - 1)
    with torch.no_grad():
        elbo = float(pyro_elbo_sum(obj.model, tokens, loc, log_scale, z))
    per_vector = analytic_kl_per_vector(loc, log_scale)  # [B, n_z]
    assert (per_vector < free_bits).any() and (per_vector > free_bits).any()  # the floor binds for some vectors only
    beta = kl_weight(0, 4)
    assert beta == 0.25
    nll = -(elbo + per_vector.sum()) / n_tokens
    expected = {"loss": nll + beta * np.maximum(per_vector, free_bits).sum() / n_tokens, "nll": nll,
                "kl": per_vector.sum(-1).mean(), "beta": beta}
    grads = pyro_grads(obj, lambda: -pyro_elbo_sum(obj.model, tokens, loc, log_scale, z) / n_tokens)
    check_records(obj, metrics, expected, grads, bound=False)


def check_first_adamw_step(train_cfg, before: dict, after: dict, grads: dict, metrics: dict) -> set:
    """Weights after the first slow step against AdamW's first step on the independent gradients:
    torch's clip_grad_norm_, then each weight moved by lr * g / (|g| + eps) (bias-corrected moments
    of one step) after the decoupled decay (matrices only). Returns the modules that moved."""
    from ltm_ppl.inference.schedules import slow_lr

    lr, wd = slow_lr(0, train_cfg), train_cfg.weight_decay
    assert float(metrics["lr"]) == pytest.approx(lr) and wd > 0
    grads = {k: np.asarray(g, np.float64) for k, g in grads.items()}
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads.values()))
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-4)
    clip = min(1.0, (train_cfg.grad_clip or math.inf) / (norm + 1e-6))  # torch's clip_grad_norm_
    moved = set()
    for name, w0 in before.items():
        g = grads[name] * clip
        w1 = w0 * (1 - lr * (wd if w0.ndim >= 2 else 0.0)) - lr * g / (np.abs(g) + 1e-8)
        # Entries whose gradient is within float32 error of 0 may move either way: left out.
        clear = (g == 0) | (np.abs(g) > max(1e-6 * clip, 1e-4 * np.abs(g).max()))  # (0: a token not in the batch)
        assert clear.mean() > 0.5, name
        np.testing.assert_allclose(after[name][clear], w1[clear], rtol=1e-6, atol=0.05 * lr, err_msg=name)
        if np.abs(g).max() > 1e-6 * clip:
            moved.add(name.split(".")[0])
    return moved


def test_pyro_semi_amortized_step_moves_every_weight_down_its_own_gradient(monkeypatch):
    """The update of the semi-amortized slow step (not only its records): the decoder down the
    ELBO's gradient at the refined q, the encoder down its own ELBO's at its output. AdamW's first
    step moves each weight by lr * g / (|g| + eps) after the decoupled decay (matrices only), so the
    direction of every gradient entry shows (the records' grad_norm cannot see a sign)."""

    obj, batch = training_setup("local", "pyro", init="amortized")
    tokens = obj.tensor(batch)
    calls = record_gaussian_elbo(obj, monkeypatch)
    before = {k: v.copy() for k, v in obj.weights().items()}
    metrics = obj.step(batch)
    after = {k: v.copy() for k, v in obj.weights().items()}
    obj.load_weights(before)
    monkeypatch.undo()
    (loc, log_scale, noise), (_, _, enc_noise) = calls
    n_tokens = B * (batch.shape[1] - 1)
    names = [name for name, _ in obj.named_parameters()]
    grads = dict(zip(names, pyro_grads(obj, lambda: -pyro_elbo_sum(obj.model, tokens, loc, log_scale,
                                                                      loc + log_scale.exp() * noise) / n_tokens)))
    enc_loc, enc_log_scale = obj.encoder(tokens)
    enc_loss = -pyro_elbo_sum(obj.model, tokens, enc_loc, enc_log_scale, enc_loc + enc_log_scale.exp() * enc_noise) / n_tokens
    encoder_names = [n for n in names if n.startswith("encoder.")]
    for name, g in zip(encoder_names, torch.autograd.grad(enc_loss, list(obj.encoder.parameters()))):
        grads[name] = grads[name] + g.numpy()
    moved = check_first_adamw_step(obj.cfg.train, before, after, grads, metrics)
    assert moved >= {"encoder"} and len(moved) > 1  # the encoder and the decoder both moved


def test_pyro_trajectory_step_shapes_its_fast_loop_and_records_beta(monkeypatch):
    """train.slow_gradient "trajectory" with a KL warm-up and free bits: the published update's fast
    loop (the one whose backward passes train the decoder) minimises the shaped objective of this
    iteration, (beta, free bits) = (1/4, 0.5) at iteration 0, and the step records beta."""
    import ltm_ppl.inference.local.pyro as local

    obj, batch = training_setup("local", "pyro", kl_warmup_iters=4, free_bits=0.5)
    obj.cfg.train.slow_gradient = "trajectory"
    fits = []
    spy(monkeypatch, local, "fit_local_posterior", lambda args, kwargs, result: fits.append(args[6]))
    metrics = obj.step(batch)
    (fit,) = fits
    assert fit.train_decoder and fit.kl_shaping == (0.25, 0.5)
    assert float(metrics["beta"]) == 0.25 and float(metrics["finite"]) == 1.0


def test_numpyro_generic_slow_step_moves_every_weight_down_the_elbos_gradient(monkeypatch):
    """The update of NumPyro's generic slow step (Programs._variational_step, the fifth method with
    its q moved off the prior): AdamW's first step on the gradient of -ELBO / tokens at the
    proposal's q and the guide's draw from the step's key, with the configured learning rate."""
    import jax

    from ltm_ppl.models.jax.program import local_guide

    obj, batch = training_setup("prior", "numpyro", cls=numpyro_shifted())
    before = obj.weights()
    metrics, params, records = numpyro_step(obj, batch, monkeypatch, {"elbo": obj.programs})
    after = obj.weights()
    (args, _), = records["elbo"]
    _, _, loc, log_scale, _, _, key = args
    tokens = obj.tensor(batch)
    z = numpyro_guide_draws(functools.partial(local_guide, loc=loc, log_scale=log_scale), tokens, S, key)
    n_tokens = B * (batch.shape[1] - 1)
    model = obj.programs.model
    grads = jax.grad(lambda p: -numpyro_elbo_sum(model(p), tokens, loc, log_scale, z) / n_tokens)(params)
    assert check_first_adamw_step(obj.cfg.train, before, after, grads, metrics)


@pytest.mark.parametrize("bad", ["gradient", "loss", "none"])
def test_numpyro_update_is_kept_only_when_the_loss_and_every_gradient_are_finite(bad):
    """Programs.update (every NumPyro slow step's last act): one NaN gradient entry with a finite
    loss, or an infinite loss with finite gradients, leaves the parameters and the optimiser state
    as they were and says not finite; finite both, the step moves the parameters."""
    import jax
    import jax.numpy as jnp

    from ltm_ppl.inference import create

    obj = create(tiny_cfg("none", backend="numpyro"))
    params, state = obj.params, obj.opt_state
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    name = sorted(grads)[0]
    if bad == "gradient":
        grads[name] = grads[name].at[(0,) * grads[name].ndim].set(jnp.nan)
    loss = jnp.float32(jnp.inf if bad == "loss" else 2.0)
    new_params, new_state, out = obj.programs.update(params, state, grads, np.float32(1e-3), loss)
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]  # noqa: E731
    same = all(np.array_equal(a, b) for a, b in zip(leaves(new_params) + leaves(new_state), leaves(params) + leaves(state)))
    assert bool(out["finite"]) == (bad == "none") and same == (bad != "none")
    assert np.isfinite(float(out["grad_norm"])) == (bad != "gradient")


@pytest.mark.parametrize("max_norm,size", [(0.0, 1.0), (0.5, 1.0), (3.0, 1.0), (100.0, 1.0), (1e-5, 1e-5)])
def test_numpyro_clip_is_torchs_clip_grad_norm(max_norm, size):
    """numpyro_optim.clip_like_torch against torch.nn.utils.clip_grad_norm_ on the same gradients
    (norm ~2.2 size): the returned norm is the unclipped one; the clip binds at 0.5, not at 3 or 100
    (a scale capped above 1 would show there), and max_norm 0 (grad_clip off) leaves them as they
    are; at a norm of ~2e-5 torch's 1e-6 in the denominator is 5 % of it (its sign shows)."""
    import jax.numpy as jnp

    from ltm_ppl.inference.numpyro_optim import clip_like_torch

    rng = np.random.default_rng(7)
    arrays = {"a": size * rng.standard_normal((3, 4)).astype(np.float32), "b": size * rng.standard_normal(5).astype(np.float32)}
    clipped, norm = clip_like_torch({k: jnp.asarray(v) for k, v in arrays.items()}, max_norm)
    tensors = [torch.from_numpy(v.copy()) for v in arrays.values()]
    for t in tensors:
        t.grad = t.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm or math.inf)
    assert float(norm) == pytest.approx(float(expected_norm), rel=1e-6) and 2 < float(norm) / size < 3
    for (name, got), t in zip(clipped.items(), tensors):
        np.testing.assert_allclose(np.asarray(got), t.grad.numpy(), rtol=1e-6, atol=0, err_msg=name)


@pytest.mark.slow  # ~20 s: one compile of the Langevin training step with a local start
def test_numpyro_langevin_training_step_starts_from_a_local_fit_of_inference_steps(monkeypatch):
    """init = "local": the training step's chains start from the local q fitted by inference.steps
    fast steps (LangevinPrograms.start is handed that count; what it returns for it is checked in
    test_numpyro_langevin_chains_start_at_the_q_that_init_names[local])."""
    obj, batch = training_setup("langevin", "numpyro", chains=2, init="local")
    asked = []
    real = obj.programs.start

    def start(params, tokens, key, fit_steps):
        asked.append(fit_steps)
        return real(params, tokens, key, fit_steps)

    monkeypatch.setattr(obj.programs, "start", start)
    metrics = obj.step(batch)  # (traced: the spy sees the Python count)
    assert asked == [obj.cfg.inference.steps] and asked[0] > 0 and float(metrics["finite"]) == 1.0


@pytest.mark.slow  # ~15 s: two compiles of the amortized step
def test_numpyro_amortized_shaped_step_records_the_shaped_objective():
    """NumPyro amortized with a KL warm-up and free bits, iteration 0: at the same weights and key
    as the plain step (so the same draw: its nll and kl records are the plain step's, checked by
    test_numpyro_amortized_records_are_the_trace_elbo_of_the_encoders_q), loss = nll + beta *
    sum_ij max(free_bits, KL_ij) / tokens with KL_ij the analytic KL of the encoder's q, beta = 1/4."""
    import jax.numpy as jnp

    from ltm_ppl.models.jax import encoder as jax_encoder

    free_bits = 2.0  # nats per latent vector: between the smallest and the largest KL_ij here
    plain, batch = training_setup("amortized", "numpyro")
    shaped, _ = training_setup("amortized", "numpyro", kl_warmup_iters=4, free_bits=free_bits)
    loc, log_scale = jax_encoder.encode(shaped.params, shaped.cfg.model, shaped.tensor(batch), jnp.float32)
    per_vector = analytic_kl_per_vector(loc, log_scale)  # [B, n_z]
    assert (per_vector < free_bits).any() and (per_vector > free_bits).any()
    want, got = ({k: float(v) for k, v in obj.step(batch).items()} for obj in (plain, shaped))
    n_tokens = B * (batch.shape[1] - 1)
    assert got["beta"] == 0.25 and want["beta"] == 1.0
    assert got["nll"] == pytest.approx(want["nll"], rel=1e-6) and got["kl"] == pytest.approx(want["kl"], rel=1e-6)
    assert got["kl"] == pytest.approx(per_vector.sum(-1).mean(), rel=RTOL)
    assert got["loss"] == pytest.approx(got["nll"] + 0.25 * np.maximum(per_vector, free_bits).sum() / n_tokens, rel=RTOL)
    assert got["finite"] == 1.0 and shaped.iteration == 1


@pytest.mark.slow  # 8-15 s: one compile of the Langevin step
def test_numpyro_langevin_accept_record_of_a_one_step_iteration_is_the_kept_steps():
    """inference.steps = 1 (no warm-up step, one kept step): the accept record is the mean
    acceptance of the chains' kept step, a probability (that of the empty warm-up would be NaN).
    (At the default steps the record equals the chains' own mean: the records test above.)"""
    obj, batch = training_setup("langevin", "numpyro", chains=2, steps=1)
    metrics = obj.step(batch)  # jit on: a zero-length warm-up scan cannot run with jit off
    assert 0.0 <= float(metrics["accept"]) <= 1.0 and float(metrics["finite"]) == 1.0


@pytest.mark.slow  # 8-15 s: one compile of the Langevin step
def test_numpyro_langevin_step_moves_each_weight_by_at_most_the_learning_rate():
    """The Monte Carlo EM update itself (the records are computed before it): AdamW's first step
    moves each weight by at most lr beyond its decoupled decay, by nearly lr where its gradient is
    clear of 0, and leaves every weight finite."""
    from ltm_ppl.inference.schedules import slow_lr

    obj, batch = training_setup("langevin", "numpyro", chains=2)
    before = obj.weights()
    metrics = obj.step(batch)
    lr, wd = slow_lr(0, obj.cfg.train), obj.cfg.train.weight_decay
    assert float(metrics["lr"]) == pytest.approx(lr) and float(metrics["finite"]) == 1.0
    largest = 0.0
    for name, w1 in obj.weights().items():
        w0 = before[name]
        step = w1 - w0 * (1 - lr * (wd if w0.ndim >= 2 else 0.0))
        assert np.isfinite(w1).all() and np.abs(step).max() <= lr + 2e-7, name  # (float32 rounding of w)
        largest = max(largest, float(np.abs(step).max()))
    assert largest > 0.9 * lr

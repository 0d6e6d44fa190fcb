"""Adding a method takes one small file per backend and one registration, no library edit: the
test registers `prior` (q = p, no fast steps, no options) and runs fit -> eval -> sample through
the CLI on both backends."""
import json

import pytest
from helpers import run_cli

from ltm_ppl.run import read_config
from ltm_ppl.inference import registry
from ltm_ppl.inference.descriptor import MethodDescriptor


def prior_flops(cfg):
    from ltm_ppl.flops import decoder_forward

    return 3 * decoder_forward(cfg.model) * cfg.inference.num_samples


PRIOR = MethodDescriptor(
    name="prior", summary="q = p", proposal="the prior N(0, I)", posterior_kind="variational", flops_per_token=prior_flops,
    classes={"pyro": "prior_method.pyro:PyroPrior", "numpyro": "prior_method.numpyro:NumPyroPrior"},
    loss_is_bound=lambda cfg, metrics: True,
)


@pytest.fixture
def prior_registered():
    registry.register(PRIOR)
    yield
    registry.unregister("prior")


def last_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_a_method_registered_from_outside_runs_fit_eval_sample(prior_registered, tiny_toml, text_corpus, tmp_path, backend,
                                                               jax_caches, torch_one_thread):
    run = tmp_path / backend
    summary = last_json(run_cli("fit", "--config", tiny_toml, "--inference", "prior", "--backend", backend, "--data",
                                text_corpus, "--iters", "3", "--out", run, "--json"))
    assert (summary["inference"], summary["backend"], summary["iterations"]) == ("prior", backend, 3)
    assert summary["flops_per_token"] == pytest.approx(prior_flops(read_config(run)[0]))  # from its descriptor
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kl"] == 0.0 and "ppl" in r for r in rows if "split" not in r)  # q = p: no KL; a bound
    record = last_json(run_cli("eval", run, "--max-windows", "8", "--json"))
    assert record["inference"] == "prior" and record["proposal"] == "the prior N(0, I)"
    assert record["kl_per_sequence"] == pytest.approx(0.0, abs=1e-5) and record["nll_per_token"] > 0
    iwae = last_json(run_cli("eval", run, "--max-windows", "8", "--bound", "iwae", "--samples", "4", "--json"))
    assert iwae["nll_per_token"] <= iwae["sampled_elbo_nll_per_token"] + 1e-6
    sampled = last_json(run_cli("sample", run, "--num", "2", "--max-tokens", "8", "--json"))
    assert len(sampled["samples"]) == 2 and sampled["inference"] == "prior"
    prompted = last_json(run_cli("sample", run, "--prompt", "In the", "--max-tokens", "8", "--json"))
    assert prompted["latents"] == "posterior" and prompted["samples"][0].startswith("In the")


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_every_registered_class_implements_the_protocol(backend, prior_registered):
    """Each method's object has every member the rest of the code uses (protocol.Inference), and
    states the posterior kind its descriptor declares."""
    from helpers import tiny_cfg

    from ltm_ppl.inference import create, descriptor, methods
    from ltm_ppl.inference.protocol import Inference

    for method in methods():
        inference = create(tiny_cfg(method, backend))
        assert isinstance(inference, Inference), method
        assert (inference.method, inference.backend) == (method, backend)
        assert inference.posterior_kind == descriptor(method).posterior_kind, method

"""eval_runs.EvalSettings: what an evaluation computes, checked when built (no run needed), with
the messages `ltm eval` prints for the same flags."""
from __future__ import annotations

import dataclasses

import pytest

from ltm_ppl.errors import LtmError
from ltm_ppl.eval_runs import EvalSettings


def test_eval_settings_defaults_are_the_commands():
    s = EvalSettings()
    assert (s.split, s.data, s.steps, s.samples, s.kind, s.fixed_noise, s.batch_size, s.max_windows, s.seed) == \
        ("val", None, None, 1, "elbo", False, None, None, None)
    assert EvalSettings(steps=[4, 16]).steps == (4, 16)  # a value: the list is not shared
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.samples = 2


@pytest.mark.parametrize("fields, message", [
    ({"samples": 0}, "--samples must be a positive integer, got 0"),
    ({"samples": 10**8}, "--samples"),
    ({"batch_size": 0}, "--batch-size must be a positive integer, got 0"),
    ({"max_windows": -1}, "--max-windows must be a positive integer, got -1"),
    ({"seed": -3}, "--seed"),
    ({"kind": "xyz"}, "--bound must be elbo or iwae, got 'xyz'"),
    ({"samples": 0, "seed": -3, "kind": "xyz"}, "--samples"),  # the order evaluate_run checked them in
])
def test_eval_settings_refuse_bad_options_when_built(fields, message):
    with pytest.raises(LtmError, match="^" + message.replace("(", r"\(")):
        EvalSettings(**fields)

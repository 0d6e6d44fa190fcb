"""checks.py: the one positive / non-negative / seed checker; None is "not given" unless required."""
from __future__ import annotations

import pytest

from ltm_ppl.checks import require_positive
from ltm_ppl.errors import LtmError


def test_require_positive_lets_none_pass_unless_required():
    require_positive("--max-windows", None)  # not given: the default applies
    require_positive("--samples", 3, required=True)
    for value in (None, 0, -1, 2.0, True):
        with pytest.raises(LtmError, match=rf"^--samples must be a positive integer, got {value!r}$"):
            require_positive("--samples", value, required=True)
    with pytest.raises(LtmError, match=r"^--temperature must be positive and finite, got None$"):
        require_positive("--temperature", None, integer=False, required=True)

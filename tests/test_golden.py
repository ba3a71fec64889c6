"""Golden regression: fixed tiny checkpoints + synthetic source + fixed seeds -> stored outputs.

Regenerate only with ``python tests/golden/regenerate.py`` (and explain the diff in the commit).
"""

from __future__ import annotations

import numpy as np
import pytest
from golden.cases import TOLERANCE, golden_path, render


@pytest.mark.parametrize("variant", ["turbo", "base"])
@pytest.mark.parametrize("layout", ["upstream", "diffusers"])
def test_output_matches_golden(request, layout, variant, tmp_path):
    engine = request.getfixturevalue(f"engine_{layout}_{variant}")
    expected = np.load(golden_path(layout, variant))
    actual = render(engine, variant, tmp_path)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("variant", ["turbo", "base"])
def test_both_layouts_of_one_checkpoint_agree(variant):
    np.testing.assert_allclose(
        np.load(golden_path("upstream", variant)),
        np.load(golden_path("diffusers", variant)),
        rtol=0,
        atol=1e-6,
    )

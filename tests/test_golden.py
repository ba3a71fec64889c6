"""Golden regression: fixed tiny checkpoints + synthetic source + fixed seeds -> stored outputs.

Regenerate only with ``python tests/golden/regenerate.py`` (and explain the diff in the commit).
The tolerances and why they hold on any CPU are in ``golden/cases.py``; the last test shows they
still catch a change of generation semantics.
"""

from __future__ import annotations

import numpy as np
import pytest
from golden.cases import golden_path, mismatch, render

import acestep.engine.conditioning as conditioning
import acestep.engine.schedules as schedules
from acestep.engine.sampling.guidance import Guidance


@pytest.mark.parametrize("variant", ["turbo", "base"])
@pytest.mark.parametrize("layout", ["upstream", "diffusers"])
def test_output_matches_golden(request, layout, variant, tmp_path):
    engine = request.getfixturevalue(f"engine_{layout}_{variant}")
    actual = render(engine, variant, tmp_path)
    assert mismatch(actual, np.load(golden_path(layout, variant))) is None


@pytest.mark.parametrize("variant", ["turbo", "base"])
def test_both_layouts_of_one_checkpoint_agree(variant):
    np.testing.assert_allclose(
        np.load(golden_path("upstream", variant)),
        np.load(golden_path("diffusers", variant)),
        rtol=0,
        atol=1e-6,
    )


def _cfg_interval_read_backwards(monkeypatch):
    """Guidance applied where 1 - t lies in the interval (the defect patches/0003 fixes)."""

    def mirrored(self, t):
        start, end = self.interval
        return start <= 1.0 - t <= end

    monkeypatch.setattr(Guidance, "applies_at", mirrored)


def _turbo_shift_ignored(monkeypatch):
    unshifted = schedules.turbo_schedule
    monkeypatch.setattr(schedules, "turbo_schedule", lambda steps, shift: unshifted(steps, 1.0))


def _lego_window_ignored(monkeypatch):
    """The chunk mask covers every frame instead of the requested window (patches/0001)."""
    import torch

    monkeypatch.setattr(
        conditioning, "_mask", lambda frames, start, end, device: torch.ones(1, frames, device=device)
    )


@pytest.mark.parametrize(
    ("variant", "change"),
    [
        ("base", _cfg_interval_read_backwards),
        ("turbo", _turbo_shift_ignored),
        ("base", _lego_window_ignored),
    ],
    ids=["cfg-interval-direction", "turbo-shift", "lego-mask"],
)
def test_goldens_catch_a_semantic_change(request, monkeypatch, variant, change, tmp_path):
    engine = request.getfixturevalue(f"engine_upstream_{variant}")
    change(monkeypatch)
    actual = render(engine, variant, tmp_path)
    assert mismatch(actual, np.load(golden_path("upstream", variant))) is not None

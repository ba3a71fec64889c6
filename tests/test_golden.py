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
import acestep.engine.sampler as sampler
import acestep.engine.schedules as schedules


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
    original = sampler._guided_velocity

    def mirrored(transformer, x, t_vec, encoder, context, guidance, momentum, t_value):
        start, end = guidance.interval
        flipped = sampler.Guidance(guidance.scale, (1.0 - end, 1.0 - start), guidance.null_embedding)
        return original(transformer, x, t_vec, encoder, context, flipped, momentum, t_value)

    monkeypatch.setattr(sampler, "_guided_velocity", mirrored)


def _turbo_shift_ignored(monkeypatch):
    monkeypatch.setattr(schedules, "snap_turbo_shift", lambda shift: 1.0)


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

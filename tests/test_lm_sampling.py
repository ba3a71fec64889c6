"""The LM's per-step sampling pieces agree with transformers' processors and never touch global RNG."""

from __future__ import annotations

import math

import torch
from transformers import TopPLogitsWarper

from acestep.lm.sampling import SamplingParams, draw, guided, keep_top_p


def test_top_p_over_allowed_tokens_equals_transformers_warper():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        logits = torch.randn(64, generator=generator) * 3
        logits[torch.rand(64, generator=generator) < 0.4] = -math.inf
        p = float(torch.rand(1, generator=generator)) * 0.98 + 0.01
        reference = TopPLogitsWarper(p)(None, logits.unsqueeze(0).clone())[0]
        assert torch.equal(keep_top_p(logits, p), reference)


def test_cfg_mixes_only_above_one():
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    assert torch.equal(guided(cond, uncond, 1.0), cond)
    assert torch.equal(guided(cond, uncond, 2.0), torch.tensor([2.0, 0.0]))


def test_draw_uses_only_its_generator():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    params = SamplingParams(temperature=1.0, top_p=0.95)
    first = [draw(logits, params, torch.Generator().manual_seed(9)) for _ in range(3)]
    assert len(set(first)) == 1  # same seed, same token
    assert torch.equal(torch.get_rng_state(), before)
    assert draw(logits, SamplingParams(temperature=0.0), torch.Generator()) == int(logits.argmax())

"""One decoding step's logits -> token: CFG, constraints, penalties, top-k/top-p, temperature.

The order is upstream's pt backend (docs/lm.md): CFG in float32, the constraint mask,
the repetition penalty, top-k, top-p, temperature, then a draw. The draw uses the caller's own
CPU ``torch.Generator``; nothing here touches torch's global RNG, which the DiT and VAE share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """LM sampling settings (library defaults; REST uses cfg 2.5, see params)."""

    temperature: float = 0.85
    cfg_scale: float = 2.0
    top_k: int = 0  # 0 = off
    top_p: float = 0.9  # >= 1 = off
    repetition_penalty: float = 1.0  # 1 = off

    def __post_init__(self) -> None:
        checks = (
            (
                math.isfinite(self.temperature) and 0.0 <= self.temperature <= 5.0,
                "lm_temperature must be in [0, 5]",
            ),
            (
                math.isfinite(self.cfg_scale) and 0.0 <= self.cfg_scale <= 10.0,
                "lm_cfg_scale must be in [0, 10]",
            ),
            (0 <= self.top_k <= 100000, "lm_top_k must be >= 0 (0 = off)"),
            (math.isfinite(self.top_p) and 0.0 < self.top_p, "lm_top_p must be > 0 (>= 1 = off)"),
            (
                math.isfinite(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0,
                "lm_repetition_penalty must be in (0, 10]",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale > 1.0


def guided(cond: torch.Tensor, uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """uncond + s * (cond - uncond) in float32, only when s > 1."""
    cond = cond.float()
    if uncond is None or scale <= 1.0:
        return cond
    uncond = uncond.float()
    return uncond + scale * (cond - uncond)


def penalise_repeats(logits: torch.Tensor, generated: Sequence[int], penalty: float) -> torch.Tensor:
    """transformers' repetition penalty over the generated tokens only (positive logits divided,
    negative ones multiplied)."""
    if penalty == 1.0 or not generated:
        return logits
    from transformers import RepetitionPenaltyLogitsProcessor

    ids = torch.tensor([list(generated)], device=logits.device)
    return RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.unsqueeze(0).clone())[0]


def keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    from transformers import TopKLogitsWarper

    return TopKLogitsWarper(k)(None, logits.unsqueeze(0))[0]


def keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (at least one).

    transformers' ``TopPLogitsWarper`` gives the same result but sorts the whole vocabulary (217k)
    every step; the constraints usually leave a handful allowed, so only those are sorted here."""
    if p >= 1.0:
        return logits
    # Only the tokens still allowed take part (constraints often leave a handful of 150k).
    allowed = torch.nonzero(torch.isfinite(logits)).squeeze(-1)
    ordered, order = torch.sort(logits[allowed], descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1.0 - p)
    drop[-1] = False
    out = logits.clone()
    out[allowed[order[drop]]] = -math.inf
    return out


def draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The token id for one step from processed logits [V] (temperature 0 = argmax)."""
    # On the CPU: the same processed logits give the same token on any device.
    logits = logits.detach().to("cpu", torch.float32)
    logits = keep_top_p(keep_top_k(logits, params.top_k), params.top_p)
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if not torch.isfinite(probs).all() or float(probs.sum()) <= 0.0:
        raise RuntimeError("LM logits are not finite after masking (every token was excluded)")
    return int(torch.multinomial(probs, 1, generator=generator))

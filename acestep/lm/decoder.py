"""The token loop: prefill, then one step at a time with CFG rows, constraints and a seeded draw.

Rows are ``[cond]`` or ``[cond, uncond]`` (left padded); both rows take the conditional row's
token, so the unconditional row always sees the same completion (upstream's pairing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from acestep.lm.sampling import SamplingParams, draw, guided, penalise_repeats

# forward(input_ids, attention_mask, position_ids, cache) -> (last-position logits [rows, V], cache)
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], tuple[torch.Tensor, object]]


class Constraint:
    """What :func:`decode` needs of a constraint (``acestep.lm.constraints.CotConstraint``)."""

    finished: bool

    def apply(self, logits: torch.Tensor) -> torch.Tensor: ...
    def advance(self, token_id: int) -> None: ...
    def clone(self) -> Constraint: ...


def last_logits(call, input_ids, attention_mask, position_ids, cache) -> tuple[torch.Tensor, object]:
    """One causal-LM call (``model`` or a compiled ``model.forward``): the last position's logits."""
    out = call(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # the prefill needs the last position only, not [rows, L, V]
    )
    return out.logits[:, -1, :], out.past_key_values


def eager_forward(model: torch.nn.Module) -> Forward:
    def forward(input_ids, attention_mask, position_ids, cache):
        return last_logits(model, input_ids, attention_mask, position_ids, cache)

    return forward


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(mask, dtype=torch.long, device=device),
    )


@torch.inference_mode()
def decode(
    forward: Forward,
    cache: object,
    rows: Sequence[Sequence[int]],
    constraint: Constraint | None,
    params: SamplingParams,
    generator: torch.Generator,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    device: torch.device,
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Sample up to ``max_new_tokens`` tokens after ``rows[0]``; EOS ends the loop and is not returned."""
    if not 1 <= len(rows) <= 2 or any(len(r) == 0 for r in rows):
        raise ValueError("decode takes one conditional row and optionally one unconditional row")
    ids, mask = left_padded(rows, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits, cache = forward(ids, mask, positions, cache)
    scale = params.cfg_scale if len(rows) == 2 else 1.0
    generated: list[int] = []
    for _ in range(max_new_tokens):
        step = guided(logits[0], logits[1] if len(rows) == 2 else None, scale)
        if constraint is not None:
            step = constraint.apply(step)
        step = penalise_repeats(step, generated, params.repetition_penalty)
        token = draw(step, params, generator)
        if constraint is not None:
            constraint.advance(token)
        if token == eos_id:
            break
        generated.append(token)
        if on_token is not None:
            on_token(token)
        if constraint is not None and constraint.finished:
            break
        ids = torch.full((len(rows), 1), token, dtype=torch.long, device=device)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        logits, cache = forward(ids, mask, positions, cache)
    return generated

"""Seeds: which seed each batch item uses, and the generator drawn from it.

Every random draw on the generation path takes a ``torch.Generator`` made from the item's
own seed; nothing reads torch's or Python's global RNG. Item ``i`` therefore depends only on
``seeds[i]``, so a reported seed reproduces its audio alone or in any batch.
"""

from __future__ import annotations

import math
import secrets

import torch

SEED_SPACE = 2**32


def _random_seed() -> int:
    return secrets.randbelow(SEED_SPACE)


def _parse(seed: int | str) -> list[int]:
    if isinstance(seed, int):
        return [seed]
    parts = [part.strip() for part in str(seed).split(",")]
    if parts and parts[-1] == "":  # a trailing comma
        parts.pop()
    return [int(float(part)) if part else -1 for part in parts]


def resolve_seeds(seed: int | str, batch_size: int, use_random_seed: bool) -> list[int]:
    """The seed of every item.

    - A non-negative seed ``s`` gives items ``s, s+1, ...`` (mod 2**32), so the same request
      gives the same audio and item ``i`` equals seed ``s+i`` generated alone.
    - A comma list gives one seed per item; missing items continue from the previous seed + 1.
    - ``-1`` entries, or ``use_random_seed`` without an explicit seed, draw fresh random seeds
      (from the OS, not a global RNG); the drawn values are reported like any other.
    """
    if use_random_seed:
        return [_random_seed() for _ in range(batch_size)]
    parsed = _parse(seed)
    seeds: list[int] = []
    for index in range(batch_size):
        if index < len(parsed):
            value = parsed[index]
            seeds.append(_random_seed() if value < 0 else value % SEED_SPACE)
        else:
            seeds.append((seeds[-1] + 1) % SEED_SPACE)
    return seeds


def generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per item, on the model's device (a CUDA generator on GPU, as upstream)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def item_noise(
    gens: list[torch.Generator], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Initial noise [B, *shape]: item i drawn from its own generator only."""
    return torch.cat([torch.randn((1, *shape), generator=g, device=device, dtype=dtype) for g in gens])


def retake_blend(noise: torch.Tensor, retake: torch.Tensor, variance: float) -> torch.Tensor:
    """A retake's starting noise: ``cos(a) * noise + sin(a) * retake`` with ``a = variance * pi / 2``
    (0 keeps the take, 1 is the retake seed's own noise; the blend keeps unit variance)."""
    if variance <= 0.0:
        return noise
    angle = variance * math.pi / 2
    return math.cos(angle) * noise + math.sin(angle) * retake

"""Training batches from the preprocessing cache: the epoch's order, crops, padding, context.

The order of epoch ``e`` is a permutation drawn from a generator seeded with (seed, e); a step's
crops come from the step's own generator. Nothing depends on the steps before, so a resumed run
sees the batches an uninterrupted one sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from acestep.tasks import LATENT_FRAMES_PER_SECOND
from acestep.training.cache import Prepared

PATCH_FRAMES = 2  # the DiT patchifies two latent frames into one token


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch or step, micro-batch), stable everywhere."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 29
    return value & 0x7FFFFFFFFFFFFFFF


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*parts))


@dataclass
class Batch:
    x0: torch.Tensor  # [B, T, C] target latents
    valid: torch.Tensor  # [B, T] 1 on audio, 0 on padding
    states: torch.Tensor  # [B, L, D] condition states (padded with the null embedding's zeros)
    context: torch.Tensor  # [B, T, 2C] silence latents then the chunk mask (ones): text2music


class TrainingData:
    """The cached tensors of a dataset, in CPU RAM, and the batches a run draws from them."""

    def __init__(self, prepared: Prepared, batch_size: int, crop_seconds: float):
        self.latents = [load_file(str(s.latents))["target_latents"] for s in prepared.samples]
        self.states = [load_file(str(s.condition))["encoder_hidden_states"] for s in prepared.samples]
        shared = load_file(str(prepared.shared))
        self.silence = shared["silence_latent"]  # [1, T, C]
        self.null_embedding = shared["null_condition_emb"]  # [1, 1, D]
        self.batch_size = batch_size
        crop = int(crop_seconds * LATENT_FRAMES_PER_SECOND)
        self.crop_frames = crop - crop % PATCH_FRAMES if crop > 0 else 0

    def __len__(self) -> int:
        return len(self.latents)

    def batches_per_epoch(self) -> int:
        return -(-len(self) // self.batch_size)

    def order(self, seed: int, epoch: int) -> list[int]:
        return torch.randperm(len(self), generator=generator(seed, epoch, 0xE90C)).tolist()

    def batch(self, indices: list[int], rng: torch.Generator) -> Batch:
        crops = [self._crop(self.latents[i], rng) for i in indices]
        frames = max(c.shape[0] for c in crops)
        frames += frames % PATCH_FRAMES
        channels = crops[0].shape[1]
        x0 = torch.zeros(len(crops), frames, channels)
        valid = torch.zeros(len(crops), frames)
        for row, crop in enumerate(crops):
            x0[row, : crop.shape[0]] = crop
            valid[row, : crop.shape[0]] = 1.0
        states = [self.states[i] for i in indices]
        length = max(s.shape[0] for s in states)
        padded = torch.zeros(len(states), length, states[0].shape[1])
        for row, s in enumerate(states):
            padded[row, : s.shape[0]] = s
        return Batch(x0=x0, valid=valid, states=padded, context=self._context(len(crops), frames))

    def _crop(self, latents: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if self.crop_frames <= 0 or latents.shape[0] <= self.crop_frames:
            return latents
        start = int(torch.randint(0, latents.shape[0] - self.crop_frames + 1, (1,), generator=rng))
        return latents[start : start + self.crop_frames]

    def _context(self, rows: int, frames: int) -> torch.Tensor:
        have = self.silence.shape[1]
        silence = self.silence.repeat(1, -(-frames // have), 1)[:, :frames]
        context = torch.cat([silence, torch.ones_like(silence)], dim=-1)
        return context.expand(rows, -1, -1).clone()


__all__ = ["Batch", "PATCH_FRAMES", "TrainingData", "derived_seed", "generator"]

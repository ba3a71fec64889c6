"""The VAE as an audio codec: waveform <-> latents, tiled so long audio has a bounded peak memory.

Encoding returns the posterior **mean**: upstream samples the posterior from the global torch
RNG, which made every audio-conditioned task irreproducible from its seed (patches/0004).
Decoding runs one item at a time in overlapping tiles (diffusers' overlap-and-discard tiling)
and moves each decoded item to the CPU at once.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderOobleck

from acestep.engine.fast_dit import CompiledModules
from acestep.memory.devices import vae_decode_chunk_frames, vae_encode_chunk_seconds
from acestep.tasks import LATENT_FRAMES_PER_SECOND

HOP = 48000 // LATENT_FRAMES_PER_SECOND  # 1920 samples of 48 kHz audio a latent frame
ENCODE_OVERLAP_SECONDS = 2
DECODE_OVERLAP_FRAMES = 64


class AudioCodec:
    def __init__(
        self,
        vae: AutoencoderOobleck,
        decode_chunk_frames: int | None = None,
        compute: torch.device | None = None,
    ):
        """``compute`` is where the VAE runs (it may wait on the CPU between uses); tiles are sized
        for that device."""
        self.vae = vae
        compute = compute or self.device
        rate = int(vae.config.sampling_rate)
        overlap = DECODE_OVERLAP_FRAMES
        chunk = decode_chunk_frames or vae_decode_chunk_frames(compute)
        while chunk <= 2 * overlap:
            overlap //= 2
        vae.enable_tiling()
        vae.tile_latent_min_length = chunk
        vae.tile_latent_overlap = overlap
        vae.tile_sample_min_length = vae_encode_chunk_seconds(compute) * rate
        vae.tile_sample_overlap = ENCODE_OVERLAP_SECONDS * rate
        self.compiled: CompiledModules | None = None  # the engine sets it on the fast path

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def latent_dim(self) -> int:
        return int(self.vae.config.decoder_input_channels)

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[2, samples] -> [1, frames, C] posterior mean in ``dtype``."""
        x = wav.unsqueeze(0).to(device=self.device, dtype=self.vae.dtype)
        mean = self.vae.encode(x).latent_dist.mean
        return mean.transpose(1, 2).to(dtype=dtype).contiguous()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, frames, C] -> float32 [B, 2, frames * 1920] on the CPU, one item at a time.

        One at a time: an item's audio must not depend on what it was decoded beside (kernels may
        round differently at another batch size), and the peak stays one item's. With the large
        tiles of big cards this is as fast as stock diffusers' batched decode (BENCHMARKS.md).
        """
        out = []
        for item in latents.split(1):
            z = item.transpose(1, 2).to(device=self.device, dtype=self.vae.dtype)

            def decode(z: torch.Tensor = z) -> torch.Tensor:
                return self.vae.decode(z).sample

            sample = self.compiled.run(decode) if self.compiled is not None else decode()
            out.append(sample.float().cpu())
        return torch.cat(out)


def tile_frames(latent: torch.Tensor, frames: int) -> torch.Tensor:
    """Repeat a [1, T, C] latent along time to exactly ``frames`` (the silence latent is finite)."""
    have = latent.shape[1]
    if have >= frames:
        return latent[:, :frames]
    repeats = -(-frames // have)
    return latent.repeat(1, repeats, 1)[:, :frames]


def pad_with(latent: torch.Tensor, filler: torch.Tensor, frames: int) -> torch.Tensor:
    """Crop or extend [1, T, C] to ``frames``, extending with the matching frames of ``filler``."""
    have = latent.shape[1]
    if have >= frames:
        return latent[:, :frames]
    tail = tile_frames(filler, frames)[:, have:]
    return torch.cat([latent, tail.to(latent)], dim=1)

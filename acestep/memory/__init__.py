"""Device policy: the only package that decides devices, dtypes and memory-dependent sizes."""

from acestep.memory.devices import (
    default_dtype,
    resolve_device,
    vae_decode_chunk_frames,
    vae_encode_chunk_seconds,
)

__all__ = ["default_dtype", "resolve_device", "vae_decode_chunk_frames", "vae_encode_chunk_seconds"]

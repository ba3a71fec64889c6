"""Checkpoint folders: upstream and diffusers layouts, strict loading, variants, download.

Layouts and variants are torch-free (a server process resolves checkpoints without torch);
the loading names import torch and diffusers only when first used.
"""

from acestep.checkpoints.layout import CheckpointError, CheckpointPaths, resolve
from acestep.checkpoints.variants import Variant, detect_variant

_LOADING = ("OFFLOAD_ORDER", "Components", "load_components")

__all__ = [
    "OFFLOAD_ORDER",
    "CheckpointError",
    "CheckpointPaths",
    "Components",
    "Variant",
    "detect_variant",
    "load_components",
    "resolve",
]


def __getattr__(name: str):
    if name in _LOADING:
        from acestep.checkpoints import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'acestep.checkpoints' has no attribute {name!r}")

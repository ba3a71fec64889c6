"""Checkpoint folders: upstream and diffusers layouts, strict loading, variants, download."""

from acestep.checkpoints.layout import CheckpointError, CheckpointPaths, resolve
from acestep.checkpoints.loading import OFFLOAD_ORDER, Components, load_components
from acestep.checkpoints.variants import Variant, detect_variant

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

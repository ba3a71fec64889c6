"""acestep: production distribution of ACE-Step 1.5 music generation.

The public names are imported lazily, so ``import acestep`` (and CLI argument checking) does not
pay for torch and diffusers until a model is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "AceStep": "acestep.engine.engine",
    "GenerationError": "acestep.engine.output",
    "AudioItem": "acestep.result",
    "GenerationRequest": "acestep.request",
    "GenerationResult": "acestep.result",
}
__all__ = ["AceStep", "AudioItem", "GenerationError", "GenerationRequest", "GenerationResult", "__version__"]

if TYPE_CHECKING:
    from acestep.engine.engine import AceStep, GenerationError
    from acestep.request import GenerationRequest
    from acestep.result import AudioItem, GenerationResult


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'acestep' has no attribute {name!r}")

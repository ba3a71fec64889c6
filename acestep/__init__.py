"""acestep: production distribution of ACE-Step 1.5 music generation."""

from acestep.engine import AceStep, AudioItem, GenerationError, GenerationRequest, GenerationResult

__version__ = "0.1.0.dev0"
__all__ = ["AceStep", "AudioItem", "GenerationError", "GenerationRequest", "GenerationResult", "__version__"]

"""Request -> conditioning -> sampling -> audio. ``AceStep`` is the entry point."""

from acestep.engine.engine import AceStep, GenerationError
from acestep.engine.request import AudioItem, GenerationRequest, GenerationResult

__all__ = ["AceStep", "AudioItem", "GenerationError", "GenerationRequest", "GenerationResult"]

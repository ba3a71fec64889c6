"""Moved to ``acestep.request`` (the vocabulary every layer shares); this name stays for one
release so that existing imports keep working."""

from acestep.request import *  # noqa: F403
from acestep.request import AudioItem, GenerationRequest, GenerationResult  # noqa: F401

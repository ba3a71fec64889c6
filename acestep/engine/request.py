"""Moved to ``acestep.request`` and ``acestep.result`` (the vocabulary every layer shares); this
name stays for one release so that existing imports keep working."""

from acestep.request import *  # noqa: F403
from acestep.request import GenerationRequest  # noqa: F401
from acestep.result import AudioItem, GenerationResult  # noqa: F401

"""How large each part of a request may be: every text and list a client sends has a bound.

Records (with their text) are kept for a day, so a field that no client needs long must not cost
a job's worth of memory. Each bound sits above what upstream ACE-Step 1.5 uses: songs of at most
600 s, at most 200 sampling steps, a DiT text prompt cut at 256 tokens and lyrics at 2048 tokens.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from acestep.engine.tasks import CODES_PER_SECOND

MAX_DURATION_S = 600.0
MAX_BATCH_SIZE = 8
MAX_STEPS = 200
MAX_TIMESTEPS = MAX_STEPS + 1  # a custom schedule may also write its final 0
MAX_TEXT_CHARS = 4096  # caption, instruction, sample query, LM negative prompt
MAX_LYRICS_CHARS = 20000
MAX_NAME_CHARS = 64  # an enumerated value: task, track, key, time signature, language, format
MAX_PATH_CHARS = 4096  # Linux's PATH_MAX
MAX_SEED_CHARS = 1024  # a comma list of seeds, one per batch item
# The codes of the longest song: 5 a second, each "<|audio_code_N|>" (20 characters) with room
# for separators.
MAX_AUDIO_CODE_CHARS = int(MAX_DURATION_S) * CODES_PER_SECOND * 32
SHOWN_CHARS = 80  # how much of a refused value an error message quotes

Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
SeedList = Annotated[str, StringConstraints(max_length=MAX_SEED_CHARS)]


def shown(value: object) -> str:
    """A value's repr for an error message, clipped: a refusal never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[: SHOWN_CHARS - 1]}… ({len(text)} characters)"

"""Ready requests: what ``POST /create_random_sample`` answers and the UI's examples and random
sample offer. Written with upstream's REST names (``keyscale``, ``duration``...), which
``GenerationRequest`` accepts as aliases."""

from __future__ import annotations

EXAMPLES = (
    {
        "caption": "warm lo-fi hip hop, dusty piano, vinyl crackle",
        "lyrics": "[Instrumental]",
        "bpm": 84,
        "duration": 60,
        "keyscale": "D minor",
        "language": "en",
        "timesignature": "4",
    },
    {
        "caption": "upbeat synth-pop, bright pads, four-on-the-floor",
        "lyrics": "[verse]\nCity lights\n[chorus]\nTonight",
        "bpm": 120,
        "duration": 90,
        "keyscale": "A major",
        "language": "en",
        "timesignature": "4",
    },
    {
        "caption": "gentle acoustic folk, fingerpicked guitar, soft male vocal",
        "lyrics": "[verse]\nMorning on the river\n[chorus]\nCarry me home",
        "bpm": 96,
        "duration": 75,
        "keyscale": "G major",
        "language": "en",
        "timesignature": "3",
    },
    {
        "caption": "cinematic orchestral build, strings and brass, epic drums",
        "lyrics": "[Instrumental]",
        "bpm": 110,
        "duration": 60,
        "keyscale": "C minor",
        "language": "en",
        "timesignature": "4",
    },
)
SIMPLE_EXAMPLES = (
    {"description": "a calm piano piece for a rainy evening", "instrumental": True, "vocal_language": "en"},
    {
        "description": "an upbeat pop song about summer road trips",
        "instrumental": False,
        "vocal_language": "en",
    },
)

"""Interface strings, one JSON file per language in ``strings/`` (English is the fallback)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

STRINGS = Path(__file__).parent / "strings"
LANGUAGES = ("en", "pt", "nl", "zh")


@cache
def strings(language: str) -> dict[str, str]:
    english = json.loads((STRINGS / "en.json").read_text(encoding="utf-8"))
    path = STRINGS / f"{language}.json"
    if language == "en" or not path.is_file():
        return english
    return english | json.loads(path.read_text(encoding="utf-8"))

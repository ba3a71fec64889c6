"""Interface strings, one JSON file per language in ``strings/`` (English is the fallback), and
the page direction of each language."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

STRINGS = Path(__file__).parent / "strings"
LANGUAGES = ("en", "pt", "nl", "zh", "ja", "he", "fa")
RIGHT_TO_LEFT = frozenset({"he", "fa"})
# Gradio marks each block dir="ltr" (a component's own ``rtl`` flag is off) and aligns many texts
# left: in a right-to-left page the blocks follow the page, while typed text (text boxes, numbers,
# JSON, codes) keeps its own direction.
RTL_CSS = (
    "html[dir=rtl] .gradio-container [dir=ltr]:not(textarea, input) { direction: rtl; }"
    " html[dir=rtl] .gradio-container :is(label, span, p, li, th, td, button,"
    " [role=gridcell], [role=columnheader]) { text-align: start; }"
    " html[dir=rtl] .gradio-container input:not([type=range]) { direction: ltr; }"  # "-1", not "1-"
    # A player's time runs left to right in any language (its waveform, clock and buttons).
    " html[dir=rtl] .gradio-container :is(.component-wrapper, .controls) { direction: ltr; }"
)


def page_script(language: str) -> str:
    """The page's load script (``gr.mount_gradio_app(js=...)``): the document's language and
    direction, so that a right-to-left language lays the whole page out from the right (Gradio
    has no page-wide setting; a few components take ``rtl`` for their own text only)."""
    direction = "rtl" if language in RIGHT_TO_LEFT else "ltr"
    style = ""
    if direction == "rtl":  # Gradio aligns many texts left explicitly: back to the line's start
        style = (
            "const style = document.createElement('style'); "
            f"style.textContent = {json.dumps(RTL_CSS)}; document.head.append(style); "
        )
    return (
        "() => { const root = document.documentElement; "
        f"root.lang = {json.dumps(language)}; root.dir = {json.dumps(direction)}; {style}}}"
    )


@cache
def strings(language: str) -> dict[str, str]:
    english = json.loads((STRINGS / "en.json").read_text(encoding="utf-8"))
    path = STRINGS / f"{language}.json"
    if language == "en" or not path.is_file():
        return english
    return english | json.loads(path.read_text(encoding="utf-8"))

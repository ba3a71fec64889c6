"""Task types, their instruction strings and track names (spec generation.md section 1)."""

from __future__ import annotations

TASK_TYPES = ("text2music", "repaint", "cover", "extract", "lego", "complete")

# Tasks whose conditioning is built from source audio; cover may use audio codes instead.
SOURCE_TASKS = frozenset({"repaint", "cover", "extract", "lego", "complete"})

# Length generated when a request sets no duration and has no source to take it from.
AUTO_DURATION_S = 120.0
# The LM writes audio codes at 5 Hz; each code stands for five 25 Hz latent frames.
CODES_PER_SECOND = 5

TRACK_NAMES = (
    "woodwinds",
    "brass",
    "fx",
    "synth",
    "strings",
    "percussion",
    "keyboard",
    "guitar",
    "bass",
    "drums",
    "backing_vocals",
    "vocals",
)

INSTRUCTIONS = {
    "text2music": "Fill the audio semantic mask based on the given conditions:",
    "repaint": "Repaint the mask area based on the given conditions:",
    "cover": "Generate audio semantic tokens based on the given conditions:",
    "extract": "Extract the {TRACK_NAME} track from the audio:",
    "extract_default": "Extract the track from the audio:",
    "lego": "Generate the {TRACK_NAME} track based on the audio context:",
    "lego_default": "Generate the track based on the audio context:",
    "complete": "Complete the input track with {TRACK_CLASSES}:",
    "complete_default": "Complete the input track:",
}
DEFAULT_INSTRUCTION = INSTRUCTIONS["text2music"]


def build_instruction(
    task_type: str, track_name: str | None = None, track_classes: list[str] | None = None
) -> str:
    """The instruction upstream's UI and later REST server derive: track names upper-cased."""
    if task_type in ("extract", "lego"):
        if track_name:
            return INSTRUCTIONS[task_type].format(TRACK_NAME=track_name.upper())
        return INSTRUCTIONS[f"{task_type}_default"]
    if task_type == "complete":
        if track_classes:
            return INSTRUCTIONS["complete"].format(TRACK_CLASSES=" | ".join(c.upper() for c in track_classes))
        return INSTRUCTIONS["complete_default"]
    return INSTRUCTIONS.get(task_type, DEFAULT_INSTRUCTION)


def with_colon(instruction: str) -> str:
    """Upstream appends ':' before tokenising when the instruction lacks one."""
    return instruction if instruction.endswith(":") else instruction + ":"

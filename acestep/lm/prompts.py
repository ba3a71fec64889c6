"""The 5 Hz LM's prompts, rendered with the tokenizer's own chat template (docs/lm.md). The
exact wording matters: the checkpoints were trained on these strings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from acestep.request import INSTRUMENTAL_LYRICS

if TYPE_CHECKING:  # transformers is heavy; only the annotations need it
    from transformers import PreTrainedTokenizerBase

GENERATE_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
UNDERSTAND_INSTRUCTION = (
    "Understand the given musical conditions and describe the audio semantics accordingly:"
)
SAMPLE_INSTRUCTION = "Expand the user's input into a more detailed and specific musical description:"
FORMAT_INSTRUCTION = "Format the user's input into a more detailed and specific musical description:"
NO_USER_INPUT = "NO USER INPUT"
EMPTY_COT = "<think>\n</think>"


def _render(tokenizer, instruction: str, user: str) -> str:
    """System + user turns, then the opened assistant turn (generation prompt)."""
    messages = [
        {"role": "system", "content": f"# Instruction\n{instruction}\n\n"},
        {"role": "user", "content": user},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _with_cot(prompt: str, cot: str) -> str:
    # The CoT is appended by hand rather than passed as an assistant message: the chat template
    # would close that turn with <|im_end|>, and the model would then see a finished answer
    # instead of continuing the turn with audio codes (the chat-template caveat in docs/lm.md).
    return prompt + (cot if cot.endswith("\n") else cot + "\n")


def _caption_lyrics(caption: str, lyrics: str) -> str:
    return f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"


def phase1_prompt(tokenizer: PreTrainedTokenizerBase, caption: str, lyrics: str) -> str:
    """Phase 1: the model writes the CoT metadata block."""
    return _render(tokenizer, GENERATE_INSTRUCTION, _caption_lyrics(caption, lyrics))


def phase2_prompt(tokenizer: PreTrainedTokenizerBase, caption: str, lyrics: str, cot: str) -> str:
    """Phase 2: the phase-1 prompt continued by the CoT block; the model writes audio codes."""
    return _with_cot(phase1_prompt(tokenizer, caption, lyrics), cot)


def _meaningful(negative_prompt: str) -> bool:
    text = negative_prompt.strip()
    return bool(text) and text != NO_USER_INPUT


def unconditional_prompt(
    tokenizer: PreTrainedTokenizerBase, lyrics: str, negative_prompt: str, cot: str | None
) -> str:
    """The CFG unconditional prompt (docs/lm.md).

    The caption is the negative prompt when it says something, else the caption section is left
    out. With ``cot=None`` this pairs with :func:`phase1_prompt`; with a CoT (phase 2) the real
    block is replaced by an empty ``<think>\\n</think>`` so the metadata is not conditioned on.
    """
    if _meaningful(negative_prompt):
        user = _caption_lyrics(negative_prompt, lyrics)
    else:
        user = f"# Lyric\n{lyrics}\n"
    prompt = _render(tokenizer, GENERATE_INSTRUCTION, user)
    return prompt if cot is None else _with_cot(prompt, EMPTY_COT)


def understand_prompt(tokenizer: PreTrainedTokenizerBase, codes: str) -> str:
    """Audio codes → metadata and lyrics; ``codes`` is the ``<|audio_code_N|>`` string."""
    return _render(tokenizer, UNDERSTAND_INSTRUCTION, codes)


def sample_prompt(tokenizer: PreTrainedTokenizerBase, query: str, instrumental: bool) -> str:
    """Inspiration mode: expand a short query into caption, metadata and lyrics."""
    query = query if query.strip() else NO_USER_INPUT
    flag = "true" if instrumental else "false"
    return _render(tokenizer, SAMPLE_INSTRUCTION, f"{query}\n\ninstrumental: {flag}")


def format_prompt(tokenizer: PreTrainedTokenizerBase, caption: str, lyrics: str) -> str:
    """Format / rewrite mode: tidy the user's caption and lyrics (no trailing newline, as trained)."""
    caption = caption if caption.strip() else NO_USER_INPUT
    lyrics = lyrics if lyrics.strip() else INSTRUMENTAL_LYRICS
    return _render(tokenizer, FORMAT_INSTRUCTION, f"# Caption\n{caption}\n\n# Lyric\n{lyrics}")

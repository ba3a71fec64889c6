"""Text conditioning: the caption and lyric prompts, and running the Qwen3 text encoder.

Templates and rules are upstream's (docs/tasks.md): the caption prompt goes
through the whole encoder (last hidden state, no attention mask); lyrics only through its
input embedding table, the DiT's lyric encoder contextualises them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase, Qwen3Model

CAPTION_TEMPLATE = "# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{metas}<|endoftext|>\n"
LYRIC_TEMPLATE = "# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"
MAX_CAPTION_TOKENS = 256
MAX_LYRIC_TOKENS = 2048


def metas_string(bpm: int | None, time_signature: str, key_scale: str, duration_s: float | None) -> str:
    """Always four lines; unknown values read ``N/A``; no known duration reads ``30 seconds``."""
    duration = f"{int(duration_s)} seconds" if duration_s and duration_s > 0 else "30 seconds"
    return (
        f"- bpm: {bpm if bpm else 'N/A'}\n"
        f"- timesignature: {time_signature.strip() or 'N/A'}\n"
        f"- keyscale: {key_scale if key_scale.strip() else 'N/A'}\n"
        f"- duration: {duration}\n"
    )


def clean_caption(caption: str) -> str:
    """A caption pasted from a full prompt keeps only its ``# Caption`` section."""
    if "# Instruction" in caption and "# Caption" in caption:
        body = caption.split("# Caption", 1)[1]
        return body.split("# Metas", 1)[0].strip()
    return caption


def dit_caption(
    caption: str, global_caption: str, instruction: str, lego_sft: bool, explicit_mask: bool
) -> str:
    """The caption section the DiT is conditioned on.

    A plain checkpoint gets ``caption``. A stem SFT checkpoint (``is_lego_sft`` in its config) was
    trained on a global/local block: ``Global:`` the whole song (``global_caption``), ``Local:``
    this stem (``caption``), then ``Mask Control:`` true when the chunk mask marks an explicit
    window, false when the model is left to decide. An instruction for "a segment" of a track
    (chunk mode) drops the ``Global:`` line, as in that checkpoint's training (docs/models.md).
    """
    local = clean_caption(caption)
    if not lego_sft:
        return local
    mask = f"Mask Control: {'true' if explicit_mask else 'false'}"
    if "a segment" in instruction.lower():
        return f"Local: {local}\n{mask}"
    return f"Global: {global_caption}\nLocal: {local}\n{mask}"


def caption_prompt(instruction: str, caption: str, metas: str) -> str:
    return CAPTION_TEMPLATE.format(instruction=instruction, caption=clean_caption(caption), metas=metas)


def lyric_prompt(language: str, lyrics: str) -> str:
    return LYRIC_TEMPLATE.format(language=language, lyrics=lyrics)


@dataclass
class TextCondition:
    """Encoder inputs for one prompt pair (batch 1); items of a request share it."""

    text_hidden: torch.Tensor  # [1, Lt, D_text]
    text_mask: torch.Tensor  # [1, Lt] bool
    lyric_hidden: torch.Tensor  # [1, Ll, D_text]
    lyric_mask: torch.Tensor  # [1, Ll] bool


@torch.inference_mode()
def encode_text(
    text_encoder: Qwen3Model, tokenizer: PreTrainedTokenizerBase, caption: str, lyrics: str
) -> TextCondition:
    device = next(text_encoder.parameters()).device
    text = tokenizer(caption, truncation=True, max_length=MAX_CAPTION_TOKENS, return_tensors="pt")
    lyric = tokenizer(lyrics, truncation=True, max_length=MAX_LYRIC_TOKENS, return_tensors="pt")
    text_ids = text.input_ids.to(device)
    lyric_ids = lyric.input_ids.to(device)
    text_hidden = text_encoder(input_ids=text_ids).last_hidden_state
    lyric_hidden = text_encoder.get_input_embeddings()(lyric_ids)
    return TextCondition(
        text_hidden=text_hidden,
        text_mask=torch.ones_like(text_ids, dtype=torch.bool),
        lyric_hidden=lyric_hidden,
        lyric_mask=torch.ones_like(lyric_ids, dtype=torch.bool),
    )

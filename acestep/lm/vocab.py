"""The LM's special tokens, read from the shipped tokenizer at load time (never hard-coded)."""

from __future__ import annotations

import re
from dataclasses import dataclass

AUDIO_CODE_RE = re.compile(r"^<\|audio_code_(\d+)\|>$")
MAX_VALID_CODE = 63999  # FSQ levels 8*8*8*5*5*5 = 64,000 codes; higher code tokens exist but are invalid


class VocabError(ValueError):
    """The tokenizer lacks a token the 5 Hz LM needs; the message names it."""


@dataclass(frozen=True)
class LmVocab:
    """Token ids the decoder and the constraints need."""

    size: int  # logits width (len(tokenizer))
    eos_id: int
    pad_id: int
    think_start_id: int
    think_end_id: int
    code_ids: tuple[int, ...]  # token ids of the valid codes, in code order
    code_of_id: dict[int, int]  # token id -> code N (valid codes only)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> LmVocab:
        vocab = tokenizer.get_vocab()
        codes: dict[int, int] = {}
        for token, token_id in vocab.items():
            match = AUDIO_CODE_RE.match(token)
            if match and int(match.group(1)) <= MAX_VALID_CODE:
                codes[token_id] = int(match.group(1))
        if not codes:
            raise VocabError("the LM tokenizer has no <|audio_code_N|> tokens; is this a 5Hz LM folder?")
        missing = [t for t in ("<think>", "</think>") if t not in vocab]
        if missing:
            raise VocabError(f"the LM tokenizer lacks {', '.join(missing)}")
        if tokenizer.eos_token_id is None:
            raise VocabError("the LM tokenizer has no eos_token")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ordered = sorted(codes, key=codes.__getitem__)
        return cls(
            size=len(tokenizer),
            eos_id=int(tokenizer.eos_token_id),
            pad_id=int(pad),
            think_start_id=int(vocab["<think>"]),
            think_end_id=int(vocab["</think>"]),
            code_ids=tuple(ordered),
            code_of_id=codes,
        )

    def code_token(self, code: int) -> str:
        return f"<|audio_code_{code}|>"

"""What the 5 Hz LM's constrained decoding derives from the tokenizer once: token texts, prefix tries
of every valid metadata value, and the named token masks (``lm.md`` section 7.4). Each sequence's
state machine (:class:`acestep.lm.constraints.CotConstraint`) reads these, never changes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from acestep.lm.vocab import LmVocab
from acestep.request import VOCAL_LANGUAGES
from acestep.tasks import MAX_BPM, MAX_DURATION_S, MIN_BPM, MIN_DURATION_S

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FIELDS = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
USER_FIELDS = frozenset({"bpm", "duration", "keyscale", "language", "timesignature"})
PHASES = ("cot", "codes", "understand")
CAPTION_MAX_TOKENS = 512
BPM_RANGE = (MIN_BPM, MAX_BPM)
TIME_SIGNATURES = ("2", "3", "4", "6")
KEY_SCALES = tuple(
    f"{note}{accidental} {mode}"
    for note in "ABCDEFG"
    for accidental in ("", "#", "b", "♯", "♭")
    for mode in ("major", "minor")
)
_NEG_INF = float("-inf")
# Characters str.splitlines() breaks on besides "\n": kept out of captions so any line parser agrees.
_LINE_BREAKS = frozenset("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


class _Node:
    """A prefix-trie node over token ids; a leaf (no children) means the value and its newline are done."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}


def _trie(sequences: list[list[int]]) -> _Node:
    root = _Node()
    for seq in sequences:
        node = root
        for token in seq:
            node = node.children.setdefault(token, _Node())
    return root


@dataclass(eq=False)
class ConstraintTables:
    """Everything derived from the tokenizer once (token texts, prefix tries of valid values, banned sets);
    reused by every sequence."""

    tokenizer: PreTrainedTokenizerBase
    vocab: LmVocab
    masks: dict[str, torch.Tensor]  # name -> bool [vocab.size], CPU; see build() for the names
    tries: dict[str, _Node]  # field -> trie of encode(" value") + encode("\n")
    names: dict[str, tuple[int, ...]]  # field -> encode("field:")
    newline_id: int
    blank_ids: frozenset[int]  # whitespace-only text tokens: they do not make a caption line non-empty
    _device_masks: dict[tuple[str, str, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return self.vocab.size

    @classmethod
    def build(
        cls, tokenizer: PreTrainedTokenizerBase, vocab: LmVocab, max_duration: int = int(MAX_DURATION_S)
    ) -> ConstraintTables:
        if max_duration < MIN_DURATION_S:
            raise ValueError(f"max_duration must be at least {MIN_DURATION_S}, got {max_duration}")

        def encode(text: str) -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=False))

        newline = encode("\n")
        if len(newline) != 1:
            raise ValueError(f"the LM tokenizer spells a newline as {len(newline)} tokens; expected one")
        size = vocab.size
        # One decode per id: partial UTF-8 bytes come out as U+FFFD, which is harmless for these checks.
        texts = tokenizer.batch_decode(
            [[i] for i in range(size)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        special = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)
        special |= {vocab.eos_id, vocab.think_start_id, vocab.think_end_id}
        content: list[int] = []  # caption text inside a line
        ws_start: list[int] = []  # ...and starting with a space (the value's start, a continuation line)
        line_end: list[int] = []  # caption text ending its line with its only newline
        line_end_text: list[int] = []  # ...with non-blank text before the newline
        free_text: list[int] = [vocab.eos_id]  # the understanding answer after </think>
        blank: set[int] = set()
        for i, text in enumerate(texts):
            if i in special or not text:
                continue
            free_text.append(i)
            if "`" in text or not _LINE_BREAKS.isdisjoint(text):
                continue
            if "\n" not in text:
                content.append(i)
                if text.startswith(" "):
                    ws_start.append(i)
                if not text.strip():
                    blank.add(i)
            elif text.index("\n") == len(text) - 1:
                line_end.append(i)
                if text[:-1].strip():
                    line_end_text.append(i)

        def as_mask(ids: list[int] | tuple[int, ...]) -> torch.Tensor:
            mask = torch.zeros(size, dtype=torch.bool)
            mask[list(ids)] = True
            return mask

        masks = {
            "content": as_mask(content),
            "ws_start": as_mask(ws_start),
            "free_text": as_mask(free_text),
            "codes": as_mask(vocab.code_ids),
            "line": as_mask(content + line_end),
            "line_text": as_mask(content + line_end_text),
        }

        def values_trie(values: list[str]) -> _Node:
            return _trie([encode(f" {value}") + newline for value in values])

        tries = {
            "bpm": values_trie([str(v) for v in range(BPM_RANGE[0], BPM_RANGE[1] + 1)]),
            "duration": values_trie([str(v) for v in range(MIN_DURATION_S, max_duration + 1)]),
            "timesignature": values_trie(list(TIME_SIGNATURES)),
            "keyscale": values_trie(list(KEY_SCALES)),
            "language": values_trie(sorted(VOCAL_LANGUAGES)),
        }
        names = {name: tuple(encode(f"{name}:")) for name in FIELDS}
        return cls(tokenizer, vocab, masks, tries, names, newline[0], frozenset(blank))

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def mask(self, name: str, device: torch.device, width: int | None = None) -> torch.Tensor:
        """The named mask on ``device``, padded with False to ``width`` (a padded LM head); built once."""
        width = self.size if width is None else width
        key = (name, str(device), width)
        if key not in self._device_masks:
            mask = torch.zeros(width, dtype=torch.bool)
            mask[: self.size] = self.masks[name]
            self._device_masks[key] = mask.to(device)
        return self._device_masks[key]

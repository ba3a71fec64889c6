"""Constrained decoding for the 5 Hz LM: a per-sequence finite-state machine over the chain-of-thought
metadata block, the audio codes after it, or the free text of the understanding task (``lm.md`` §3, §7.4).

:class:`ConstraintTables` derives everything from the tokenizer once; each sequence gets its own
:class:`CotConstraint`, which masks one step's logits (``apply``) and then takes the sampled token
(``advance``). ``apply`` never changes the state, so a caller may call it more than once per step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from acestep.engine.request import VOCAL_LANGUAGES
from acestep.lm.vocab import LmVocab

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FIELDS = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
USER_FIELDS = frozenset({"bpm", "duration", "keyscale", "language", "timesignature"})
PHASES = ("cot", "codes", "understand")
CAPTION_MAX_TOKENS = 512
BPM_RANGE = (30, 300)
MIN_DURATION = 10
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
        cls, tokenizer: PreTrainedTokenizerBase, vocab: LmVocab, max_duration: int = 600
    ) -> ConstraintTables:
        if max_duration < MIN_DURATION:
            raise ValueError(f"max_duration must be at least {MIN_DURATION}, got {max_duration}")

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
            "duration": values_trie([str(v) for v in range(MIN_DURATION, max_duration + 1)]),
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


@dataclass(frozen=True)
class _Step:
    kind: str  # "force" | "trie" | "caption" | "codes" | "text"
    tokens: tuple[int, ...] = ()  # force
    trie: _Node | None = None  # trie
    greedy: bool = False  # trie: take the argmax at the first branching token (language)


@dataclass
class _Allowed:
    """One step's allowed set: the union of a named mask and explicit ids; ``forced`` = exactly ids[0]."""

    mask: str | None = None
    ids: tuple[int, ...] = ()
    forced: bool = False


class CotConstraint:
    """One sequence's FSM state. Phases: "cot" (write the <think> block; with stop_at_reasoning force EOS
    right after </think>, otherwise force a newline and go on to the codes), "codes" (the prompt already
    ends after </think>: only valid audio-code tokens and EOS; EOS banned until target_codes codes exist,
    then forced; target_codes None = EOS allowed at any point), "understand" (the CoT FSM without user
    values, then after </think> free text with audio codes banned, ending at EOS)."""

    def __init__(
        self,
        tables: ConstraintTables,
        *,
        phase: str = "cot",
        user_metas: dict[str, str] | None = None,
        use_caption: bool = True,
        use_language: bool = True,
        target_codes: int | None = None,
        stop_at_reasoning: bool = True,
    ) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if target_codes is not None and target_codes < 0:
            raise ValueError(f"target_codes must be >= 0, got {target_codes}")
        metas = {k: str(v).strip() for k, v in (user_metas or {}).items() if v is not None and str(v).strip()}
        unknown = set(metas) - USER_FIELDS
        if unknown:
            raise ValueError(f"user_metas keys must be among {sorted(USER_FIELDS)}, got {sorted(unknown)}")
        if phase == "understand":
            metas = {}  # understanding describes the given codes; nothing is injected
        self._t = tables
        self._target = target_codes
        self._steps = self._program(phase, metas, use_caption, use_language, stop_at_reasoning)
        self._index = 0
        self._pos = 0  # force: tokens done
        self._node: _Node | None = None  # trie: current node
        self._branched = False  # trie (greedy): the first branching token has been taken
        self._cap_count = 0  # caption tokens so far
        self._line_start = False  # caption: the last token ended a line
        self._line_text = False  # caption: the current line has non-blank text
        self._codes = 0
        self._finished = False
        self._serial = 0  # tokens advanced; keys the allowed set apply() last resolved
        self._resolved: tuple[int, _Allowed] | None = None
        self._enter()

    def _program(
        self,
        phase: str,
        metas: dict[str, str],
        use_caption: bool,
        use_language: bool,
        stop_at_reasoning: bool,
    ) -> list[_Step]:
        t = self._t
        eos, newline = t.vocab.eos_id, t.newline_id
        if phase == "codes":
            return [_Step("codes")]
        steps = [_Step("force", (t.vocab.think_start_id, newline))]
        for name in FIELDS:
            if (
                name == "genres"
                or (name == "caption" and not use_caption)
                or (name == "language" and not use_language)
            ):
                continue  # genres needs a genre vocabulary file and is off in normal generation
            steps.append(_Step("force", t.names[name]))
            if name in metas:
                steps.append(_Step("force", t.encode(f" {metas[name]}") + (newline,)))
            elif name == "caption":
                steps.append(_Step("caption"))
            else:
                steps.append(_Step("trie", trie=t.tries[name], greedy=name == "language"))
        steps.append(_Step("force", (t.vocab.think_end_id,)))
        if phase == "understand":
            steps.append(_Step("text"))
        elif stop_at_reasoning:
            steps.append(_Step("force", (eos,)))
        else:
            # The phase-2 prompt puts a newline after </think>; keep the model on that layout.
            steps += [_Step("force", (newline,)), _Step("codes")]
        return steps

    def clone(self) -> CotConstraint:
        """A copy of this state that shares the read-only tables (a retry starts from here)."""
        return copy.deepcopy(self, {id(self._t): self._t})

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def codes_emitted(self) -> int:
        return self._codes

    @property
    def _step(self) -> _Step:
        return self._steps[self._index]

    def _enter(self) -> None:
        step = self._step
        self._pos = 0
        self._node = step.trie
        self._branched = False
        self._cap_count = 0
        self._line_start = False
        self._line_text = False

    def _next(self) -> None:
        self._index += 1
        self._enter()

    def _first_of_next(self) -> int:
        # Whatever follows a caption is a forced field name or </think>.
        return self._steps[self._index + 1].tokens[0]

    def _allowed(self, logits: torch.Tensor | None) -> _Allowed:
        """The allowed set now; with ``logits`` the data-dependent choices (greedy, caption end) are made."""
        t, step = self._t, self._step
        if self._finished:
            return _Allowed(ids=(t.vocab.eos_id,), forced=True)
        if step.kind == "force":
            return _Allowed(ids=(step.tokens[self._pos],), forced=True)
        if step.kind == "trie":
            children = tuple(self._node.children)
            if len(children) == 1:
                return _Allowed(ids=children, forced=True)
            if step.greedy and not self._branched:
                if logits is None:
                    return _Allowed(ids=children)
                best = children[int(torch.argmax(logits[..., list(children)].reshape(-1, len(children))[0]))]
                return _Allowed(ids=(best,), forced=True)
            return _Allowed(ids=children)
        if step.kind == "caption":
            return self._caption_allowed(logits)
        if step.kind == "codes":
            if self._target is None:
                return _Allowed(mask="codes", ids=(t.vocab.eos_id,))
            if self._codes >= self._target:
                return _Allowed(ids=(t.vocab.eos_id,), forced=True)
            return _Allowed(mask="codes")
        return _Allowed(mask="free_text")  # text

    def _caption_allowed(self, logits: torch.Tensor | None) -> _Allowed:
        if self._cap_count == 0:
            return _Allowed(mask="ws_start")  # "caption:" is followed by " words"
        if self._line_start:
            end = _Allowed(ids=(self._first_of_next(),), forced=True)
            if self._cap_count >= CAPTION_MAX_TOKENS:
                return end
            if logits is None:
                return _Allowed(mask="ws_start", ids=end.ids)
            # An indented line continues the caption; anything else would start a new key, so the
            # caption ends unless the model's favourite next token starts with a space.
            row = logits[..., : self._t.size].reshape(-1, self._t.size)[0]
            best = int(torch.argmax(torch.where(self._t.mask("content", row.device), row, _NEG_INF)))
            return _Allowed(mask="ws_start") if bool(self._t.masks["ws_start"][best]) else end
        if self._cap_count >= CAPTION_MAX_TOKENS:
            return _Allowed(ids=(self._t.newline_id,), forced=True)
        return _Allowed(mask="line" if self._line_text else "line_text")

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask one sequence's ``logits`` ([V] or [1, V], V >= the tokenizer size) to the allowed tokens:
        the rest, and any id beyond the tokenizer, become -inf. A forced token is the only finite entry."""
        size = self._t.size
        if logits.shape[-1] < size:
            raise ValueError(f"logits have {logits.shape[-1]} entries; the tokenizer has {size}")
        allowed = self._allowed(logits)
        self._resolved = (self._serial, allowed)
        if allowed.mask is not None:
            out = torch.where(self._t.mask(allowed.mask, logits.device, logits.shape[-1]), logits, _NEG_INF)
        else:
            out = torch.full_like(logits, _NEG_INF)
        if allowed.ids:
            idx = torch.tensor(allowed.ids, device=logits.device)
            picked = logits[..., idx]
            if allowed.forced:
                # Keep a forced token sampleable even if an earlier processor pushed it to -inf.
                picked = torch.where(torch.isfinite(picked), picked, torch.zeros_like(picked))
            out[..., idx] = picked
        return out

    def _is_allowed(self, allowed: _Allowed, token_id: int) -> bool:
        if token_id in allowed.ids:
            return True
        if allowed.mask is None or not 0 <= token_id < self._t.size:
            return False
        return bool(self._t.masks[allowed.mask][token_id])

    def advance(self, token_id: int) -> None:
        """Take the token actually sampled; ValueError if ``apply`` (or the FSM, without ``apply``) did
        not allow it. A rejected token leaves the state unchanged."""
        token_id = int(token_id)
        if self._resolved is not None and self._resolved[0] == self._serial:
            allowed = self._resolved[1]
        else:
            allowed = self._allowed(None)
        if not self._is_allowed(allowed, token_id):
            where = "finished" if self._finished else f"{self._step.kind} step {self._index}"
            raise ValueError(f"token {token_id} is not allowed ({where}, after {self._serial} tokens)")
        self._serial += 1
        if self._finished:
            return
        self._take(token_id)

    def _take(self, token_id: int) -> None:
        t, step = self._t, self._step
        if step.kind == "force":
            self._pos += 1
            if token_id == t.vocab.eos_id:
                self._finished = True
            elif self._pos == len(step.tokens):
                self._next()
        elif step.kind == "trie":
            if len(self._node.children) > 1:
                self._branched = True
            self._node = self._node.children[token_id]
            if not self._node.children:
                self._next()
        elif step.kind == "caption":
            self._take_caption(token_id)
        elif token_id == t.vocab.eos_id:  # codes or text
            self._finished = True
        elif step.kind == "codes":
            self._codes += 1

    def _take_caption(self, token_id: int) -> None:
        t = self._t
        if self._line_start and token_id == self._first_of_next():
            self._next()
            self._take(token_id)
            return
        self._cap_count += 1
        if self._cap_count > CAPTION_MAX_TOKENS:  # the forced newline after the cap ends the caption
            self._next()
            return
        if self._line_start:
            self._line_start = self._line_text = False
        if bool(t.masks["content"][token_id]):
            self._line_text = self._line_text or token_id not in t.blank_ids
        else:  # a line-ending token
            self._line_start = True

"""Constrained decoding for the 5 Hz LM: a per-sequence finite-state machine over the chain-of-thought
metadata block, the audio codes after it, or the free text of the understanding task (``lm.md`` §3, §7.4).

:class:`ConstraintTables` (``constraint_tables.py``) derives everything from the tokenizer once;
each sequence gets its own :class:`CotConstraint`, which masks one step's logits (``apply``) and
then takes the sampled token (``advance``). ``apply`` never changes the state, so a caller may call
it more than once per step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from acestep.lm.constraint_tables import (  # noqa: F401  (FIELDS etc. are this module's public names too)
    _LINE_BREAKS,
    _NEG_INF,
    BPM_RANGE,
    CAPTION_MAX_TOKENS,
    FIELDS,
    KEY_SCALES,
    MIN_DURATION_S,
    PHASES,
    TIME_SIGNATURES,
    USER_FIELDS,
    ConstraintTables,
    _Node,
)


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

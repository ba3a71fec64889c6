"""The constrained-decoding FSM for the 5 Hz LM's CoT block, driven by random logits on the tiny tokenizer."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoTokenizer

from acestep.lm.constraints import FIELDS, ConstraintTables, CotConstraint
from acestep.lm.vocab import LmVocab
from acestep.request import VOCAL_LANGUAGES
from acestep.testing import make_tiny_lm

PAD = 7  # extra logits columns beyond the tokenizer, as a padded LM head has
KEY_RE = re.compile(r"^[A-G](#|b|♯|♭)? (major|minor)$")
LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
VALUE = {
    "bpm": r"\d+",
    "caption": r" [^\n]*\S[^\n]*(?:\n [^\n]*)*",  # later lines are indented
    "duration": r"\d+",
    "keyscale": r"[^\n]+",
    "language": r"[^\n]+",
    "timesignature": r"\d+",
}
POOL = {"bpm": "120", "duration": "30", "keyscale": "F♭ minor", "language": "ja", "timesignature": "3"}


@dataclass
class Lm:
    tokenizer: object
    vocab: LmVocab
    tables: ConstraintTables

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def one(self, text: str) -> int:
        (token,) = self.ids(text)
        return token

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _lm(folder) -> Lm:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = LmVocab.from_tokenizer(tokenizer)
    return Lm(tokenizer, vocab, ConstraintTables.build(tokenizer, vocab, max_duration=600))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Lm:
    return _lm(make_tiny_lm(tmp_path_factory.mktemp("lm") / "acestep-5Hz-lm-small", audio_codes=300))


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Lm:
    return _lm(make_tiny_lm(tmp_path_factory.mktemp("lm") / "acestep-5Hz-lm-full", audio_codes=65535))


def _banned_bias(lm: Lm, weight: float) -> torch.Tensor:
    """Logit bias towards everything a CoT must never contain, so a leaky mask shows up at once."""
    bias = torch.zeros(lm.vocab.size + PAD)
    added = list(lm.tokenizer.added_tokens_decoder)
    bias[added] = weight
    bias[lm.one("`")] = weight
    bias[lm.vocab.size :] = weight
    return bias


def _run(
    lm: Lm, c: CotConstraint, g: torch.Generator, logits: Callable[[], torch.Tensor], max_steps: int = 4000
) -> list[int]:
    """Sample from the masked logits until the FSM finishes; pad columns must stay banned throughout."""
    ids: list[int] = []
    while not c.finished:
        assert len(ids) < max_steps, "the FSM never finished"
        out = c.apply(logits())
        assert torch.isneginf(out[lm.vocab.size :]).all()
        token = int(torch.multinomial(torch.softmax(out, -1), 1, generator=g))
        c.advance(token)
        ids.append(token)
    return ids


def _feed(lm: Lm, c: CotConstraint, text: str) -> None:
    for token in lm.ids(text):
        c.advance(token)


def _find(ids: list[int], sub: list[int], start: int = 0) -> int:
    for i in range(start, len(ids) - len(sub) + 1):
        if ids[i : i + len(sub)] == sub:
            return i
    raise AssertionError(f"{sub} not in the output")


def _parse(text: str, fields: list[str]) -> dict[str, str]:
    pattern = (
        "<think>\n"
        + "".join(
            f"{f}:(?P<{f}>{VALUE[f]})\n" if f == "caption" else f"{f}: (?P<{f}>{VALUE[f]})\n" for f in fields
        )
        + "</think>"
    )
    match = re.fullmatch(pattern, text)
    assert match, f"malformed CoT: {text!r}"
    return match.groupdict()


def _check_domains(values: dict[str, str]) -> None:
    checks = {
        "bpm": lambda v: 30 <= int(v) <= 300,
        "duration": lambda v: 10 <= int(v) <= 600,
        "timesignature": lambda v: v in ("2", "3", "4", "6"),
        "keyscale": lambda v: KEY_RE.match(v) is not None,
        "language": lambda v: v in VOCAL_LANGUAGES,
        "caption": lambda v: "`" not in v and not any(ch in v for ch in LINE_BREAKS),
    }
    for name, value in values.items():
        assert checks[name](value), f"{name} = {value!r} is out of its domain"


def _caption_ids(lm: Lm, ids: list[int]) -> list[int]:
    newline = lm.one("\n")
    start = _find(ids, [newline, *lm.ids("caption:")]) + 1 + len(lm.ids("caption:"))
    return ids[start : _find(ids, [newline, *lm.ids("duration:")], start)]


def test_random_cot_sequences_are_well_formed(small: Lm) -> None:
    banned = _banned_bias(small, 4.0)
    newline, space = small.one("\n"), small.one(" ")
    capped = multiline = short = 0
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        use_caption, use_language = seed % 3 != 2, seed % 4 != 3
        metas = {k: v for bit, (k, v) in enumerate(POOL.items()) if (seed * 7) >> bit & 1}
        bias = banned.clone()
        bias[newline] += (0.0, 3.0, 6.0)[seed % 3]  # short lines on some seeds, the cap on others
        bias[space] += (0.0, 4.0)[seed % 2]
        c = CotConstraint(small.tables, user_metas=metas, use_caption=use_caption, use_language=use_language)
        ids = _run(small, c, g, lambda g=g, b=bias: torch.randn(small.vocab.size + PAD, generator=g) + b)

        assert ids[-2:] == [small.vocab.think_end_id, small.vocab.eos_id]  # EOS right after </think>
        fields = [
            f
            for f in FIELDS
            if f != "genres" and (use_caption or f != "caption") and (use_language or f != "language")
        ]
        values = _parse(small.decode(ids[:-1]), fields)
        _check_domains(values)
        for name, value in metas.items():
            if name in values:
                assert values[name] == value
        if use_caption:
            caption = _caption_ids(small, ids)
            assert len(caption) <= 512
            assert not set(caption) & set(small.tokenizer.added_tokens_decoder)  # no codes, no specials
            capped += len(caption) == 512
            multiline += "\n" in values["caption"]
            short += len(caption) < 512
        else:
            assert "caption" not in small.decode(ids)
    assert capped and multiline and short  # every caption ending was exercised


def test_user_metas_are_forced_exactly(small: Lm) -> None:
    metas = {"bpm": "120", "duration": "30", "keyscale": "C♯ minor", "language": "yue", "timesignature": "6"}
    g = torch.Generator().manual_seed(0)
    c = CotConstraint(small.tables, user_metas=metas, use_caption=False)
    ids = []
    while not c.finished:
        out = c.apply(torch.randn(small.vocab.size + PAD, generator=g) + _banned_bias(small, 9.0))
        assert torch.isfinite(out).sum() == 1  # every token is forced
        ids.append(int(out.argmax()))
        c.advance(ids[-1])
    assert small.decode(ids) == (
        "<think>\nbpm: 120\nduration: 30\nkeyscale: C♯ minor\nlanguage: yue\ntimesignature: 6\n"
        "</think><|im_end|>"
    )


def test_numeric_values_outside_their_domain_are_rejected(small: Lm) -> None:
    def at(prefix: str) -> CotConstraint:
        c = CotConstraint(small.tables, use_caption=False)
        _feed(small, c, prefix)
        return c

    for prefix, bad in [
        ("<think>\nbpm: 30", "1"),
        ("<think>\nbpm: 29", "\n"),
        ("<think>\nbpm: 3", "\n"),
        ("<think>\nbpm: 300", "0"),
        ("<think>\nbpm: 120\nduration: 60", "1"),
        ("<think>\nbpm: 120\nduration: 9", "\n"),
        ("<think>\nbpm: 120\nduration:", "0"),
    ]:
        c = at(prefix)
        with pytest.raises(ValueError):
            c.advance(small.one(bad))
    c = at("<think>\nbpm: 300\nduration: 600\nkeyscale: G♭ major\nlanguage: en\ntimesignature: ")
    for bad in ("5", "1", "8", "\n"):
        with pytest.raises(ValueError):
            c.advance(small.one(bad))
    _feed(small, c, "4\n</think>")
    c.advance(small.vocab.eos_id)
    assert c.finished


def test_advance_rejects_a_disallowed_token_and_keeps_its_state(small: Lm) -> None:
    c = CotConstraint(small.tables)
    for bad in (small.vocab.code_ids[0], small.vocab.eos_id, small.vocab.think_end_id, small.one("b")):
        with pytest.raises(ValueError):
            c.advance(bad)
    _feed(small, c, "<think>\nbpm:")
    with pytest.raises(ValueError):
        c.advance(small.one("x"))
    _feed(small, c, " 99\ncaption:")
    with pytest.raises(ValueError):
        c.advance(small.one("`"))
    with pytest.raises(ValueError):
        c.advance(small.one("\n"))  # an empty caption
    _feed(small, c, " ")
    with pytest.raises(ValueError):
        c.advance(small.one("\n"))  # a blank one
    _feed(small, c, "a")
    for bad in (small.one("`"), small.vocab.code_ids[5], small.vocab.think_start_id):
        with pytest.raises(ValueError):
            c.advance(bad)
    # apply() decides a choice; advance() then holds the sequence to it.
    logits = torch.zeros(small.vocab.size)
    logits[small.one("b")] = 5.0
    assert torch.isfinite(c.apply(logits)).sum() > 1
    c.advance(small.one("c"))  # any allowed token may be sampled
    _feed(small, c, "\n")
    logits[small.one(" ")] = 9.0  # the favourite after the newline is a space: the caption continues
    out = c.apply(logits)
    assert torch.isneginf(out[small.one("d")])
    with pytest.raises(ValueError):
        c.advance(small.one("d"))


def test_caption_is_capped_at_512_tokens_then_a_newline(small: Lm) -> None:
    c = CotConstraint(small.tables, use_language=False)
    _feed(small, c, "<think>\nbpm: 90\ncaption:")
    logits = torch.zeros(small.vocab.size)
    logits[small.one(" ")] = 3.0
    logits[small.one("a")] = 5.0
    logits[small.one("\n")] = -50.0
    ids = []
    while not c.finished:
        ids.append(int(c.apply(logits).argmax()))
        c.advance(ids[-1])
    text = small.decode(ids)
    assert text.startswith(" " + "a" * 511 + "\nduration: ")
    assert text.endswith("\n</think><|im_end|>")


def test_caption_ends_when_the_favourite_after_a_newline_is_not_a_space(small: Lm) -> None:
    c = CotConstraint(small.tables)
    _feed(small, c, "<think>\nbpm: 90\ncaption: warm synths\n")
    logits = torch.zeros(small.vocab.size + PAD)
    logits[small.one("x")] = 6.0
    logits[small.one(" ")] = 5.0
    out = c.apply(logits)
    assert torch.isfinite(out).sum() == 1 and int(out.argmax()) == small.one("d")  # "duration:" is forced
    _feed(small, c, "duration:")
    # A space as favourite keeps the caption going (only space-led tokens), as the test above shows.
    c = CotConstraint(small.tables)
    _feed(small, c, "<think>\nbpm: 90\ncaption: warm synths\n  and pads\n")
    logits[small.one(" ")] = 7.0
    out = c.apply(logits)
    assert torch.isfinite(out[small.one(" ")]) and torch.isneginf(out[small.one("x")])
    _feed(small, c, " strings\nduration: 30\nkeyscale: A major\nlanguage: en\ntimesignature: 4\n</think>")
    c.advance(small.vocab.eos_id)
    assert c.finished


def test_language_first_token_is_the_argmax_valid_candidate(small: Lm) -> None:
    metas = {"bpm": "100", "duration": "40", "keyscale": "D minor", "timesignature": "4"}
    firsts = sorted({lang[0] for lang in VOCAL_LANGUAGES})
    first_ids = [small.one(ch) for ch in firsts]
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        c = CotConstraint(small.tables, user_metas=metas, use_caption=False)
        _feed(small, c, "<think>\nbpm: 100\nduration: 40\nkeyscale: D minor\nlanguage: ")
        logits = torch.randn(small.vocab.size + PAD, generator=g)
        logits[small.one("q")] = 50.0  # the overall favourite starts no language
        out = c.apply(logits)
        expected = first_ids[int(logits[first_ids].argmax())]
        assert torch.isfinite(out).sum() == 1 and int(out.argmax()) == expected
        with pytest.raises(ValueError):
            c.advance(next(i for i in first_ids if i != expected))
        c.advance(expected)
        ids = _run(small, c, g, lambda g=g: torch.randn(small.vocab.size + PAD, generator=g))
        language = small.decode([expected, *ids]).split("\n")[0]
        assert language in VOCAL_LANGUAGES


def test_codes_phase_emits_exactly_the_target_and_never_an_invalid_code(full: Lm) -> None:
    names = [f"<|audio_code_{n}|>" for n in range(64000, 65535)]
    invalid = torch.tensor(full.tokenizer.convert_tokens_to_ids(names))
    assert len(set(invalid.tolist())) == 1535 and int(invalid.max()) < full.vocab.size
    bias = torch.zeros(full.vocab.size + PAD)
    bias[invalid] = 12.0  # the invalid codes and EOS are the favourites
    bias[full.vocab.eos_id] = 12.0
    for seed, target in enumerate((1, 25, 60)):
        g = torch.Generator().manual_seed(seed)
        c = CotConstraint(full.tables, phase="codes", target_codes=target)
        ids: list[int] = []
        while not c.finished:
            out = c.apply(torch.randn(full.vocab.size + PAD, generator=g) + bias)
            assert torch.isneginf(out[invalid]).all() and torch.isneginf(out[full.vocab.size :]).all()
            ids.append(int(torch.multinomial(torch.softmax(out, -1), 1, generator=g)))
            c.advance(ids[-1])
        assert ids[-1] == full.vocab.eos_id and c.codes_emitted == target and len(ids) == target + 1
        codes = re.findall(r"<\|audio_code_(\d+)\|>", full.decode(ids))
        assert len(codes) == target and max(map(int, codes)) <= 63999
    with pytest.raises(ValueError):
        CotConstraint(full.tables, phase="codes", target_codes=3).advance(int(invalid[0]))
    # No target: EOS may come at any point; target 0: EOS at once.
    out = CotConstraint(full.tables, phase="codes").apply(torch.zeros(full.vocab.size))
    assert torch.isfinite(out[full.vocab.eos_id]) and torch.isfinite(out).sum() == 64001
    assert torch.isneginf(out[invalid]).all()
    c = CotConstraint(full.tables, phase="codes", target_codes=0)
    assert torch.isfinite(c.apply(torch.zeros(full.vocab.size))).sum() == 1
    c.advance(full.vocab.eos_id)
    assert c.finished and c.codes_emitted == 0


def test_cot_without_stop_goes_on_to_the_codes(small: Lm) -> None:
    g = torch.Generator().manual_seed(3)
    metas = {"bpm": "120", "duration": "30", "keyscale": "C major", "language": "en", "timesignature": "4"}
    c = CotConstraint(
        small.tables, user_metas=metas, use_caption=False, target_codes=10, stop_at_reasoning=False
    )
    with pytest.raises(ValueError):
        c.advance(small.vocab.code_ids[0])  # no codes before the CoT
    ids = _run(small, c, g, lambda: torch.randn(small.vocab.size + PAD, generator=g) + _banned_bias(small, 4))
    head = "<think>\nbpm: 120\nduration: 30\nkeyscale: C major\nlanguage: en\ntimesignature: 4\n</think>\n"
    text = small.decode(ids)
    assert text.startswith(head) and text.endswith("<|im_end|>")
    assert re.fullmatch(r"(<\|audio_code_\d+\|>){10}", text[len(head) : -len("<|im_end|>")])
    assert c.codes_emitted == 10


def test_understand_phase_never_emits_codes(small: Lm) -> None:
    codes = set(small.vocab.code_ids)
    bias = _banned_bias(small, 6.0)  # codes are the favourites
    for seed in range(8):
        g = torch.Generator().manual_seed(100 + seed)
        c = CotConstraint(small.tables, phase="understand", user_metas={"bpm": "120"})
        steps = iter(range(10**6))

        def logits(g=g, steps=steps) -> torch.Tensor:
            row = torch.randn(small.vocab.size + PAD, generator=g) + bias
            row[small.vocab.eos_id] = -4.0 + next(steps) / 100  # ends within a few hundred tokens
            return row

        ids = _run(small, c, g, logits)
        end = ids.index(small.vocab.think_end_id)
        _check_domains(_parse(small.decode(ids[: end + 1]), [f for f in FIELDS if f != "genres"]))
        assert not codes & set(ids) and ids[-1] == small.vocab.eos_id
        assert small.vocab.eos_id not in ids[:-1]
    # User values are not injected when understanding: bpm stays open.
    c = CotConstraint(small.tables, phase="understand", user_metas={"bpm": "120"})
    _feed(small, c, "<think>\nbpm: ")
    assert torch.isfinite(c.apply(torch.zeros(small.vocab.size))).sum() > 1


def test_apply_checks_width_and_leaves_the_input_alone(small: Lm) -> None:
    c = CotConstraint(small.tables)
    logits = torch.randn(small.vocab.size + PAD)
    before = logits.clone()
    out = c.apply(logits)
    assert torch.equal(logits, before) and out.dtype == torch.float32
    assert torch.isfinite(out).sum() == 1 and int(out.argmax()) == small.vocab.think_start_id
    with pytest.raises(ValueError):
        c.apply(torch.zeros(small.vocab.size - 1))
    with pytest.raises(ValueError):
        CotConstraint(small.tables, user_metas={"caption": "x"})
    with pytest.raises(ValueError):
        CotConstraint(small.tables, phase="lyrics")

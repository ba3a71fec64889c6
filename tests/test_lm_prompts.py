"""The LM prompts, rendered with the tiny LM's real tokenizer and chat template (ChatML, as Qwen3).
Exact strings as docs/lm.md states them (upstream's)."""

from __future__ import annotations

import pytest

from acestep.lm.cot import serialize_cot
from acestep.lm.prompts import (
    FORMAT_INSTRUCTION,
    GENERATE_INSTRUCTION,
    NO_USER_INPUT,
    SAMPLE_INSTRUCTION,
    UNDERSTAND_INSTRUCTION,
    format_prompt,
    phase1_prompt,
    phase2_prompt,
    sample_prompt,
    unconditional_prompt,
    understand_prompt,
)

GEN_SYSTEM = (
    "<|im_start|>system\n# Instruction\n"
    "Generate audio semantic tokens based on the given conditions:\n\n<|im_end|>\n"
)
ASSISTANT = "<|im_start|>assistant\n"
COT = "<think>\nbpm: 120\ncaption: warm jazz\nduration: 60\n</think>"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from acestep.testing import make_tiny_lm

    folder = make_tiny_lm(tmp_path_factory.mktemp("lm"), audio_codes=16)
    return AutoTokenizer.from_pretrained(folder)


def _user(content: str) -> str:
    return f"<|im_start|>user\n{content}<|im_end|>\n"


def test_instruction_sentences_are_exact() -> None:
    assert GENERATE_INSTRUCTION == "Generate audio semantic tokens based on the given conditions:"
    assert UNDERSTAND_INSTRUCTION == (
        "Understand the given musical conditions and describe the audio semantics accordingly:"
    )
    assert SAMPLE_INSTRUCTION == (
        "Expand the user's input into a more detailed and specific musical description:"
    )
    assert FORMAT_INSTRUCTION == (
        "Format the user's input into a more detailed and specific musical description:"
    )
    assert NO_USER_INPUT == "NO USER INPUT"


def test_phase1(tokenizer) -> None:
    prompt = phase1_prompt(tokenizer, "warm jazz", "[Verse]\nla la")
    assert prompt == GEN_SYSTEM + _user("# Caption\nwarm jazz\n\n# Lyric\n[Verse]\nla la\n") + ASSISTANT


def test_phase2_continues_the_assistant_turn(tokenizer) -> None:
    prompt = phase2_prompt(tokenizer, "warm jazz", "[Instrumental]", COT)
    head = GEN_SYSTEM + _user("# Caption\nwarm jazz\n\n# Lyric\n[Instrumental]\n") + ASSISTANT
    assert prompt == head + COT + "\n"
    # The turn stays open: the model's next tokens are audio codes, not a new turn.
    assert not prompt.rstrip().endswith("<|im_end|>")
    assert prompt.count("<|im_end|>") == 2


def test_phase2_does_not_double_the_newline(tokenizer) -> None:
    assert phase2_prompt(tokenizer, "c", "l", COT + "\n") == phase2_prompt(tokenizer, "c", "l", COT)


def test_phase2_with_serialized_cot(tokenizer) -> None:
    cot = serialize_cot({"bpm": 90, "timesignature": "4/4"})
    prompt = phase2_prompt(tokenizer, "c", "l", cot)
    assert prompt.endswith(ASSISTANT + "<think>\nbpm: 90\ntimesignature: 4\n</think>\n")


def test_phase2_tokenizes_think_tags_as_single_tokens(tokenizer) -> None:
    ids = tokenizer(phase2_prompt(tokenizer, "c", "l", COT), add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("\u010a")  # byte-level "\n"
    assert ids[-2] == tokenizer.convert_tokens_to_ids("</think>")
    assert tokenizer.convert_tokens_to_ids("<think>") in ids


@pytest.mark.parametrize("negative", ["", "   ", NO_USER_INPUT])
def test_unconditional_phase1_without_meaningful_negative(tokenizer, negative: str) -> None:
    prompt = unconditional_prompt(tokenizer, "[Verse]\nla", negative, None)
    assert prompt == GEN_SYSTEM + _user("# Lyric\n[Verse]\nla\n") + ASSISTANT


def test_unconditional_phase1_with_negative(tokenizer) -> None:
    prompt = unconditional_prompt(tokenizer, "[Verse]\nla", "harsh noise, distortion", None)
    expected_user = "# Caption\nharsh noise, distortion\n\n# Lyric\n[Verse]\nla\n"
    assert prompt == GEN_SYSTEM + _user(expected_user) + ASSISTANT


def test_unconditional_phase2_uses_an_empty_think_block(tokenizer) -> None:
    prompt = unconditional_prompt(tokenizer, "la", NO_USER_INPUT, COT)
    assert prompt == GEN_SYSTEM + _user("# Lyric\nla\n") + ASSISTANT + "<think>\n</think>\n"
    assert "bpm" not in prompt
    with_negative = unconditional_prompt(tokenizer, "la", "lo-fi", COT)
    expected_user = "# Caption\nlo-fi\n\n# Lyric\nla\n"
    assert with_negative == GEN_SYSTEM + _user(expected_user) + ASSISTANT + "<think>\n</think>\n"


def test_unconditional_pairs_with_conditional_up_to_the_user_turn(tokenizer) -> None:
    cond = phase2_prompt(tokenizer, "warm jazz", "la", COT)
    uncond = unconditional_prompt(tokenizer, "la", "cold metal", COT)
    assert cond.replace(COT, "<think>\n</think>").replace("warm jazz", "cold metal") == uncond


def test_understand(tokenizer) -> None:
    codes = "<|audio_code_3|><|audio_code_15|>"
    prompt = understand_prompt(tokenizer, codes)
    system = (
        "<|im_start|>system\n# Instruction\nUnderstand the given musical conditions and describe "
        "the audio semantics accordingly:\n\n<|im_end|>\n"
    )
    assert prompt == system + _user(codes) + ASSISTANT


SAMPLE_SYSTEM = (
    "<|im_start|>system\n# Instruction\nExpand the user's input into a more detailed and specific "
    "musical description:\n\n<|im_end|>\n"
)


@pytest.mark.parametrize(
    ("query", "instrumental", "content"),
    [
        ("rainy night city pop", False, "rainy night city pop\n\ninstrumental: false"),
        ("epic trailer", True, "epic trailer\n\ninstrumental: true"),
        ("", True, "NO USER INPUT\n\ninstrumental: true"),
        ("  \n", False, "NO USER INPUT\n\ninstrumental: false"),
    ],
)
def test_sample(tokenizer, query: str, instrumental: bool, content: str) -> None:
    assert sample_prompt(tokenizer, query, instrumental) == SAMPLE_SYSTEM + _user(content) + ASSISTANT


FORMAT_SYSTEM = (
    "<|im_start|>system\n# Instruction\nFormat the user's input into a more detailed and specific "
    "musical description:\n\n<|im_end|>\n"
)


@pytest.mark.parametrize(
    ("caption", "lyrics", "content"),
    [
        ("sad piano", "[Verse]\ntears", "# Caption\nsad piano\n\n# Lyric\n[Verse]\ntears"),
        ("", "", "# Caption\nNO USER INPUT\n\n# Lyric\n[Instrumental]"),
        ("  ", "words", "# Caption\nNO USER INPUT\n\n# Lyric\nwords"),
        ("ambient", " ", "# Caption\nambient\n\n# Lyric\n[Instrumental]"),
    ],
)
def test_format(tokenizer, caption: str, lyrics: str, content: str) -> None:
    assert format_prompt(tokenizer, caption, lyrics) == FORMAT_SYSTEM + _user(content) + ASSISTANT

"""The LM's CoT block: parsing completions, re-serialising metadata for phase 2, and the mapping
onto request fields. Rules as docs/lm.md states them."""

from __future__ import annotations

import pytest

from acestep import GenerationRequest
from acestep.lm.cot import CODE_TOKEN_RE, LmOutput, metas_for_dit, parse_output, serialize_cot

LONG_CAPTION = (
    "An upbeat synthwave track with shimmering analog pads, a driving bassline, gated reverb drums "
    "and a soaring lead melody that builds to a euphoric chorus"
)
METAS = {
    "bpm": 120,
    "caption": "Dreamy lo-fi hip hop with vinyl crackle",
    "duration": 95,
    "keyscale": "F# minor",
    "language": "en",
    "timesignature": "6/8",
}


def _codes(*numbers: int) -> str:
    return "".join(f"<|audio_code_{n}|>" for n in numbers)


# --------------------------------------------------------------------------- parse_output


def test_well_formed_cot_and_codes() -> None:
    text = (
        "<think>\nbpm: 120\ncaption: Dreamy lo-fi hip hop\nduration: 95\ngenres: lofi, chill\n"
        "keyscale: F# minor\nlanguage: en\ntimesignature: 4\n</think>\n" + _codes(5, 70000, 0) + "<|im_end|>"
    )
    out = parse_output(text)
    assert isinstance(out, LmOutput)
    assert out.metas == {
        "bpm": 120,
        "caption": "Dreamy lo-fi hip hop",
        "duration": 95,
        "genres": "lofi, chill",
        "keyscale": "F# minor",
        "language": "en",
        "timesignature": "4",
    }
    assert out.codes == [5, 70000, 0]  # raw: clamping is the DiT side's job
    assert out.lyrics == ""  # code tokens after the block are codes, not lyrics
    assert out.text == text


def test_understand_output_lyrics_heading_and_im_end() -> None:
    text = "<think>\nbpm: 90\nlanguage: ja\n</think>\n\n# Lyrics\n[Verse]\nHello: world\n<|im_end|>"
    out = parse_output(text)
    assert out.metas == {"bpm": 90, "language": "ja"}
    assert out.lyrics == "[Verse]\nHello: world"
    assert out.codes == []
    singular = parse_output("<think>\nbpm: 90\n</think>\n# Lyric\n[Chorus]\nla la")
    assert singular.lyrics == "[Chorus]\nla la"


def test_heading_only_removed_at_the_start() -> None:
    out = parse_output("<think>\n</think>\n[Verse]\nline\n# Lyrics\nmore")
    assert out.lyrics == "[Verse]\nline\n# Lyrics\nmore"
    assert out.metas == {}


def test_indented_continuation_lines_join_the_caption() -> None:
    text = (
        "<think>\nbpm: 128\ncaption: A bright pop song with\n  punchy drums and\n\tsparkling synths\n"
        "duration: 180\n</think>"
    )
    out = parse_output(text)
    assert out.metas["caption"] == "A bright pop song with punchy drums and sparkling synths"
    assert out.metas["bpm"] == 128
    assert out.metas["duration"] == 180


def test_keys_are_lower_cased_and_unknown_keys_dropped() -> None:
    out = parse_output("<think>\nBPM: 100\nMood: happy\nKeyScale:  C major \nfoo: bar\n</think>")
    assert out.metas == {"bpm": 100, "keyscale": "C major"}


def test_non_numeric_bpm_and_duration_stay_strings() -> None:
    out = parse_output("<think>\nbpm: fast\nduration: 30.5\n</think>")
    assert out.metas == {"bpm": "fast", "duration": "30.5"}
    assert metas_for_dit(out.metas) == {"audio_duration": 30.5}


def test_lines_starting_with_angle_bracket_are_skipped() -> None:
    out = parse_output("<think>\n<note>caption: not this</note>\ncaption: this one\n</think>")
    assert out.metas == {"caption": "this one"}


def test_reasoning_block_is_accepted() -> None:
    out = parse_output("<reasoning>\nbpm: 70\nlanguage: fr\n</reasoning>\n# Lyric\nBonjour")
    assert out.metas == {"bpm": 70, "language": "fr"}
    assert out.lyrics == "Bonjour"


def test_only_the_first_block_is_metadata() -> None:
    out = parse_output("<think>\nbpm: 60\n</think>\n<think>\nbpm: 61\n</think>")
    assert out.metas == {"bpm": 60}


def test_missing_close_tag_reads_until_the_first_code() -> None:
    text = "<think>\nbpm: 140\ncaption: cut off mid\n  block\nkeyscale: D minor" + _codes(1, 2)
    out = parse_output(text)
    assert out.metas == {"bpm": 140, "caption": "cut off mid block", "keyscale": "D minor"}
    assert out.codes == [1, 2]
    assert out.lyrics == ""


def test_truncated_block_with_value_on_the_opening_line() -> None:
    out = parse_output("<think>bpm: 99\nduration: 4")
    assert out.metas == {"bpm": 99, "duration": 4}


def test_no_block_reads_the_text_before_the_first_code() -> None:
    text = "bpm: 110\ncaption: x" + _codes(3) + "\nlanguage: de\n" + _codes(4)
    out = parse_output(text)
    assert out.metas == {"bpm": 110, "caption": "x"}  # language comes after a code: not metadata
    assert out.codes == [3, 4]


def test_close_tag_without_opener_splits_metadata_from_lyrics() -> None:
    out = parse_output("bpm: 85\nlanguage: es\n</think>\n# Lyrics\nHola")
    assert out.metas == {"bpm": 85, "language": "es"}
    assert out.lyrics == "Hola"


def test_codes_anywhere_are_collected_in_order() -> None:
    text = "<think>\nbpm: 100" + _codes(9) + "\n</think>" + _codes(8, 7) + "tail" + _codes(6)
    out = parse_output(text)
    assert out.codes == [9, 8, 7, 6]
    assert out.metas == {"bpm": 100}
    assert out.lyrics == "tail"


@pytest.mark.parametrize(
    "text",
    ["", "garbage without structure", "<think>", "</think>", ":::\n  :\n<", "<|audio_code_x|>", "\x00\n\t:"],
)
def test_garbage_never_raises(text: str) -> None:
    out = parse_output(text)
    assert out.metas == {}
    assert out.codes == []
    assert out.text == text


def test_unindented_line_without_colon_ends_the_value() -> None:
    out = parse_output("<think>\ncaption: first\nstray words\n  indented orphan\nbpm: 77\n</think>")
    assert out.metas == {"caption": "first", "bpm": 77}


def test_empty_values_are_dropped() -> None:
    assert parse_output("<think>\ncaption:\nbpm:   \nlanguage: en\n</think>").metas == {"language": "en"}


def test_code_token_re() -> None:
    assert CODE_TOKEN_RE.findall("<|audio_code_12|>x<|audio_code_|><|audio_code_003|>") == ["12", "003"]


# --------------------------------------------------------------------------- serialize_cot


def test_serialize_exact_block() -> None:
    cot = serialize_cot({**METAS, "genres": "lofi", "timesignature": "4/4", "bpm": "120"})
    assert cot == (
        "<think>\nbpm: 120\ncaption: Dreamy lo-fi hip hop with vinyl crackle\nduration: 95\n"
        "keyscale: F# minor\nlanguage: en\ntimesignature: 4\n</think>"
    )


def test_serialize_drops_empty_and_none_and_sorts() -> None:
    cot = serialize_cot({"timesignature": "3/4", "language": None, "caption": "  ", "duration": "60"})
    assert cot == "<think>\nduration: 60\ntimesignature: 3\n</think>"
    assert serialize_cot({"genres": "rock"}) == "<think>\n</think>"


def test_serialize_keeps_non_quarter_signature_and_unicode() -> None:
    cot = serialize_cot({"timesignature": "6/8", "caption": "Chanson d'été, très douce"})
    assert cot == "<think>\ncaption: Chanson d'été, très douce\ntimesignature: 6/8\n</think>"


def test_long_caption_wraps_and_parses_back_to_one_line() -> None:
    cot = serialize_cot({"bpm": 120, "caption": LONG_CAPTION})
    body = cot.split("\n")
    assert body[0] == "<think>" and body[-1] == "</think>"
    caption_lines = [line for line in body if line.startswith("  ")]
    assert caption_lines, "PyYAML's default width should wrap a caption this long"
    assert all(len(line) < len(LONG_CAPTION) for line in body)
    assert parse_output(cot).metas == {"bpm": 120, "caption": LONG_CAPTION}


@pytest.mark.parametrize(
    "metas",
    [
        METAS,
        {"bpm": 60, "caption": LONG_CAPTION, "language": "no"},  # 'no' is quoted by YAML
        {"caption": "Intro: soft piano, then drums: loud " * 4, "keyscale": "Bb major"},
        {"caption": "123", "duration": 30},
        {"caption": "雨の夜のシティポップ", "language": "ja", "timesignature": "6/8"},
    ],
)
def test_round_trip(metas: dict) -> None:
    expected = {k: v.strip() if isinstance(v, str) else v for k, v in metas.items()}
    assert parse_output(serialize_cot(metas) + _codes(1)).metas == expected


def test_round_trip_normalises_quarter_signatures() -> None:
    assert parse_output(serialize_cot({"timesignature": "4/4"})).metas == {"timesignature": "4"}


# --------------------------------------------------------------------------- metas_for_dit


def test_metas_for_dit_maps_names() -> None:
    assert metas_for_dit(METAS) == {
        "bpm": 120,
        "caption": "Dreamy lo-fi hip hop with vinyl crackle",
        "audio_duration": 95.0,
        "key_scale": "F# minor",
        "vocal_language": "en",
        "time_signature": "6",
    }


def test_metas_for_dit_output_is_a_valid_request() -> None:
    request = GenerationRequest(**metas_for_dit(parse_output(serialize_cot(METAS)).metas))
    assert request.bpm == 120
    assert request.time_signature == "6"
    assert request.vocal_language == "en"
    assert request.audio_duration == 95.0


@pytest.mark.parametrize(
    ("metas", "expected"),
    [
        ({"bpm": 29}, {}),
        ({"bpm": 301}, {}),
        ({"bpm": 30}, {"bpm": 30}),
        ({"bpm": "300"}, {"bpm": 300}),
        ({"bpm": "120.5"}, {}),
        ({"bpm": "fast"}, {}),
        ({"bpm": True}, {}),
        ({"keyscale": "H major"}, {}),
        ({"keyscale": "C"}, {}),
        ({"keyscale": "Eb minor"}, {"key_scale": "Eb minor"}),
        ({"keyscale": "C♯ major"}, {"key_scale": "C♯ major"}),
        ({"timesignature": "5/4"}, {}),
        ({"timesignature": "7"}, {}),
        ({"timesignature": 3}, {"time_signature": "3"}),
        ({"timesignature": "4/4"}, {"time_signature": "4"}),
        ({"timesignature": "2/4"}, {"time_signature": "2"}),
        ({"duration": 9}, {}),
        ({"duration": 601}, {}),
        ({"duration": 10}, {"audio_duration": 10.0}),
        ({"duration": "600"}, {"audio_duration": 600.0}),
        ({"duration": "nan"}, {}),
        ({"duration": "inf"}, {}),
        ({"language": "klingon"}, {}),
        ({"language": "EN"}, {"vocal_language": "en"}),
        ({"language": "unknown"}, {"vocal_language": "unknown"}),
        ({"caption": "   "}, {}),
        ({"caption": 42}, {}),
        ({"genres": "rock"}, {}),
        ({"bpm": "N/A", "keyscale": "N/A", "timesignature": "n/a", "language": "N/A"}, {}),
        ({"caption": "N/A"}, {}),
        ({}, {}),
    ],
)
def test_metas_for_dit_domains(metas: dict, expected: dict) -> None:
    assert metas_for_dit(metas) == expected


def test_metas_for_dit_does_not_mutate_its_input() -> None:
    metas = {"bpm": "N/A", "caption": " spaced "}
    metas_for_dit(metas)
    assert metas == {"bpm": "N/A", "caption": " spaced "}

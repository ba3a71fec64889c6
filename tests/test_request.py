"""GenerationRequest validation, seeds, instructions, prompt strings and timestep schedules.

Exact strings and tables are upstream's (docs/tasks.md).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from acestep import GenerationRequest
from acestep.checkpoints import detect_variant
from acestep.engine.prompts import caption_prompt, lyric_prompt, metas_string
from acestep.engine.schedules import (
    TURBO_VALID_TIMESTEPS,
    build_schedule,
    linear_schedule,
    snap_turbo_shift,
    turbo_table,
)
from acestep.engine.seeds import SEED_SPACE, resolve_seeds
from acestep.tasks import MAX_TRACK_NAME_CHARS, TRACK_NAMES, build_instruction, track_notes, with_colon

SRC = "song.wav"  # request validation does not open files


def _error_text(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(exc.value)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "needles"),
    [
        ({"task_type": "remix"}, ["task_type", "unknown task_type 'remix'", "text2music"]),
        # Free track names (issue 21, upstream's rule) are bounded and printable; "kazoo" now runs.
        (
            {"task_type": "lego", "src_audio": SRC, "track_name": "k" * (MAX_TRACK_NAME_CHARS + 1)},
            ["track_name", f"at most {MAX_TRACK_NAME_CHARS} characters"],
        ),
        ({"task_type": "lego", "src_audio": SRC, "track_name": "pia\nno"}, ["track_name", "printable"]),
        ({"track_classes": "drums,the\x00remin"}, ["track_classes", "printable"]),
        ({"bpm": 29}, ["bpm", "between 30 and 300", "29"]),
        ({"bpm": 301}, ["bpm", "between 30 and 300", "301"]),
        ({"bpm": 999}, ["bpm", "between 30 and 300", "999"]),
        ({"key_scale": "H major"}, ["key_scale", "'H major'", "C major"]),
        ({"key_scale": "C"}, ["key_scale", "'C'"]),
        ({"key_scale": "C dorian"}, ["key_scale", "'C dorian'"]),
        ({"time_signature": "5/4"}, ["time_signature", "'5/4'", "2, 3, 4, 6"]),
        ({"time_signature": "7"}, ["time_signature", "'7'"]),
        ({"vocal_language": "klingon"}, ["vocal_language", "unknown vocal_language 'klingon'"]),
        ({"audio_duration": 601}, ["audio_duration", "at most 600 s", "601"]),
        ({"batch_size": 0}, ["batch_size", "greater than or equal to 1"]),
        ({"batch_size": 9}, ["batch_size", "less than or equal to 8"]),
        ({"inference_steps": 0}, ["inference_steps", "greater than or equal to 1"]),
        (
            {"task_type": "lego", "src_audio": SRC, "audio_code_string": "<|audio_code_5|>"},
            ["lego", "audio codes cannot replace the source"],
        ),
        ({"task_type": "repaint"}, ["task 'repaint' requires src_audio"]),
        ({"task_type": "lego", "track_name": "vocals"}, ["task 'lego' requires src_audio"]),
        ({"task_type": "extract"}, ["task 'extract' requires src_audio"]),
        (
            {"task_type": "repaint", "src_audio": SRC, "repainting_start": 5.0, "repainting_end": 5.0},
            ["repainting_start (5.0) must be before repainting_end (5.0)"],
        ),
        (
            {"task_type": "repaint", "src_audio": SRC, "repainting_start": 8.0, "repainting_end": 2.0},
            ["repainting_start (8.0) must be before repainting_end (2.0)"],
        ),
        (
            {"cfg_interval_start": 0.8, "cfg_interval_end": 0.2},
            ["cfg_interval_start must be <= cfg_interval_end"],
        ),
        ({"audio_format": "ogg"}, ["audio_format", "flac, wav, wav32, mp3", "'ogg'"]),
        ({"seed": "abc"}, ["seed", "integer or a comma-separated list", "'abc'"]),
        ({"seed": "1;2"}, ["seed", "comma-separated"]),
        ({"timesteps": [0.5, 0.9]}, ["timesteps", "non-increasing"]),
        ({"timesteps": [1.5, 0.5]}, ["timesteps", "[0, 1]"]),
        ({"tempo": 120}, ["tempo", "Extra inputs are not permitted"]),
    ],
)
def test_bad_input_is_rejected_with_reason(fields: dict, needles: list[str]) -> None:
    with pytest.raises(ValidationError) as exc:
        GenerationRequest(**fields)
    text = _error_text(exc)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


def test_bad_assignment_is_rejected() -> None:
    request = GenerationRequest()
    with pytest.raises(ValidationError, match="bpm must be between 30 and 300"):
        request.bpm = 5


@pytest.mark.parametrize("bpm", [30, 120, 300, "120", 120.0])
def test_bpm_in_range_accepted(bpm: object) -> None:
    assert GenerationRequest(bpm=bpm).bpm == int(float(bpm))  # type: ignore[arg-type]


@pytest.mark.parametrize("empty", [None, "", 0, "N/A"])
def test_bpm_unknown_is_none(empty: object) -> None:
    assert GenerationRequest(bpm=empty).bpm is None


def test_duration_limit_is_inclusive() -> None:
    assert GenerationRequest(audio_duration=600).audio_duration == 600.0


@pytest.mark.parametrize("batch", [1, 8])
def test_batch_limits_inclusive(batch: int) -> None:
    assert GenerationRequest(batch_size=batch).batch_size == batch


def test_defaults() -> None:
    request = GenerationRequest()
    assert request.task_type == "text2music"
    assert request.batch_size == 2
    assert request.inference_steps == 8
    assert request.audio_duration == -1.0
    assert request.vocal_language == "unknown"
    assert request.audio_format == "flac"
    assert request.repainting_start == 0.0 and request.repainting_end == -1.0


def test_aliases() -> None:
    request = GenerationRequest(
        prompt="warm piano",
        keyscale="F# minor",
        duration=42.5,
        num_inference_steps=20,
        timesignature="3/4",
        language="EN",
        audio_codes="",
        src_audio_path=SRC,
        complete_track_classes="Drums, bass",
        task_type="complete",
    )
    assert request.caption == "warm piano"
    assert request.key_scale == "F# minor"
    assert request.audio_duration == 42.5
    assert request.inference_steps == 20
    assert request.time_signature == "3"
    assert request.vocal_language == "en"
    assert request.src_audio == SRC
    assert request.track_classes == ["drums", "bass"]


def test_aliases_via_model_validate() -> None:
    request = GenerationRequest.model_validate(
        {"prompt": "x", "keyscale": "Bb major", "duration": 30, "num_inference_steps": 12}
    )
    assert (request.caption, request.key_scale, request.audio_duration, request.inference_steps) == (
        "x",
        "Bb major",
        30.0,
        12,
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [("4/4", "4"), ("3/4", "3"), ("2/4", "2"), ("6/8", "6"), ("4", "4"), (4, "4"), ("", ""), ("N/A", "")],
)
def test_time_signature_normalised(given: object, stored: str) -> None:
    assert GenerationRequest(time_signature=given).time_signature == stored


@pytest.mark.parametrize("key", ["C major", "F# minor", "Bb major", "c MINOR", "E♭ major", "  A minor  "])
def test_key_scale_accepted(key: str) -> None:
    assert GenerationRequest(key_scale=key).key_scale == key.strip()


def test_task_and_track_case_insensitive() -> None:
    request = GenerationRequest(task_type=" LEGO ", track_name="Vocals", src_audio=SRC)
    assert request.task_type == "lego"
    assert request.track_name == "vocals"


def test_every_track_name_accepted() -> None:
    for name in TRACK_NAMES:
        assert GenerationRequest(task_type="lego", track_name=name, src_audio=SRC).track_name == name


def test_audio_format_normalised() -> None:
    assert GenerationRequest(audio_format=" WAV ").audio_format == "wav"


def test_cover_with_codes_needs_no_source() -> None:
    request = GenerationRequest(task_type="cover", audio_code_string="<|audio_code_1|>")
    assert request.effective_task == "cover"


def test_repaint_open_end_accepted() -> None:
    request = GenerationRequest(task_type="repaint", src_audio=SRC, repainting_start=3.0)
    assert request.repainting_end == -1.0


def test_effective_task() -> None:
    assert GenerationRequest(audio_code_string="<|audio_code_12|><|audio_code_7|>").effective_task == "cover"
    assert GenerationRequest(audio_code_string="   ").effective_task == "text2music"
    assert GenerationRequest().effective_task == "text2music"
    assert GenerationRequest(task_type="repaint", src_audio=SRC).effective_task == "repaint"


def test_instrumental_lyrics() -> None:
    assert GenerationRequest(instrumental=True).lyrics_text == "[Instrumental]"
    assert GenerationRequest(instrumental=True, lyrics="la la").lyrics_text == "la la"
    assert GenerationRequest(lyrics="").lyrics_text == ""


# --------------------------------------------------------------------------- seeds


def test_wants_random_seed_semantics() -> None:
    assert GenerationRequest().wants_random_seed is True
    assert GenerationRequest(seed=-1).wants_random_seed is True
    assert GenerationRequest(seed=42).wants_random_seed is False
    assert GenerationRequest(seed="1,2").wants_random_seed is False
    assert GenerationRequest(seed=42, use_random_seed=True).wants_random_seed is True
    assert GenerationRequest(use_random_seed=False).wants_random_seed is False
    assert GenerationRequest(seed=0).wants_random_seed is False


def test_seed_values_parsed() -> None:
    assert GenerationRequest(seed=3.0).seed == 3
    assert GenerationRequest(seed="7").seed == "7"
    assert GenerationRequest(seed=None).seed == -1


def test_int_seed_counts_up() -> None:
    assert resolve_seeds(10, 3, False) == [10, 11, 12]
    assert resolve_seeds(0, 1, False) == [0]


def test_seed_wraps_at_seed_space() -> None:
    assert resolve_seeds(SEED_SPACE - 1, 2, False) == [SEED_SPACE - 1, 0]


def test_comma_list_then_continues() -> None:
    assert resolve_seeds("1,2", 3, False) == [1, 2, 3]
    assert resolve_seeds("5, 9, 4", 3, False) == [5, 9, 4]
    assert resolve_seeds("5,9,4", 2, False) == [5, 9]
    assert resolve_seeds("8,", 2, False) == [8, 9]


def _random_ok(values: list[int]) -> bool:
    return all(isinstance(v, int) and 0 <= v < SEED_SPACE for v in values)


def test_negative_entries_are_random() -> None:
    first = resolve_seeds("-1,7", 2, False)
    assert first[1] == 7 and _random_ok(first)
    draws = [resolve_seeds(-1, 1, False)[0] for _ in range(4)]
    assert _random_ok(draws)
    assert len(set(draws)) > 1  # 4 draws from 2**32 values; a collision of all four is impossible in practice


def test_use_random_seed_ignores_seed() -> None:
    seeds = resolve_seeds(5, 3, True)
    assert len(seeds) == 3 and _random_ok(seeds)
    assert seeds != [5, 6, 7]


def test_request_seed_to_seeds() -> None:
    request = GenerationRequest(seed=100, batch_size=3)
    assert resolve_seeds(request.seed, request.batch_size, request.wants_random_seed) == [100, 101, 102]


# --------------------------------------------------------------------------- instructions


@pytest.mark.parametrize(
    ("task", "track", "classes", "expected"),
    [
        ("lego", "vocals", None, "Generate the VOCALS track based on the audio context:"),
        ("lego", "backing_vocals", None, "Generate the BACKING_VOCALS track based on the audio context:"),
        ("lego", None, None, "Generate the track based on the audio context:"),
        ("extract", "guitar", None, "Extract the GUITAR track from the audio:"),
        ("extract", None, None, "Extract the track from the audio:"),
        ("complete", None, ["drums", "bass"], "Complete the input track with DRUMS | BASS:"),
        ("complete", None, ["strings"], "Complete the input track with STRINGS:"),
        ("complete", None, None, "Complete the input track:"),
        ("complete", None, [], "Complete the input track:"),
        ("text2music", None, None, "Fill the audio semantic mask based on the given conditions:"),
        ("text2music", "vocals", None, "Fill the audio semantic mask based on the given conditions:"),
        ("repaint", None, None, "Repaint the mask area based on the given conditions:"),
        ("cover", None, None, "Generate audio semantic tokens based on the given conditions:"),
        ("no-such-task", None, None, "Fill the audio semantic mask based on the given conditions:"),
    ],
)
def test_build_instruction(task: str, track: str | None, classes: list[str] | None, expected: str) -> None:
    assert build_instruction(task, track, classes) == expected


def test_with_colon() -> None:
    assert with_colon("Do this") == "Do this:"
    assert with_colon("Do this:") == "Do this:"


# --------------------------------------------------------------------------- prompts


def test_metas_string_known() -> None:
    assert metas_string(120, "4", "C major", 30.0) == (
        "- bpm: 120\n- timesignature: 4\n- keyscale: C major\n- duration: 30 seconds\n"
    )


def test_metas_string_unknown() -> None:
    expected = "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"
    assert metas_string(None, "", "", None) == expected
    assert metas_string(0, "  ", " ", -1.0) == expected
    assert metas_string(None, "", "", 0.0) == expected


def test_metas_duration_truncates() -> None:
    assert metas_string(90, "3", "A minor", 12.9).endswith("- duration: 12 seconds\n")
    assert metas_string(90, "3", "A minor", 215.5).endswith("- duration: 215 seconds\n")


def test_caption_prompt_spec_example() -> None:
    metas = metas_string(120, "4", "C major", 30)
    expected = (
        "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
        "# Caption\nA calm piano melody\n\n"
        "# Metas\n- bpm: 120\n- timesignature: 4\n- keyscale: C major\n- duration: 30 seconds\n"
        "<|endoftext|>\n"
    )
    assert caption_prompt(build_instruction("text2music"), "A calm piano melody", metas) == expected


def test_caption_prompt_cleans_pasted_prompt() -> None:
    pasted = "# Instruction\nold\n\n# Caption\n  dreamy synthwave  \n\n# Metas\n- bpm: 99\n"
    prompt = caption_prompt("Inst:", pasted, "M\n")
    assert prompt == "# Instruction\nInst:\n\n# Caption\ndreamy synthwave\n\n# Metas\nM\n<|endoftext|>\n"


def test_caption_prompt_has_no_language() -> None:
    prompt = caption_prompt("I:", "rock", metas_string(None, "", "", None))
    assert "Languages" not in prompt and "unknown" not in prompt


def test_lyric_prompt() -> None:
    assert lyric_prompt("en", "") == "# Languages\nen\n\n# Lyric\n<|endoftext|>"
    assert lyric_prompt("ja", "[verse]\nhello") == "# Languages\nja\n\n# Lyric\n[verse]\nhello<|endoftext|>"


# --------------------------------------------------------------------------- schedules

SPEC_TURBO_TABLES = {
    1.0: [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125],
    2.0: [
        1.0,
        0.9333333333333333,
        0.8571428571428571,
        0.7692307692307693,
        0.6666666666666666,
        0.5454545454545454,
        0.4,
        0.2222222222222222,
    ],
    3.0: [1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3],
}
TURBO = detect_variant({"is_turbo": True, "model_version": "turbo"}, "acestep-v15-turbo")
BASE = detect_variant({"is_turbo": False, "model_version": "base"}, "acestep-v15-base")
SFT = detect_variant({"is_turbo": False, "model_version": "sft"}, "acestep-v15-sft")


@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_turbo_tables_match_spec(shift: float) -> None:
    table = turbo_table(shift)
    assert len(table) == 8
    assert table == pytest.approx(SPEC_TURBO_TABLES[shift], abs=1e-12)


@pytest.mark.parametrize(
    ("given", "snapped"), [(2.5, 2.0), (1.5, 1.0), (0.3, 1.0), (1.6, 2.0), (2.6, 3.0), (3.0, 3.0), (7.0, 3.0)]
)
def test_turbo_shift_snapping(given: float, snapped: float) -> None:
    assert snap_turbo_shift(given) == snapped
    assert turbo_table(given) == pytest.approx(SPEC_TURBO_TABLES[snapped], abs=1e-12)


def test_turbo_valid_timesteps_are_the_table_values() -> None:
    union = sorted({round(v, 15) for table in SPEC_TURBO_TABLES.values() for v in table}, reverse=True)
    assert [round(v, 15) for v in TURBO_VALID_TIMESTEPS] == union


def test_turbo_schedule_honours_steps_and_the_exact_shift() -> None:
    """Upstream's newest turbo loop: 1 - i/n for n = inference_steps (at most 20), shifted by the
    exact shift; eight steps at shift 1, 2 or 3 are the fixed tables (patches/0006)."""
    schedule, notes = build_schedule(TURBO, 30, 2.5, None)
    assert schedule == pytest.approx(
        [2.5 * t / (1 + 1.5 * t) for t in (1 - i / 20 for i in range(20))], abs=1e-12
    )
    assert any("at most 20" in note and "30" in note for note in notes)
    for shift in (1.0, 2.0, 3.0):
        schedule, notes = build_schedule(TURBO, 8, shift, None)
        assert schedule == pytest.approx(SPEC_TURBO_TABLES[shift], abs=1e-12) and notes == []
    assert len(build_schedule(TURBO, 4, 3.0, None)[0]) == 4


def test_turbo_custom_timesteps_snapped() -> None:
    schedule, _ = build_schedule(TURBO, 8, 3.0, [0.97, 0.81, 0.5, 0.31, 0.0, 0.0])
    assert schedule == pytest.approx([0.9545454545454546, 0.8333333333333334, 0.5, 0.3], abs=1e-12)


def test_turbo_custom_timesteps_cut_to_20() -> None:
    schedule, _ = build_schedule(TURBO, 8, 3.0, [1.0 - i / 30 for i in range(30)])
    assert len(schedule) == 20
    assert all(value in TURBO_VALID_TIMESTEPS for value in schedule)


def test_turbo_all_zero_custom_timesteps_fall_back() -> None:
    schedule, _ = build_schedule(TURBO, 8, 1.0, [0.0, 0.0])
    assert schedule == pytest.approx(SPEC_TURBO_TABLES[1.0], abs=1e-12)


def test_base_linear_schedule() -> None:
    schedule, notes = build_schedule(BASE, 4, 1.0, None)
    assert schedule == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=1e-12) and notes == []
    # Built on a float32 tensor, as upstream: within float32's rounding of the exact values.
    assert linear_schedule(10, 1.0) == pytest.approx([1.0 - i / 10 for i in range(10)], abs=1e-7)


def test_base_shifted_schedule() -> None:
    schedule, _ = build_schedule(BASE, 4, 3.0, None)
    expected = [3 * t / (1 + 2 * t) for t in (1.0, 0.75, 0.5, 0.25)]
    assert schedule == pytest.approx(expected, abs=1e-7)
    assert schedule[0] == 1.0


def test_base_uses_custom_timesteps_and_ends_at_zero() -> None:
    """Upstream's newest base loop takes the list as given; one that does not end at 0 gains a
    final 0 here, so its last value is evaluated too (patches/0050)."""
    assert build_schedule(BASE, 4, 1.0, [0.9, 0.5, 0.0]) == ([0.9, 0.5], [])
    assert build_schedule(BASE, 4, 1.0, [0.9, 0.5]) == ([0.9, 0.5], [])


def test_sft_uses_custom_timesteps_verbatim() -> None:
    schedule, notes = build_schedule(SFT, 4, 1.0, [0.9, 0.5, 0.2, 0.0])
    assert schedule == [0.9, 0.5, 0.2] and notes == []


def test_free_track_names_run_with_a_warning() -> None:
    """Upstream's REST rule (issue 21 flow 5): any name, upper-cased into the instruction; a
    warning says the model knows twelve."""
    request = GenerationRequest(task_type="lego", track_name=" Piano ", src_audio=SRC)
    assert request.track_name == "piano"
    assert (
        build_instruction("lego", request.track_name)
        == "Generate the PIANO track based on the audio context:"
    )
    (note,) = track_notes("piano", ["drums", "kazoo"])
    assert "'piano'" in note and "'kazoo'" in note and "'drums'" not in note and "twelve" in note
    assert track_notes("vocals", ["drums"]) == []


def test_cover_nofsq_passes_validation() -> None:
    assert GenerationRequest(task_type="cover-nofsq", src_audio=SRC).task_type == "cover-nofsq"
    with pytest.raises(ValidationError, match="requires src_audio"):
        GenerationRequest(task_type="cover-nofsq")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 3000.0, -3000.0])
def test_repainting_window_is_finite_and_bounded(value):
    """Lego and repaint pad the source up to repainting_end: an unbounded end would bypass the
    duration bound (and infinity would fail deep in the worker)."""
    for name in ("repainting_start", "repainting_end"):
        with pytest.raises(ValidationError, match=name):
            GenerationRequest(task_type="lego", src_audio="/x.wav", track_name="drums", **{name: value})


def test_a_padded_lego_is_admitted_at_its_padded_length():
    """A 0.1 s source padded to repainting_end counts at repainting_end against the tier's limits."""
    from acestep.memory.limits import planned_length

    padded = GenerationRequest(task_type="lego", src_audio="/x.wav", track_name="drums", repainting_end=300)
    assert planned_length(padded, 0.1)[0] == 300
    inside = GenerationRequest(task_type="lego", src_audio="/x.wav", track_name="drums", repainting_end=2)
    assert planned_length(inside, 10.0)[0] == 10.0

"""``acestep generate`` with the 5Hz LM, in process: thinking end to end, and the refusals that
come before anything loads (no LM, the LM switched off, a bad LM setting)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import soundfile as sf

from acestep import cli

CODE = re.compile(r"<\|audio_code_\d+\|>")
LM_NAME = "acestep-5Hz-lm-1.7B"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs must not pick up a developer's ACESTEP_* settings."""
    for name in (
        "ACESTEP_CONFIG_PATH",
        "ACESTEP_CHECKPOINTS_DIR",
        "ACESTEP_PROJECT_ROOT",
        "ACESTEP_DEVICE",
        "ACESTEP_INIT_LLM",
        "ACESTEP_LM_MODEL_PATH",
    ):
        monkeypatch.delenv(name, raising=False)


def _thinking(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    # --no-cot-caption: a random tiny LM writes a long caption, which only slows the test down.
    return [
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--device",
        "cpu",
        "--thinking",
        "--no-cot-caption",
        "--duration",
        "6",
        "--steps",
        "2",
        "--seed",
        "3",
        "--output-dir",
        str(out),
        *extra,
    ]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_thinking_writes_codes_and_a_6_s_file(lm_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(_thinking(lm_checkpoint, tmp_path / "out", "--init-llm", "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    metas = result["metas"]
    assert metas["lm_model"] == LM_NAME
    assert [len(CODE.findall(codes)) for codes in metas["audio_codes"]] == [30]  # 6 s at 5 codes/s
    assert result["task_type"] == "cover"  # the LM's codes turn text2music into a cover of its plan
    assert metas["caption"] == ""  # --no-cot-caption: the caption as written
    assert 30 <= metas["bpm"] <= 300 and metas["bpm"] == metas["lm_metas"]["bpm"]
    assert result["seeds"] == [3]
    info = sf.info(result["items"][0]["path"])
    assert (info.samplerate, info.frames) == (48000, 6 * 48000)
    assert os.environ.get("ACESTEP_LM_MODEL_PATH") is None  # nothing left behind in this process


def test_lm_path_outside_the_root_and_the_summary_line(
    upstream_base: Path, lm_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """``--lm`` reaches the engine (the root holds no LM), and the text output says what it chose."""
    lm = lm_checkpoint / LM_NAME
    args = _thinking(upstream_base, tmp_path / "out", "--init-llm", "--lm", str(lm), "--duration", "4")
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = [line for line in lines if line.startswith(f"LM {LM_NAME}:")]
    assert len(summary) == 1, lines
    assert re.search(r"bpm \d+, key .+, time signature [2346], duration 4\.00 s", summary[0]), summary
    assert summary[0].endswith("audio codes per item: 20")
    assert os.environ.get("ACESTEP_LM_MODEL_PATH") is None


def test_thinking_without_an_lm_names_the_download(upstream_base: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(_thinking(upstream_base, tmp_path / "out", "--init-llm")) == 1
    errors = _errors(capsys.readouterr().err)
    assert any("acestep-download --model acestep-5Hz-lm-" in e and str(upstream_base) in e for e in errors)
    assert not (tmp_path / "out").exists()


def test_an_lm_name_that_is_not_there_names_the_download(lm_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(_thinking(lm_checkpoint, tmp_path / "out", "--lm", "acestep-5Hz-lm-9B")) == 1
    errors = _errors(capsys.readouterr().err)
    assert any("acestep-5Hz-lm-9B not found" in e and "acestep-download" in e for e in errors), errors


def test_the_lm_is_off_on_cpu_unless_init_llm(lm_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(_thinking(lm_checkpoint, tmp_path / "out")) == 2
    errors = _errors(capsys.readouterr().err)
    assert any("5Hz LM, which is off" in e and "--init-llm" in e for e in errors), errors
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:  # the flag takes ACESTEP_INIT_LLM's words only
        cli.main(_thinking(lm_checkpoint, tmp_path / "out", "--init-llm", "maybe"))
    assert exit_info.value.code == 2
    assert "argument --init-llm: invalid choice: 'maybe'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--lm-temperature", "9"], "lm_temperature"),
        (["--lm-top-p", "0"], "lm_top_p"),
        (["--lm-top-k", "-1"], "lm_top_k"),
    ],
)
def test_lm_settings_are_checked(flags: list[str], needle: str, tmp_path: Path, capsys) -> None:
    assert cli.main(_thinking(tmp_path / "nope", tmp_path / "out", *flags)) == 2
    assert any(needle in e for e in _errors(capsys.readouterr().err))


def test_memory_shows_the_lm_switch(capsys) -> None:
    assert cli.main(["memory", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["limits"]["lm_enabled"] is False
    assert cli.main(["memory", "--device", "cpu", "--init-llm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["limits"]["lm_enabled"] is True

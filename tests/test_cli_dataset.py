"""``acestep dataset scan|show|edit|save``, run as the console script runs (a child process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from acestep.testing import SAMPLE_RATE, synthetic_audio


def acestep(*args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "acestep.cli", "dataset", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def refused(done: subprocess.CompletedProcess, needle: str) -> None:
    """Exit code 2 and one clear line on stderr, never a traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "songs"
    root.mkdir()
    sf.write(root / "calm.wav", synthetic_audio(1.5), SAMPLE_RATE)
    (root / "calm.json").write_text(json.dumps({"caption": "calm strings over a slow pulse", "bpm": 70}))
    sf.write(root / "sung.flac", synthetic_audio(2.0, seed=1), SAMPLE_RATE)
    (root / "sung.lyrics.txt").write_text("[Verse]\nhello there")
    (root / "Key-BPM-Finder.csv").write_text("File,Key,BPM\nsung.flac,A minor,101\n")
    (root / "broken.wav").write_bytes(b"RIFF not really")
    return root


def test_scan_prints_the_samples_and_the_problems_and_writes_the_file(folder, tmp_path):
    out = tmp_path / "set.json"
    done = acestep("scan", folder, "-o", out, "--name", "strings")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("dataset strings (")
    assert lines[0].endswith("2 samples, 3.5s in all, 1 with a caption, 1 left out")
    assert lines[1].split() == ["name", "duration", "bpm", "key", "caption"]
    assert lines[2].split()[:4] == ["calm", "1.5s", "70", "-"] and "calm strings" in lines[2]
    assert lines[3].split() == ["sung", "2.0s", "101", "A", "minor", "-"]
    assert any(line.startswith("left out: broken.wav: the audio cannot be decoded") for line in lines)
    assert lines[-1] == f"wrote {out}"
    written = json.loads(out.read_text())
    assert written["metadata"]["name"] == "strings"
    assert [s["name"] for s in written["samples"]] == ["calm", "sung"]


def test_show_prints_a_table_or_the_json(folder, tmp_path):
    acestep("scan", folder, "-o", tmp_path / "set.json")
    for target in (folder, tmp_path / "set.json"):
        done = acestep("show", target)
        assert done.returncode == 0 and "calm" in done.stdout and "sung" in done.stdout, done.stderr
    done = acestep("show", folder, "--json")
    shown = json.loads(done.stdout)
    assert [s["bpm"] for s in shown["samples"]] == [70, 101]
    assert list(shown["problems"]) == ["broken.wav"]


def test_edit_a_dataset_file(folder, tmp_path):
    out = tmp_path / "set.json"
    acestep("scan", folder, "-o", out)
    lyrics = tmp_path / "words.txt"
    lyrics.write_text("[Chorus]\nla la la\n")
    done = acestep("edit", out, "calm", "--caption", "slow cello", "--bpm", "64", "--lyrics-file", lyrics)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"wrote {out}"
    calm = next(s for s in json.loads(out.read_text())["samples"] if s["name"] == "calm")
    assert (calm["caption"], calm["bpm"], calm["lyrics"], calm["is_instrumental"]) == (
        "slow cello", 64, "[Chorus]\nla la la", False,
    )  # fmt: skip
    done = acestep("edit", out, "sung", "--instrumental", "--keyscale", "E minor")
    sung = next(s for s in json.loads(out.read_text())["samples"] if s["name"] == "sung")
    assert done.returncode == 0 and (sung["lyrics"], sung["keyscale"]) == ("[Instrumental]", "E minor")
    refused(acestep("edit", out, "calm", "--bpm", "999"), "error: bpm 999 is outside 30-300")
    refused(acestep("edit", out, "nope", "--bpm", "90"), "no sample named 'nope'")
    refused(acestep("edit", out, "calm"), "nothing to change")
    refused(acestep("edit", out, "calm", "--lyrics-file", tmp_path / "none.txt"), "is not a file")
    refused(acestep("edit", tmp_path / "none.json", "calm", "--bpm", "90"), "does not exist")


def test_edit_refuses_to_drop_samples_that_did_not_load(folder, tmp_path):
    out = tmp_path / "set.json"
    acestep("scan", folder, "-o", out)
    (folder / "sung.flac").unlink()
    before = out.read_text()
    refused(acestep("edit", out, "calm", "--bpm", "90"), "1 sample(s) that cannot be used (sung.flac)")
    assert out.read_text() == before


def test_edit_in_a_folder_writes_sidecars(folder):
    done = acestep("edit", folder, "sung", "--caption", "bright pop", "--language", "en")
    assert done.returncode == 0, done.stderr
    assert json.loads((folder / "sung.json").read_text())["caption"] == "bright pop"
    shown = json.loads(acestep("show", folder, "--json").stdout)
    sung = next(s for s in shown["samples"] if s["name"] == "sung")
    assert (sung["caption"], sung["language"], sung["bpm"]) == ("bright pop", "en", 101)


def test_save_checks_and_writes_with_sidecars(folder, tmp_path):
    out = tmp_path / "saved" / "set.json"
    done = acestep("save", folder, "-o", out, "--sidecars")
    assert done.returncode == 0, done.stderr
    assert "left out: broken.wav" in done.stderr
    assert f"wrote {out}" in done.stdout and f"wrote {folder / 'sung.json'}" in done.stdout
    assert json.loads((folder / "sung.json").read_text())["keyscale"] == "A minor"
    assert [s["name"] for s in json.loads(out.read_text())["samples"]] == ["calm", "sung"]


def test_unusable_datasets_exit_2_with_the_reason(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(acestep("scan", empty), "has no audio files")
    (empty / "bad.wav").write_bytes(b"")
    refused(
        acestep("save", empty, "-o", tmp_path / "x.json"), "no usable samples: bad.wav: the file is empty"
    )
    assert not (tmp_path / "x.json").exists()
    refused(acestep("show", tmp_path / "nowhere"), "does not exist")
    (tmp_path / "bad.json").write_text("{")
    refused(acestep("show", tmp_path / "bad.json"), "bad.json is not valid JSON")

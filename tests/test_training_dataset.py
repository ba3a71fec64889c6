"""The training dataset (acestep/training/dataset.py): a folder of real audio files with upstream's
sidecars, the dataset JSON round trip, edits, the fingerprint and the per-file problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep.tasks import MAX_DURATION_S
from acestep.testing import SAMPLE_RATE, synthetic_audio
from acestep.training import dataset as ds
from acestep.training.sidecars import MAX_SIDECAR_BYTES

# Upstream's AudioSample and DatasetMetadata keys (dataset_builder_modules/models.py): a file we
# write must carry each one, as upstream's "Save Dataset" writes them.
UPSTREAM_SAMPLE_KEYS = {
    "id", "audio_path", "filename", "caption", "genre", "lyrics", "raw_lyrics", "formatted_lyrics", "bpm",
    "keyscale", "timesignature", "duration", "language", "is_instrumental", "custom_tag", "labeled",
    "prompt_override",
}  # fmt: skip
UPSTREAM_METADATA_KEYS = {
    "name", "custom_tag", "tag_position", "created_at", "num_samples", "all_instrumental", "genre_ratio",
}  # fmt: skip


def audio(path: Path, seconds: float = 1.5, seed: int = 0, **write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synthetic_audio(seconds, seed=seed), SAMPLE_RATE, **write)
    return path


def text(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def by_name(dataset: ds.Dataset) -> dict[str, ds.Sample]:
    return {s.name: s for s in dataset.samples}


def test_sidecar_precedence(tmp_path):
    audio(tmp_path / "both.wav")
    text(tmp_path / "both.lyrics.txt", "[Verse]\nnew words")
    text(tmp_path / "both.txt", "old words")
    audio(tmp_path / "legacy.wav", seed=1)
    text(tmp_path / "legacy.txt", "[Chorus]\nlegacy words")
    audio(tmp_path / "meta.flac", seed=2)
    text(tmp_path / "meta.caption.txt", "from the caption file")
    meta = {
        "caption": "from the json",
        "bpm": 128,
        "keyscale": "D major",
        "timesignature": 3,
        "language": "ja",
    }
    text(tmp_path / "meta.json", json.dumps(meta))
    audio(tmp_path / "captioned.wav", seed=3)
    text(tmp_path / "captioned.caption.txt", "soft piano, rain")
    audio(tmp_path / "bare.wav", seed=4)

    dataset = ds.scan(tmp_path)
    samples = by_name(dataset)
    assert dataset.problems == {} and sorted(samples) == ["bare", "both", "captioned", "legacy", "meta"]
    assert samples["both"].lyrics == "[Verse]\nnew words" and not samples["both"].is_instrumental
    assert samples["legacy"].lyrics == "[Chorus]\nlegacy words"
    m = samples["meta"]
    assert (m.caption, m.bpm, m.keyscale, m.timesignature, m.language) == (
        "from the json",
        128,
        "D major",
        "3",
        "ja",
    )
    assert not m.is_instrumental  # a vocal language says the track is sung, as upstream reads it
    assert samples["captioned"].caption == "soft piano, rain"
    bare = samples["bare"]
    assert (bare.lyrics, bare.is_instrumental, bare.language, bare.caption) == (
        "[Instrumental]",
        True,
        "unknown",
        "",
    )
    assert bare.duration == pytest.approx(1.5) and Path(bare.audio_path).is_absolute()
    assert dataset.labelled == 2 and dataset.total_duration == pytest.approx(7.5)


def test_every_format_is_read_for_its_length(tmp_path):
    audio(tmp_path / "a.wav", 1.5)
    audio(tmp_path / "b.flac", 2.0)
    audio(tmp_path / "c.mp3", 2.5, format="MP3")
    audio(tmp_path / "d.ogg", 3.0, format="OGG", subtype="VORBIS")
    audio(tmp_path / "e.opus", 3.5, format="OGG", subtype="OPUS")
    audio(tmp_path / "sub" / "f.WAV", 1.5)  # sub-folders and upper-case suffixes too
    text(tmp_path / "notes.md", "not audio")
    dataset = ds.scan(tmp_path)
    lengths = {s.name: s.duration for s in dataset.samples}
    assert dataset.problems == {}
    assert lengths == pytest.approx({"a": 1.5, "b": 2.0, "c": 2.5, "d": 3.0, "e": 3.5, "f": 1.5}, abs=0.06)


def test_key_bpm_finder_csv_is_applied_and_a_files_own_sidecar_wins(tmp_path):
    audio(tmp_path / "one.wav")
    audio(tmp_path / "two.wav", seed=1)
    audio(tmp_path / "three.wav", seed=2)
    text(tmp_path / "two.json", json.dumps({"bpm": 90}))
    table = (
        "File;Artist;Key;BPM;Caption\n"
        "one.wav;x;F# minor;128.4;\ntwo.wav;x;A major;140;dreamy\nghost.wav;x;C major;100;\n"
    )
    (tmp_path / "Key-BPM-Finder.csv").write_text(table, encoding="utf-8-sig")  # with a BOM, as exported
    text(tmp_path / "other.csv", "title,year\nfoo,1999\n")  # no File column: not a metadata table
    samples = by_name(ds.scan(tmp_path))
    assert (samples["one"].bpm, samples["one"].keyscale, samples["one"].caption) == (128, "F# minor", "")
    assert (samples["two"].bpm, samples["two"].keyscale, samples["two"].caption) == (90, "A major", "dreamy")
    assert (samples["three"].bpm, samples["three"].keyscale) == (None, "")


def test_bad_entries_are_problems_and_the_rest_loads(tmp_path):
    audio(tmp_path / "good.wav")
    audio(tmp_path / "badjson.wav", seed=1)
    text(tmp_path / "badjson.json", "{caption: no quotes")
    audio(tmp_path / "latin.wav", seed=2)
    text(tmp_path / "latin.lyrics.txt", "caf\xe9 au lait".encode("latin-1"))
    audio(tmp_path / "fast.wav", seed=3)
    text(tmp_path / "fast.json", json.dumps({"bpm": 999}))
    audio(tmp_path / "huge.wav", seed=4)
    text(tmp_path / "huge.lyrics.txt", "la " * (MAX_SIDECAR_BYTES // 2))
    audio(tmp_path / "list.wav", seed=5)
    text(tmp_path / "list.json", "[1, 2]")
    text(tmp_path / "noise.mp3", os.urandom(4096))
    text(tmp_path / "empty.flac", b"")
    audio(tmp_path / "short.wav", 0.5)
    sf.write(tmp_path / "long.flac", np.zeros(int(8000 * (MAX_DURATION_S + 1)), np.float32), 8000)
    text(tmp_path / "bad.csv", b"File,BPM\n\xff\xfe,1\n")

    dataset = ds.scan(tmp_path)
    assert [s.name for s in dataset.samples] == ["good"]
    problems = dataset.problems
    assert set(problems) == {
        "badjson.wav", "latin.wav", "fast.wav", "huge.wav", "list.wav", "noise.mp3", "empty.flac",
        "short.wav", "long.flac", "bad.csv",
    }  # fmt: skip
    assert problems["badjson.wav"].startswith("badjson.json: not valid JSON")
    assert problems["latin.wav"].startswith("latin.lyrics.txt: not UTF-8 text")
    assert problems["fast.wav"] == "fast.json: bpm 999 is outside 30-300"
    assert "at most" in problems["huge.wav"] and problems["huge.wav"].startswith("huge.lyrics.txt")
    assert problems["list.wav"] == "list.json: must be a JSON object of sample fields"
    assert problems["noise.mp3"].startswith("the audio cannot be decoded")
    assert problems["empty.flac"] == "the file is empty"
    assert "at least 1 s" in problems["short.wav"]
    assert "the limit is 600 s" in problems["long.flac"]
    assert problems["bad.csv"].startswith("not UTF-8 text")


def test_links_that_leave_the_folder_are_refused(tmp_path):
    outside = audio(tmp_path / "elsewhere" / "secret.wav")
    secret = text(tmp_path / "elsewhere" / "secret.txt", "private words")
    folder = tmp_path / "data"
    audio(folder / "inner.wav")
    (folder / "inner_link.wav").symlink_to(folder / "inner.wav")  # a link inside is fine
    (folder / "escape.wav").symlink_to(outside)
    audio(folder / "leaky.wav", seed=1)
    (folder / "leaky.lyrics.txt").symlink_to(secret)
    (folder / "linked_dir").symlink_to(outside.parent, target_is_directory=True)  # not followed
    dataset = ds.scan(folder)
    assert sorted(s.name for s in dataset.samples) == ["inner", "inner_link"]
    assert dataset.problems == {
        "escape.wav": "a link to a file outside the dataset folder",
        "leaky.wav": "leaky.lyrics.txt: a link to a file outside the dataset folder",
    }


def test_repeated_stems_get_unique_names(tmp_path):
    audio(tmp_path / "song.wav")
    audio(tmp_path / "song.flac", seed=1)
    audio(tmp_path / "b" / "song.wav", seed=2)
    names = {Path(s.audio_path).relative_to(tmp_path).as_posix(): s.name for s in ds.scan(tmp_path).samples}
    assert names == {"b/song.wav": "song", "song.flac": "song-2", "song.wav": "song-3"}


def test_an_empty_folder_and_an_all_bad_one_are_refused(tmp_path):
    empty = ds.scan(tmp_path)
    with pytest.raises(ds.DatasetError, match="has no audio files"):
        ds.require_usable(empty)
    for i in range(7):
        text(tmp_path / f"bad{i}.wav", b"")
    with pytest.raises(ds.DatasetError) as refused:
        ds.require_usable(ds.scan(tmp_path))
    message = str(refused.value)
    assert "no usable samples" in message and "bad0.wav: the file is empty" in message
    assert "bad6.wav" not in message and message.endswith("and 2 more")
    with pytest.raises(ds.DatasetError, match="is not a folder"):
        ds.scan(tmp_path / "missing")
    with pytest.raises(ds.DatasetError, match="does not exist"):
        ds.open_dataset(tmp_path / "missing.json")


def test_too_many_files_are_refused(tmp_path):
    for i in range(ds.MAX_DATASET_FILES + 1):
        (tmp_path / f"{i}.wav").touch()
    with pytest.raises(ds.DatasetError, match=f"at most {ds.MAX_DATASET_FILES}"):
        ds.scan(tmp_path)


def folder_dataset(root: Path) -> Path:
    audio(root / "calm.wav")
    text(root / "calm.json", json.dumps({"caption": "calm strings", "bpm": 70, "genre": "ambient"}))
    audio(root / "sung.flac", seed=1)
    text(root / "sung.lyrics.txt", "[Verse]\nhello there")
    return root


def test_round_trip_through_the_dataset_file(tmp_path):
    scanned = ds.scan(folder_dataset(tmp_path / "data"), name="mine")
    path = ds.save(scanned, tmp_path / "out" / "mine.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["mine.json"]  # no temporary file left
    written = json.loads(path.read_text())
    assert UPSTREAM_METADATA_KEYS <= set(written["metadata"]) and written["metadata"]["name"] == "mine"
    assert all(UPSTREAM_SAMPLE_KEYS <= set(entry) for entry in written["samples"])
    loaded = ds.load(path)
    assert loaded.samples == scanned.samples and loaded.problems == {}
    assert loaded.fingerprint() == scanned.fingerprint() and loaded.to_json() == scanned.to_json()
    assert ds.open_dataset(path).samples == scanned.samples
    assert ds.save(loaded, path) == path and ds.load(path).samples == scanned.samples


def test_upstream_shaped_files_are_read(tmp_path):
    first = audio(tmp_path / "audio" / "first.wav")
    audio(tmp_path / "audio" / "second.wav", seed=1)
    sample = {
        "id": "3f2a9c1e", "audio_path": str(first), "filename": "first.wav", "caption": "bright synth pop",
        "genre": "pop", "lyrics": "[Instrumental]", "raw_lyrics": "", "formatted_lyrics": "", "bpm": 120,
        "keyscale": "C Major", "timesignature": "4", "duration": 1, "language": "unknown",
        "is_instrumental": True, "custom_tag": "zzx", "labeled": True, "prompt_override": None,
    }  # fmt: skip
    missing = sample | {"id": "0000aaaa", "audio_path": str(tmp_path / "gone.wav"), "filename": "gone.wav"}
    data = {
        "metadata": {"name": "upstream set", "custom_tag": "zzx", "tag_position": "append",
                     "created_at": "2026-02-01T10:00:00", "num_samples": 2, "all_instrumental": True,
                     "genre_ratio": 0},
        "samples": [sample, missing],
    }  # fmt: skip
    file = text(tmp_path / "upstream.json", json.dumps(data, indent=2))
    loaded = ds.load(file)
    (only,) = loaded.samples
    assert (loaded.name, only.name, only.caption, only.bpm, only.duration) == (
        "upstream set", "first", "bright synth pop", 120, pytest.approx(1.5),
    )  # fmt: skip
    assert loaded.caption_for(only) == "bright synth pop, zzx"
    assert loaded.problems == {"gone.wav": f"the audio file {tmp_path / 'gone.wav'} is missing"}
    # side-step's bare list, with paths relative to the file
    bare = text(tmp_path / "audio" / "list.json", json.dumps([{"filename": "second.wav", "caption": "x"}]))
    assert [(s.name, s.caption) for s in ds.load(bare).samples] == [("second", "x")]
    # a root keeps a dataset file from reading audio elsewhere
    stray = audio(tmp_path / "stray.wav", seed=2)
    inner = [{"audio_path": str(stray)}, {"filename": "second.wav"}]
    rooted = ds.load(text(tmp_path / "audio" / "rooted.json", json.dumps(inner)), root=tmp_path / "audio")
    assert [s.name for s in rooted.samples] == ["second"]
    assert rooted.problems == {"stray.wav": "the audio file lies outside the folder datasets may read"}
    with pytest.raises(ds.DatasetError, match="outside the folder datasets may read"):
        ds.load(file, root=tmp_path / "audio")
    for bad, reason in (
        ("{", "not valid JSON"),
        ('{"samples": 3}', "needs a list of samples"),
        ('{"metadata": {"tag_position": "middle"}, "samples": []}', "tag_position"),
    ):
        with pytest.raises(ds.DatasetError, match=reason):
            ds.load(text(tmp_path / "bad.json", bad))


def test_edits_are_checked(tmp_path):
    dataset = ds.scan(folder_dataset(tmp_path))
    before = ds.Sample(**dataset.sample("calm").as_dict())
    for changes, reason in (
        ({"bpm": 400}, "outside 30-300"),
        ({"bpm": "fast"}, "must be a number"),
        ({"caption": "x" * 5000}, "the limit is 4096"),
        ({"keyscale": 5}, "must be text"),
        ({"tempo": 100}, "'tempo' is not a sample field"),
        ({"is_instrumental": "yes"}, "true or false"),
        (
            {"caption": "ok", "lyrics": "words", "is_instrumental": True},
            "an instrumental sample has no lyrics",
        ),
        ({}, "nothing to change"),
    ):
        with pytest.raises(ds.DatasetError, match=reason):
            ds.edit(dataset, "calm", **changes)
        assert dataset.sample("calm") == before  # a refused edit changes nothing
    with pytest.raises(ds.DatasetError, match="no sample named 'nope'.*calm, sung"):
        ds.edit(dataset, "nope", caption="x")
    sample = ds.edit(dataset, "calm", lyrics="[Verse]\nnow sung", bpm="96")
    assert (sample.lyrics, sample.is_instrumental, sample.bpm) == ("[Verse]\nnow sung", False, 96)
    sample = ds.edit(dataset, "sung", is_instrumental=True)
    assert (sample.lyrics, sample.is_instrumental) == ("[Instrumental]", True)
    sample = ds.edit(dataset, "sung", is_instrumental=False, language="en")
    assert (sample.lyrics, sample.is_instrumental, sample.language) == ("", False, "en")


def test_edits_written_as_sidecars_are_read_back(tmp_path):
    folder = folder_dataset(tmp_path)
    text(folder / "calm.json", json.dumps({"caption": "calm strings", "bpm": 70, "mood": "kept"}))
    text(folder / "k.csv", "File,BPM,Key\ncalm.wav,80,E minor\n")
    dataset = ds.scan(folder)
    assert dataset.sample("calm").bpm == 70  # the file's own sidecar over the folder's table
    ds.edit(dataset, "calm", caption="slow cello", bpm=64, lyrics="[Verse]\nhum")
    ds.edit(dataset, "sung", is_instrumental=True, keyscale="G major")
    written = ds.write_sidecars(dataset)
    assert sorted(p.name for p in written) == ["calm.json", "calm.lyrics.txt", "sung.json"]
    again = ds.scan(folder)
    assert again.samples == dataset.samples
    assert json.loads((folder / "calm.json").read_text())["mood"] == "kept"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_the_fingerprint_follows_what_training_reads(tmp_path):
    folder = folder_dataset(tmp_path)
    first = ds.scan(folder).fingerprint()
    assert ds.scan(folder).fingerprint() == first  # stable across scans (and processes: no randomness)
    text(folder / "readme.md", "notes")
    renamed = ds.scan(folder, name="another name")
    assert renamed.fingerprint() == first  # a new non-audio file or another dataset name: same
    text(
        folder / "calm.json",
        json.dumps({"caption": "calm strings, new words", "bpm": 70, "genre": "ambient"}),
    )
    recaptioned = ds.scan(folder).fingerprint()
    assert recaptioned != first
    audio(folder / "sung.flac", 2.0, seed=9)  # the audio itself changes
    assert ds.scan(folder).fingerprint() not in (first, recaptioned)
    dataset = ds.scan(folder)
    before = dataset.fingerprint()
    ds.edit(dataset, "calm", caption="edited in memory")
    assert dataset.fingerprint() != before


def test_the_dataset_module_stays_torch_free(tmp_path):
    folder = folder_dataset(tmp_path)
    code = (
        "import sys; from acestep.training import dataset as d; x = d.open_dataset(sys.argv[1]); "
        "d.require_usable(x); print(len(x.samples), x.fingerprint()[:8]); "
        "print(sorted(m for m in ('torch', 'numpy', 'pydantic') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]" and done.stdout.startswith("2 ")

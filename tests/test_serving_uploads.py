"""Uploads and server paths: content sniffing, size limits, random names, path confinement.

Every upload is a real starlette ``UploadFile`` over a real spooled temp file, and every audio
file is written by soundfile from :func:`acestep.testing.synthetic_audio`.
"""

from __future__ import annotations

import asyncio
import io
import re
import tempfile
from pathlib import Path

import pytest
import soundfile as sf
from starlette.datastructures import UploadFile

from acestep.jobs.uploads import (
    AUDIO_KINDS,
    CHUNK_BYTES,
    UploadError,
    confine,
    max_upload_bytes,
    save_upload,
    sniff_audio,
)
from acestep.testing import synthetic_audio

MiB = 2**20
SOUNDFILE_FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}


def _audio_bytes(kind: str, seconds: float = 0.5) -> bytes:
    buf = io.BytesIO()
    audio = synthetic_audio(seconds, seed=3, sample_rate=48000, channels=2)
    try:
        sf.write(buf, audio, 48000, format=SOUNDFILE_FORMATS[kind])
    except (sf.LibsndfileError, TypeError, ValueError) as exc:
        if kind == "mp3":
            pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write MP3: {exc}")
        raise
    return buf.getvalue()


def _upload(data: bytes, filename: str = "song.wav", size: int | None = None, in_memory: bool = True):
    # A real spooled temp file, in memory or rolled to disk like starlette's multipart parser does.
    spool = tempfile.SpooledTemporaryFile(max_size=len(data) + 1 if in_memory else 1)
    spool.write(data)
    spool.seek(0)
    return UploadFile(file=spool, filename=filename, size=size)


def _save(upload: UploadFile, dest: Path, max_bytes: int = 100 * MiB, **kwargs) -> Path:
    return asyncio.run(save_upload(upload, dest, max_bytes, **kwargs))


@pytest.fixture(scope="module")
def audio_files() -> dict[str, bytes]:
    return {kind: _audio_bytes(kind) for kind in ("wav", "flac", "ogg")}


# --- sniffing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3", "ogg"])
def test_sniff_recognises_each_format_soundfile_writes(kind: str) -> None:
    data = _audio_bytes(kind)
    assert sniff_audio(data[:64]) == kind
    assert sniff_audio(data) == kind


@pytest.mark.parametrize(
    "head, kind",
    [
        (b"RF64\xff\xff\xff\xffWAVEds64", "wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64", "mp3"),  # MPEG-1 layer III
        (b"\xff\xf3\x90\x64", "mp3"),  # MPEG-2 layer III
        (b"\xff\xe3\x90\x64", "mp3"),  # MPEG-2.5 layer III
    ],
)
def test_sniff_recognises_other_headers(head: bytes, kind: str) -> None:
    assert sniff_audio(head) == kind


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\x00" * 64,
        b"hello, this is plain text\n",
        b'{"prompt": "a song"}',
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"\xff\xd8\xff\xe0\x00\x10JFIF",  # JPEG: 0xFF but no frame sync
        b"\xff\xf1\x50\x80",  # AAC ADTS: frame sync with layer 00
        b"\xff\xeb\x90\x64",  # reserved MPEG version 01
        b"RIFF\x24\x00\x00\x00AVI LIST",  # RIFF, but a video
        b"RIFF",  # truncated
        b"PK\x03\x04",
    ],
)
def test_sniff_rejects_non_audio(head: bytes) -> None:
    assert sniff_audio(head) is None


# --- save_upload -----------------------------------------------------------------------------------


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("kind", ["wav", "flac", "ogg"])
def test_save_keeps_bytes_with_random_name_and_sniffed_extension(
    audio_files: dict[str, bytes], tmp_path: Path, kind: str, in_memory: bool
) -> None:
    data = audio_files[kind]
    path = _save(_upload(data, filename="../../etc/evil name.txt", in_memory=in_memory), tmp_path)
    assert path.parent == tmp_path
    assert re.fullmatch(r"upload_[0-9a-f]{32}" + re.escape(AUDIO_KINDS[kind]), path.name)
    assert path.read_bytes() == data
    assert sf.info(str(path)).samplerate == 48000
    assert list(tmp_path.iterdir()) == [path]


def test_save_mp3(tmp_path: Path) -> None:
    data = _audio_bytes("mp3")
    path = _save(_upload(data, filename="track.wav"), tmp_path)
    assert path.suffix == ".mp3"
    assert path.read_bytes() == data


def test_save_names_are_random_and_use_prefix(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    data = audio_files["wav"]
    paths = {_save(_upload(data), tmp_path, prefix="ref_") for _ in range(3)}
    assert len(paths) == 3
    assert all(re.fullmatch(r"ref_[0-9a-f]{32}\.wav", p.name) for p in paths)
    assert all(p.read_bytes() == data for p in paths)


def test_save_creates_missing_dest_dir(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b"
    path = _save(_upload(audio_files["flac"]), dest)
    assert path.parent == dest and path.is_file()


def test_text_named_wav_is_415(tmp_path: Path) -> None:
    with pytest.raises(UploadError) as info:
        _save(_upload(b"not audio at all, just text\n" * 100, filename="song.wav"), tmp_path)
    assert info.value.status == 415
    assert "not audio" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_audio_named_txt_is_accepted_by_content(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    path = _save(_upload(audio_files["ogg"], filename="notes.txt"), tmp_path)
    assert path.suffix == ".ogg"


def test_empty_upload_is_400(tmp_path: Path) -> None:
    with pytest.raises(UploadError) as info:
        _save(_upload(b""), tmp_path)
    assert info.value.status == 400
    assert "empty" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_too_large_is_413_and_leaves_no_partial_file(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    # Several chunks, so the file exists on disk when the limit is crossed; size unknown to starlette.
    wav = audio_files["wav"]
    data = wav + b"\x00" * (5 * MiB - len(wav))
    upload = _upload(data, in_memory=False)
    with pytest.raises(UploadError) as info:
        _save(upload, tmp_path, max_bytes=2 * MiB + 10)
    assert info.value.status == 413
    assert "2 MB" not in info.value.message  # 2 MiB + 10 is not a whole MB: said in bytes
    assert str(2 * MiB + 10) in info.value.message
    assert list(tmp_path.iterdir()) == []
    # It stopped at the first chunk past the limit instead of reading the whole body.
    assert upload.file.tell() == 3 * CHUNK_BYTES < len(data)


def test_limit_is_inclusive(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    data = audio_files["wav"]
    assert _save(_upload(data), tmp_path, max_bytes=len(data)).read_bytes() == data
    with pytest.raises(UploadError) as info:
        _save(_upload(data), tmp_path / "small", max_bytes=len(data) - 1)
    assert info.value.status == 413
    assert not (tmp_path / "small").exists() or list((tmp_path / "small").iterdir()) == []


def test_known_size_over_limit_refused_before_reading(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    data = audio_files["wav"]
    upload = _upload(data, size=len(data))
    with pytest.raises(UploadError) as info:
        _save(upload, tmp_path, max_bytes=len(data) - 1)
    assert info.value.status == 413
    assert upload.file.tell() == 0
    assert list(tmp_path.iterdir()) == []


def test_limit_message_names_the_limit(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    data = audio_files["wav"] + b"\x00" * (2 * MiB)
    with pytest.raises(UploadError) as info:
        _save(_upload(data), tmp_path, max_bytes=MiB)
    assert "1 MB" in info.value.message and "ACESTEP_MAX_UPLOAD_MB" in info.value.message


class _FailingSpool(tempfile.SpooledTemporaryFile):
    """A real spooled file whose second read fails, as when the client connection drops mid-body."""

    reads = 0

    def read(self, *args):
        self.reads += 1
        if self.reads > 1:
            raise OSError("connection lost")
        return super().read(*args)


def test_failed_read_leaves_no_partial_file(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    spool = _FailingSpool(max_size=10 * MiB)
    spool.write(audio_files["wav"] + b"\x00" * (2 * MiB))
    spool.seek(0)
    with pytest.raises(OSError, match="connection lost"):
        _save(UploadFile(file=spool, filename="x.wav"), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prefix", ["", "a/b", "../x", "x\0"])
def test_bad_prefix_is_refused(audio_files: dict[str, bytes], tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        _save(_upload(audio_files["wav"]), tmp_path, prefix=prefix)


def test_non_positive_limit_is_refused(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        _save(_upload(audio_files["wav"]), tmp_path, max_bytes=0)


# --- confine ---------------------------------------------------------------------------------------


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two allowed roots with a file each, and an outside directory with a secret."""
    a, b, outside = tmp_path / "uploads", tmp_path / "results", tmp_path / "outside"
    for d in (a, b, outside):
        d.mkdir()
    (a / "in_a.wav").write_bytes(b"a")
    (b / "in_b.wav").write_bytes(b"b")
    (outside / "secret.txt").write_text("secret")
    return a, b, outside


def test_confine_accepts_files_in_any_root(roots: tuple[Path, Path, Path]) -> None:
    a, b, _ = roots
    assert confine(str(a / "in_a.wav"), [a, b], "src_audio_path") == (a / "in_a.wav").resolve()
    assert confine(b / "in_b.wav", [a, b], "src_audio_path") == (b / "in_b.wav").resolve()


def test_confine_does_not_require_existence(roots: tuple[Path, Path, Path]) -> None:
    a, b, _ = roots
    assert confine(str(a / "later.wav"), [a, b], "f") == (a / "later.wav").resolve()


def test_confine_normalises_dotdot_that_stays_inside(roots: tuple[Path, Path, Path]) -> None:
    a, _, _ = roots
    (a / "sub").mkdir()
    assert confine(f"{a}/sub/../in_a.wav", [a], "f") == (a / "in_a.wav").resolve()


def _refused(path: str | Path, roots: list[Path], status: int = 403, field: str = "src_audio_path") -> None:
    with pytest.raises(UploadError) as info:
        confine(path, roots, field)
    assert info.value.status == status
    assert info.value.message.startswith(f"{field}:")


def test_confine_refuses_traversal(roots: tuple[Path, Path, Path]) -> None:
    a, b, outside = roots
    _refused(f"{a}/../outside/secret.txt", [a, b])
    _refused(f"{a}/../../../../../../etc/passwd", [a, b])
    with pytest.raises(UploadError, match="outside the allowed directories"):
        confine(f"{a}/../outside/secret.txt", [a], "reference_audio_path")


def test_confine_refuses_relative_traversal(roots: tuple[Path, Path, Path], monkeypatch) -> None:
    a, _, _ = roots
    monkeypatch.chdir(a)  # relative paths resolve against the working directory
    assert confine("in_a.wav", [a], "f") == (a / "in_a.wav").resolve()
    _refused("../outside/secret.txt", [a])


def test_confine_refuses_absolute_paths_elsewhere(roots: tuple[Path, Path, Path]) -> None:
    a, b, outside = roots
    _refused("/etc/passwd", [a, b])
    _refused(str(outside / "secret.txt"), [a, b])
    _refused("/", [a, b])
    _refused(str(a / "in_a.wav"), [])  # no roots, nothing allowed


def test_confine_compares_whole_components(roots: tuple[Path, Path, Path]) -> None:
    a, _, _ = roots
    sibling = a.parent / (a.name + "_evil")  # "uploads_evil" shares the string prefix "uploads"
    sibling.mkdir()
    (sibling / "x.wav").write_bytes(b"x")
    _refused(str(sibling / "x.wav"), [a])


def test_confine_refuses_symlinks_out_of_a_root(roots: tuple[Path, Path, Path]) -> None:
    a, _, outside = roots
    (a / "link.wav").symlink_to(outside / "secret.txt")
    (a / "linkdir").symlink_to(outside, target_is_directory=True)
    _refused(str(a / "link.wav"), [a])
    _refused(str(a / "linkdir" / "secret.txt"), [a])
    _refused(str(a / "linkdir" / "not_yet.wav"), [a])


def test_confine_follows_symlinks_that_stay_inside(roots: tuple[Path, Path, Path]) -> None:
    a, b, _ = roots
    (a / "alias.wav").symlink_to(b / "in_b.wav")
    assert confine(str(a / "alias.wav"), [a, b], "f") == (b / "in_b.wav").resolve()
    _refused(str(a / "alias.wav"), [a])  # the target's root is not allowed here


def test_confine_resolves_symlinked_roots(roots: tuple[Path, Path, Path], tmp_path: Path) -> None:
    a, _, _ = roots
    root_link = tmp_path / "uploads_link"
    root_link.symlink_to(a, target_is_directory=True)
    assert confine(str(a / "in_a.wav"), [root_link], "f") == (a / "in_a.wav").resolve()
    assert confine(str(root_link / "in_a.wav"), [a], "f") == (a / "in_a.wav").resolve()


def test_confine_refuses_nul_and_empty(roots: tuple[Path, Path, Path]) -> None:
    a, _, _ = roots
    _refused(f"{a}/in_a.wav\0.txt", [a], status=400)
    _refused("", [a], status=400)
    _refused("   ", [a], status=400)


def test_confine_refuses_symlink_loops(roots: tuple[Path, Path, Path]) -> None:
    a, _, _ = roots
    (a / "loop").symlink_to(a / "loop")
    _refused(str(a / "loop"), [a], status=400)


# --- max_upload_bytes ------------------------------------------------------------------------------


def test_max_upload_bytes_default_and_values(monkeypatch) -> None:
    assert max_upload_bytes({}) == 100 * MiB
    assert max_upload_bytes({"ACESTEP_MAX_UPLOAD_MB": ""}) == 100 * MiB
    assert max_upload_bytes({"ACESTEP_MAX_UPLOAD_MB": "5"}) == 5 * MiB
    assert max_upload_bytes({"ACESTEP_MAX_UPLOAD_MB": " 250 "}) == 250 * MiB
    monkeypatch.setenv("ACESTEP_MAX_UPLOAD_MB", "7")
    assert max_upload_bytes() == 7 * MiB


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "nan", "inf", "10MB"])
def test_max_upload_bytes_refuses_bad_values(value: str) -> None:
    with pytest.raises(ValueError, match="ACESTEP_MAX_UPLOAD_MB"):
        max_upload_bytes({"ACESTEP_MAX_UPLOAD_MB": value})

"""Client files in and server paths out: size-limited, content-checked uploads and path confinement.

Two rules from the security review live here. An upload is streamed to disk under a size limit and
accepted only if its first bytes are a known audio container, whatever its filename claims; it gets
a random name, so no client string ever becomes part of a server path. And a client-supplied server
path (``src_audio_path`` and friends) is resolved, symlinks included, and honoured only inside the
allowed roots.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import anyio.to_thread

from acestep.engine.disk_full import NoSpaceError, is_no_space
from acestep.errors import JobErrorKind
from acestep.jobs.failures import Refusal, RefusalCause
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value

CHUNK_BYTES = 2**20  # 1 MiB: bounded memory per request, few enough calls for a 100 MB file
HEAD_BYTES = 12  # enough for every signature below (RIFF....WAVE is the longest)
MAX_UPLOAD_ENV = "ACESTEP_MAX_UPLOAD_MB"

AUDIO_KINDS: dict[str, str] = {"wav": ".wav", "flac": ".flac", "mp3": ".mp3", "ogg": ".ogg"}


class UploadError(Refusal):
    """A refused upload or server path, a :class:`Refusal` whose cause gives the HTTP status
    (acestep/jobs/failures.py): a wrong or empty one, a path outside the allowed folders, too
    large, not audio, or no space left on the server's disk."""

    def __init__(self, cause: str, message: str):
        super().__init__(cause, message)

    @property
    def message(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return f"UploadError({self.cause}, {self.message!r})"


class AsyncReadable(Protocol):
    """What :func:`save_upload` needs from an upload: starlette's ``UploadFile.read``."""

    async def read(self, size: int = -1) -> bytes: ...


def _is_mpeg_frame(head: bytes) -> bool:
    # 11 sync bits, then version (01 is reserved) and layer (00 is reserved; it is also what AAC's
    # ADTS header carries, so AAC is not mistaken for MP3).
    if len(head) < 2 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    return version != 0b01 and layer != 0b00


def sniff_audio(head: bytes) -> str | None:
    """The audio container named by the first bytes of a file (a key of :data:`AUDIO_KINDS`), or None.

    WAV is ``RIFF....WAVE`` or its 64-bit form ``RF64....WAVE``; FLAC is ``fLaC``; MP3 is an ID3v2
    tag or an MPEG audio frame sync with valid version and layer bits; OGG is ``OggS``.
    """
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or _is_mpeg_frame(head):
        return "mp3"
    return None


def _size_text(n: int) -> str:
    if n % 2**20 == 0:
        return f"{n // 2**20} MB"
    return f"{n} bytes"


def _no_space(dest_dir: Path) -> UploadError:
    return UploadError(JobErrorKind.DISK, str(NoSpaceError(dest_dir)))


def _too_large(max_bytes: int) -> UploadError:
    return UploadError(
        RefusalCause.TOO_LARGE, f"upload too large: the limit is {_size_text(max_bytes)} ({MAX_UPLOAD_ENV})"
    )


async def save_upload(upload: AsyncReadable, dest_dir: Path, max_bytes: int, prefix: str = "upload_") -> Path:
    """Stream ``upload`` into a new randomly named file in ``dest_dir`` and return its path.

    Reads in 1 MiB chunks and stops as soon as more than ``max_bytes`` arrived (413), deleting the
    partial file. Empty content is a 400; content whose first bytes are not WAV, FLAC, MP3 or OGG
    is a 415, whatever the filename or content type says. The name is ``prefix`` + uuid4 hex + the
    sniffed kind's extension; the client's filename is never used. A full disk is a 507 naming
    ``dest_dir``, with nothing left behind.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if not prefix or "\0" in prefix or Path(prefix).name != prefix:  # no separators, no directory part
        raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")

    # Starlette counts the bytes it spooled; when it knows, refuse before reading anything.
    declared = getattr(upload, "size", None)
    if isinstance(declared, int) and declared > max_bytes:
        raise _too_large(max_bytes)

    # Gather at least HEAD_BYTES before sniffing: a read may legally return fewer bytes than asked.
    head = b""
    while len(head) < HEAD_BYTES:
        chunk = await upload.read(CHUNK_BYTES)
        if not chunk:
            break
        head += chunk
    if not head:
        raise UploadError(JobErrorKind.INPUT, "upload is empty")
    kind = sniff_audio(head)
    if kind is None:
        raise UploadError(
            RefusalCause.UNSUPPORTED_MEDIA,
            "upload is not audio: expected WAV, FLAC, MP3 or OGG content (checked by content, not name)",
        )
    if len(head) > max_bytes:
        raise _too_large(max_bytes)

    path = dest_dir / f"{prefix}{uuid.uuid4().hex}{AUDIO_KINDS[kind]}"
    total = len(head)
    # "xb": never overwrite; a uuid4 collision is an error, not a silent clobber. Opened outside the
    # try so that failing to create the file never deletes one that was already there.
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        fh = open(path, "xb")
    except OSError as exc:
        if is_no_space(exc):
            raise _no_space(dest_dir) from None
        raise
    try:
        with fh:
            # Disk writes off the event loop: other requests keep being served meanwhile.
            await anyio.to_thread.run_sync(fh.write, head)
            while chunk := await upload.read(CHUNK_BYTES):
                total += len(chunk)
                if total > max_bytes:
                    raise _too_large(max_bytes)
                await anyio.to_thread.run_sync(fh.write, chunk)
    except BaseException as exc:
        # Any failure, cancellation (client gone) included, leaves no partial file behind.
        path.unlink(missing_ok=True)
        if is_no_space(exc):
            raise _no_space(dest_dir) from None
        raise
    return path


class _OpenFile:
    """A file opened by :func:`open_shared`, read the way :func:`save_upload` reads an upload."""

    def __init__(self, handle):
        self.handle = handle

    async def read(self, size: int = -1) -> bytes:
        return await anyio.to_thread.run_sync(self.handle.read, size)


def open_shared(path: Path, root: Path, field: str):
    """A file in a folder other users write (the machine's temp folder), opened as it is now: a
    link in its last component is not followed, it must be a regular file, and (where the system
    shows it, /proc) the opened file must still lie inside ``root``. The caller copies it at once,
    so swapping the path for a link later changes nothing the job reads."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO never blocks
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UploadError(JobErrorKind.INPUT, f"{field}: file not found") from None
    except OSError:  # ELOOP: a link; EACCES: not ours to read
        raise UploadError(RefusalCause.FORBIDDEN, f"{field}: path outside the allowed directories") from None
    handle = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UploadError(JobErrorKind.INPUT, f"{field}: not a regular file")
        opened = Path(f"/proc/self/fd/{fd}")
        if opened.is_symlink() and not Path(os.readlink(opened)).is_relative_to(root):
            raise UploadError(RefusalCause.FORBIDDEN, f"{field}: path outside the allowed directories")
    except BaseException:
        handle.close()
        raise
    return handle


async def copy_shared(path: Path, root: Path, dest_dir: Path, max_bytes: int, field: str) -> Path:
    """``path`` (inside the shared ``root``) copied into ``dest_dir`` now, with an upload's checks
    (size limit, content sniff); the copy is the job's input, deleted with its uploads."""
    handle = await anyio.to_thread.run_sync(open_shared, path, root, field)
    try:
        return await save_upload(_OpenFile(handle), dest_dir, max_bytes, prefix=f"{field}_")
    except UploadError as exc:
        raise UploadError(exc.cause, f"{field}: {exc.message}") from None
    finally:
        handle.close()


def confine(path: str | os.PathLike[str], roots: Sequence[Path], field: str) -> Path:
    """The resolved form of a client-supplied server path, if it lies inside one of ``roots``.

    Symlinks are followed and ``..`` collapsed before the check (roots are resolved too), so
    neither a traversal nor a link planted inside a root can reach outside it. A relative path
    resolves against the server's working directory. The file need not exist; the caller reports
    a missing one. Raises UploadError: 400 for an empty path or one with a NUL byte, 403 outside
    every root.
    """
    text = os.fsdecode(os.fspath(path))
    if not text.strip():
        raise UploadError(JobErrorKind.INPUT, f"{field}: empty path")
    if "\0" in text:
        raise UploadError(JobErrorKind.INPUT, f"{field}: path contains a NUL byte")
    try:
        resolved = Path(text).resolve()
    except (OSError, RuntimeError):  # symlink loops, over-long names: nothing we could open anyway
        raise UploadError(JobErrorKind.INPUT, f"{field}: path cannot be resolved") from None
    for root in roots:
        try:
            real_root = Path(root).resolve()
        except (OSError, RuntimeError):
            continue  # a broken root allows nothing
        # is_relative_to compares whole components: /data/up does not contain /data/upload_evil.
        if resolved.is_relative_to(real_root):
            return resolved
    raise UploadError(RefusalCause.FORBIDDEN, f"{field}: path outside the allowed directories")


def max_upload_bytes(env: Mapping[str, str] | None = None) -> int:
    """The upload size limit: ``ACESTEP_MAX_UPLOAD_MB`` (whole MiB, default 100) in bytes.

    Unset or blank means the default; anything else must be a positive integer (ValueError naming
    the variable otherwise), matching how :mod:`acestep.serving.config` reads the same variable.
    """
    return setting_value(current_settings() if env is None else env, MAX_UPLOAD_ENV) * 2**20

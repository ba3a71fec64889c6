"""Read an untrusted audio file's header in a short-lived child process, not in the server.

libsndfile (and the FLAC, Vorbis, Opus and mpg123 decoders behind it) parses whatever a client
uploads; a parser bug or a pathological file then costs a throwaway process, bounded in address
space and CPU time, instead of the API process that holds every request and the key. The child
imports only soundfile (about 0.1 s); its answer is three numbers, checked here by
:mod:`acestep.engine.audio_limits`. It bounds resources; it is not a security sandbox (the child
runs as the server's user, without the server's secrets in its environment).

This file is also the child's script: it runs as ``python -P -B audio_probe.py <path>``, so
nothing above the ``__main__`` block may import from acestep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

from acestep.settings import child_environment

if TYPE_CHECKING:
    from acestep.engine.audio_limits import AudioHeader

PROBE_TIMEOUT_S = 15.0  # wall clock; a header takes milliseconds, an MP3 length scan well under a second
PROBE_CPU_S = 10
PROBE_ADDRESS_SPACE = 512 * 2**20  # python + numpy + libsndfile map about 110 MiB
# What the child inherits: enough to find Python's packages and libsndfile, never a secret (the
# API key lives in this environment). One BLAS thread: numpy's import otherwise maps a buffer per
# core, against the address-space limit.
INHERITED_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "SYSTEMROOT")
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Probes at once: a burst of uploads costs at most this many children (each waits its turn).
_RUNNING = threading.BoundedSemaphore(4)


def checked_seconds(path: str | os.PathLike[str], name: str, min_seconds: float | None = None) -> float:
    """The length of an untrusted file, once its header (read by :func:`probe`) is within every
    input bound; AudioInputError naming the bound otherwise. ``name`` starts each message."""
    from acestep.engine.audio_limits import MIN_INPUT_SECONDS, check_header

    minimum = MIN_INPUT_SECONDS if min_seconds is None else min_seconds
    return check_header(name, probe(path, name), min_seconds=minimum)


def probe(path: str | os.PathLike[str], name: str) -> AudioHeader:
    """The header of ``path`` as the bounded child read it; UnreadableAudioError (with
    libsndfile's reason, never a server path) when the file cannot be opened or the child did not
    finish."""
    from acestep.engine.audio_limits import AudioHeader, UnreadableAudioError

    def unreadable(reason: str) -> UnreadableAudioError:
        return UnreadableAudioError(f"{name}: the audio cannot be decoded ({reason})")

    try:
        with _RUNNING:
            done = subprocess.run(
                [sys.executable, "-P", "-B", __file__, os.fspath(path)],
                capture_output=True,
                timeout=PROBE_TIMEOUT_S,
                env=child_environment(CHILD_ENV, keep=INHERITED_ENV.__contains__),
                stdin=subprocess.DEVNULL,
                check=False,
            )
    except subprocess.TimeoutExpired:
        raise unreadable(f"reading its header took over {PROBE_TIMEOUT_S:.0f} s") from None
    try:
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = None
    if done.returncode != 0 or not isinstance(answer, dict):
        from loguru import logger

        logger.warning(
            "audio header probe ended with code {}: {}", done.returncode, done.stderr.decode()[-2000:]
        )
        raise unreadable("reading its header ran out of the time or memory allowed")
    if "error" in answer:
        raise unreadable(str(answer["error"]))
    return AudioHeader(
        rate=int(answer["rate"]), channels=int(answer["channels"]), frames=int(answer["frames"])
    )


def _child(path: str) -> None:
    import resource

    # Bounded before the untrusted bytes are touched; a breach kills this process, nothing else.
    resource.setrlimit(resource.RLIMIT_AS, (PROBE_ADDRESS_SPACE, PROBE_ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CPU, (PROBE_CPU_S, PROBE_CPU_S))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # it only reads (-B: no bytecode files either)
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError variants
        # error_string is libsndfile's reason alone; str(exc) would repeat the server path.
        reason = getattr(exc, "error_string", None) or type(exc).__name__
        print(json.dumps({"error": reason}))
        return
    print(json.dumps({"rate": info.samplerate, "channels": info.channels, "frames": info.frames}))


if __name__ == "__main__":
    _child(sys.argv[1])

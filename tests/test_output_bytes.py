"""Same request and seed, same bytes: every output format, across runs and process restarts.

libsndfile stamps float WAVs with the time of writing, so the runs here are more than a second
apart; each run is a fresh process, as a restarted server or a second ``acestep generate`` is.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from acestep.engine.audio_io import FORMATS

RUN = """
import json, sys
from pathlib import Path
from acestep import AceStep, GenerationRequest
checkpoint, out = sys.argv[1], Path(sys.argv[2])
engine = AceStep.from_pretrained(checkpoint, device="cpu")
paths = {}
for audio_format in sys.argv[3].split(","):
    request = GenerationRequest(caption="same bytes", audio_duration=3.0, seed=11, batch_size=1,
                                inference_steps=4, audio_format=audio_format)
    paths[audio_format] = engine.generate(request, out / audio_format).audio_paths[0]
print(json.dumps(paths))
"""


def _run(checkpoint: Path, out: Path) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(checkpoint), str(out), ",".join(FORMATS)],
        capture_output=True,
        text=True,
        check=True,
    )
    paths = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: hashlib.sha256(Path(path).read_bytes()).hexdigest() for name, path in paths.items()}


def test_every_format_is_byte_identical_across_runs_and_restarts(upstream_base: Path, tmp_path: Path):
    first = _run(upstream_base, tmp_path / "first")
    time.sleep(1.5)  # a time stamp in a header would now differ by at least a second
    second = _run(upstream_base, tmp_path / "second")
    assert set(first) == set(FORMATS)
    assert first == second


def test_float_wav_holds_the_samples_and_no_time_stamp(tmp_path: Path):
    import numpy as np
    import soundfile as sf
    import torch

    from acestep.engine.audio_io import save_audio

    wav = torch.linspace(-0.5, 0.5, 2 * 4800).reshape(2, 4800)
    path = save_audio(wav, tmp_path, "x", "wav32")
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (48000, 2, "FLOAT")
    assert np.array_equal(sf.read(str(path), dtype="float32")[0].T, wav.numpy())
    assert b"PEAK" not in path.read_bytes()

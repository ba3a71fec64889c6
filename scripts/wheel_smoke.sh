#!/usr/bin/env bash
# Build the wheel, install it in a fresh venv, and generate a lego stem from a tiny checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf dist
"$VENV/bin/python" -m build --wheel --outdir dist . >/dev/null
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q torch==2.14.1 torchaudio==2.11.0
"$work/venv/bin/python" -m pip install -q dist/acestep-*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import soundfile as sf
from acestep.testing import make_tiny_checkpoint, synthetic_audio
make_tiny_checkpoint("tiny", layout="upstream", variant="base", seed=0)
sf.write("song.wav", synthetic_audio(6.0, seed=1, sample_rate=44100), 44100)
PY
"$work/venv/bin/acestep" generate --checkpoint tiny --task lego --track-name drums --src-audio song.wav \
  --seed 1 --steps 4 --output-dir out --format wav
"$work/venv/bin/python" - <<'PY'
import glob
import soundfile as sf
files = glob.glob("out/*.wav")
assert len(files) == 1, files
info = sf.info(files[0])
assert info.samplerate == 48000 and info.channels == 2, info
assert abs(info.frames - 6 * 48000) <= 1, info.frames  # 44.1 kHz source resampled to 48 kHz
print(f"wheel smoke: ok ({files[0]}: {info.samplerate} Hz, {info.channels} ch, {info.frames} frames)")
PY

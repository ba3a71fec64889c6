#!/usr/bin/env bash
# Build the wheel, install it in a fresh venv, and generate a lego stem from a tiny checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# Inside the checkout, so that the torch files below can be hard links (same filesystem).
work=$(mktemp -d -p "$PWD" .wheel-smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT
rm -rf dist
"$VENV/bin/python" -m build --wheel --outdir dist . >/dev/null
# The metadata PyPI would get, the README rendered as the long description included: a warning fails too.
"$VENV/bin/python" -m twine check --strict dist/*
python3 -m venv "$work/venv"
# The torch stack (torch, triton, CUDA libraries: ~6 GB) is hard-linked from $VENV, not
# installed a second time: CI machines can be short of disk. Everything else comes from the wheel's
# own dependency list. Where links are impossible, pip installs torch as setup.sh does.
site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
"$VENV/bin/python" - "$(site_of "$VENV")" "$(site_of "$work/venv")" <<'PY' \
  || "$work/venv/bin/python" -m pip install -q torch==2.14.1
import os
import re
import sys
from importlib.metadata import distributions

source, target = sys.argv[1], sys.argv[2]
heavy = re.compile(r"^(torch|triton|cuda[-_].*|nvidia[-_](?!ml[-_]py).*)$", re.I)
linked = 0
for dist in distributions(path=[source]):
    if not heavy.match(dist.metadata["Name"]):
        continue
    for entry in dist.files or []:
        src = os.path.normpath(os.path.join(source, entry))
        if not src.startswith(source + os.sep) or not os.path.isfile(src):
            continue  # console scripts and other files outside site-packages
        dst = os.path.join(target, os.path.relpath(src, source))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.link(src, dst)
        linked += 1
if not linked:
    sys.exit("no torch installation to link")
print(f"wheel smoke: linked {linked} torch-stack files from {source}")
PY
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

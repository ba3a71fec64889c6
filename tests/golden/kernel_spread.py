"""Measure how far the golden cases move under every CPU kernel choice this machine can force.

Run explicitly: ``python tests/golden/kernel_spread.py``. Each choice runs in a fresh process
(the variables are read when the libraries start) and is compared with the stored goldens in the
measure the tests use; the tolerances in ``cases.py`` come from the worst line of this table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cases import LAYOUTS, VARIANTS, golden_path  # noqa: E402

CHOICES = [
    {},
    {"ATEN_CPU_CAPABILITY": "default"},
    {"ATEN_CPU_CAPABILITY": "avx2"},
    {"ATEN_CPU_CAPABILITY": "avx512"},
    {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    {"MKL_CBWR": "COMPATIBLE"},
    {"MKL_CBWR": "AVX2"},
    {"OMP_NUM_THREADS": "1"},
    {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE",
     "OMP_NUM_THREADS": "1"},
]

RENDER = """
import sys
from pathlib import Path
sys.path.insert(0, {golden!r})
import numpy as np
from cases import render
from acestep import AceStep
from acestep.testing import make_tiny_checkpoint
work = Path({work!r})
checkpoint = make_tiny_checkpoint(work / "ckpt", layout={layout!r}, variant={variant!r}, seed=0)
np.save(work / "out.npy", render(AceStep.from_pretrained(checkpoint, device="cpu"), {variant!r}, work))
"""


def measure(env: dict[str, str], layout: str, variant: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        code = RENDER.format(golden=str(Path(__file__).parent), work=tmp, layout=layout, variant=variant)
        subprocess.run(
            [sys.executable, "-c", code], env=os.environ | env, check=True, capture_output=True
        )
        actual, expected = np.load(Path(tmp) / "out.npy"), np.load(golden_path(layout, variant))
    pairs = zip(actual, expected, strict=True)
    relative = max(float(np.linalg.norm(a - e) / np.linalg.norm(e)) for a, e in pairs)
    return relative, float(np.abs(actual - expected).max())


def main() -> int:
    worst = [0.0, 0.0]
    for env in CHOICES:
        for layout in LAYOUTS:
            for variant in VARIANTS:
                relative, absolute = measure(env, layout, variant)
                worst = [max(worst[0], relative), max(worst[1], absolute)]
                line = {"env": env, "case": f"{layout}-{variant}", "relative": relative, "max_abs": absolute}
                print(json.dumps(line), flush=True)
    print(json.dumps({"worst_relative": worst[0], "worst_max_abs": worst[1]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

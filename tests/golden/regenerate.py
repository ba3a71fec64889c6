"""Regenerate the golden outputs. Run explicitly: ``python tests/golden/regenerate.py``.

Tests never write golden files; when this is run, commit the changed .npy files with a message
that explains why the outputs changed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cases import LAYOUTS, VARIANTS, golden_path, render  # noqa: E402

from acestep import AceStep  # noqa: E402
from acestep.testing import make_tiny_checkpoint  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for layout in LAYOUTS:
            for variant in VARIANTS:
                work = Path(tmp) / f"{layout}-{variant}"
                checkpoint = make_tiny_checkpoint(work / "ckpt", layout=layout, variant=variant, seed=0)
                engine = AceStep.from_pretrained(checkpoint, device="cpu")
                audio = render(engine, variant, work)
                path = golden_path(layout, variant)
                if path.exists():
                    old = np.load(path)
                    diff = float(np.abs(old - audio).max()) if old.shape == audio.shape else float("inf")
                    print(f"{path.name}: max abs change {diff:.3g}")
                np.save(path, audio)
                print(f"wrote {path} {audio.shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m bench run`` end to end on the tiny networks (CPU), and its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acestep.memory.precision import plan_named

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_cpu_run_writes_every_variant_and_the_report_reads_it(tmp_path):
    """Quantized and on a simulated 4 GiB card (on the CPU: that tier's limits, nothing to cap)."""
    out = tmp_path / "tiny.json"
    args = ["--config", "tiny-turbo", "--device", "cpu", "--seconds", "10", "--runs", "1"]
    args += ["--fast", "compile", "--t4", "--quantize", "dit=int8_weight_only", "--vram-gib", "4"]
    done = _bench("run", *args, "--out", str(out), ACESTEP_DIT_COMPILE_BACKEND="aot_eager")
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["kind"] == "speed" and doc["case"]["steps"] == 8 and doc["case"]["batch"] == 1
    assert doc["case"]["quantize"] == "dit=int8" and doc["case"]["vram_gib"] == 4.0
    runs = {run["impl"]: run for run in doc["runs"]}
    assert set(runs) == {"acestep-t4", "diffusers", "acestep", "acestep-fast"}
    assert (
        runs["acestep-t4"]["precision"] == "fp16-mixed" and runs["acestep-fast"]["fast_active"] == "compile"
    )
    for run in runs.values():
        assert run["finite"] and run["wall_s"] > 0 and run["rtf"] == run["wall_s"] / 10.0
        assert run["stages"]["dit_steps"] == 8.0 and run["stages"]["vae_decode"] > 0
        # The text encoder's mode was left to the engine's default: none on the CPU.
        assert run["quantized"] == {"dit": "int8", "text_encoder": "none"}
        assert set(run["quantized_linears"]) == {"dit"} and run["quantized_linears"]["dit"] > 0
        assert run["vram_gib"] == (15.0 if run["impl"] == "acestep-t4" else 4.0)
    assert runs["acestep"]["tier"] == "tier1" and runs["acestep"]["residency"]["compute"] == "cpu"
    # aot_eager runs the same kernels as eager: the compiled path must match it exactly.
    assert doc["checks"]["fast_vs_eager_rel_err"] == 0.0
    report = _bench("report", str(tmp_path), "--out-svg", str(tmp_path / "plot.svg"))
    assert report.returncode == 0, report.stderr
    assert "| acestep-fast | bfloat16 | compile |" in report.stdout
    assert report.stdout.count("| dit=int8, text_encoder=none | 4 |") == 3  # the quantized, VRAM cap columns
    assert "| dit=int8, text_encoder=none | 15 |" in report.stdout  # acestep-t4's card
    assert (
        "#### tiny-turbo text2music, 10 s, 8 steps, batch 1, quantize dit=int8, 4 GiB card" in report.stdout
    )
    assert (tmp_path / "plot.svg").read_text().count('class="bar"') == 4


def test_bad_requests_are_refused_with_a_reason():
    done = _bench("run", "--config", "2b-turbo", "--task", "lego")
    assert done.returncode == 2 and "lego needs a base model" in done.stderr
    done = _bench("frobnicate")
    assert done.returncode == 2 and "usage: python -m bench {run,report}" in done.stderr
    if not __import__("torch").cuda.is_available():
        done = _bench("run", "--config", "tiny-turbo", "--device", "cuda")
        assert done.returncode == 2 and "CUDA is not available" in done.stderr


def test_quantize_and_vram_options_are_checked_before_anything_is_built(capsys):
    from bench.speed import run

    cpu = ["--config", "tiny-turbo", "--device", "cpu"]
    assert run.main([*cpu, "--quantize", "fp8"]) == 2
    assert "--quantize dit=fp8 refused: fp8 needs a CUDA card" in capsys.readouterr().err
    for bad, reason in (("--quantize", "int9"), "unknown mode"), (("--vram-gib", "0"), "not a positive size"):
        with pytest.raises(SystemExit) as exit_:
            run.parse([*cpu, *bad])
        assert exit_.value.code == 2 and reason in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "dit_total", "transformer"),
    [("2b-turbo", 2_393_872_518, 1_575_458_880), ("xl-turbo", 4_987_310_726, None)],
)
def test_the_real_configurations_match_the_spec(config, dit_total, transformer):
    """Built on the meta device (no memory): the real configs' parameter counts (BENCHMARKS.md)."""
    from bench.speed import models

    built = models.build(config, torch.device("meta"), plan_named("bfloat16"))
    counts = models.parameter_count(built)
    dit = ("transformer", "condition_encoder", "audio_tokenizer", "audio_token_detokenizer")
    assert sum(counts[name] for name in dit) == dit_total
    assert counts["vae"] == 168_695_426
    if transformer is not None:
        assert counts["transformer"] == transformer
    assert built.components.transformer.dtype == torch.bfloat16

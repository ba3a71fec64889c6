"""CPU cost per step of the sampler's solvers, corrections and guidance variants (issue 22).

Times ``acestep.engine.sampling.denoise`` (the loop the engine runs) on a DiT with **random**
weights, float32, batch 1, at a 30 s latent (750 frames at 25 Hz, 64 latent channels as the real
model), for two transformer sizes:

- ``tiny``: ``acestep.testing.tiny_dit_config`` (hidden 32, 4 layers) with the real latent width;
- ``mid``: hidden 512, 8 layers, 4 query / 2 key-value heads of 128 (the real 2B's head width
  and query/key-value ratio), sliding window 128.

Cases: Euler (no DCW), Heun, Euler + DCW (double/haar, low, high, pix, double/db4), SDE (fresh
noise from a seeded ``torch.Generator``), Euler with velocity clamp + EMA; and base-style guided
runs at scale 7 (``apg_classic``, ``cfg``, ``adg``; the DiT runs on the doubled batch). Every step
is a full step (``final_jump`` off), so Heun evaluates the DiT twice on every step. The figure is
the median wall time of the warm runs divided by the steps.

Then ``dcw.correct`` alone on real-shape latents ([1, 750, 64] and [2, 7500, 64], a 300 s song
at batch 2), per mode and wavelet: the fixed cost DCW adds to each step, whatever the DiT size.

    python bench/bench_samplers.py                 # about 2.5 minutes on 2 idle cores
    python bench/bench_samplers.py --quick         # tiny DiT only, 2 rounds (about 30 s)
    python bench/bench_samplers.py --json out.json # default bench/results/samplers.json

Times are only comparable on an otherwise idle machine: the JSON records the load average and
CPU pressure before and after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import contention, git_commit, machine_facts, save_and_summarise

from acestep.checkpoints import convert, detect_variant
from acestep.checkpoints.loading import DIT_CLASSES
from acestep.engine.sampling import Condition, Guidance, SamplerSettings, denoise
from acestep.engine.sampling.dcw import DcwSettings, correct
from acestep.engine.schedules import build_schedule
from acestep.engine.seeds import generators, item_noise
from acestep.testing import fill_random, tiny_dit_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "samplers.json"
FRAMES = 750  # 30 s at 25 Hz
LATENT_DIM = 64  # the real model's latent channels
ENCODER_TOKENS = 128 + 512 + 1  # caption, lyric and timbre tokens, as bench_gpu_real_config.py
SHIFT = 3.0
SEED = 42
REAL_LATENT = {
    "in_channels": 3 * LATENT_DIM,
    "audio_acoustic_hidden_dim": LATENT_DIM,
    "timbre_hidden_dim": LATENT_DIM,
}
MID = {
    "hidden_size": 512,
    "intermediate_size": 1536,  # 3x hidden, as the 2B's 6144 / 2048
    "num_hidden_layers": 8,
    "layer_types": ["sliding_attention", "full_attention"] * 4,
    "num_attention_heads": 4,  # 512 / 128: the 2B's head width, 2 query heads per key-value head
    "num_key_value_heads": 2,
    "head_dim": 128,
    "sliding_window": 128,
}
MODELS = {"tiny": REAL_LATENT, "mid": REAL_LATENT | MID}
DCW_DEFAULT = DcwSettings("double", 0.05, 0.02, "haar")  # the request defaults (turbo's DCW)
GUIDANCE_SCALE = 7.0


@dataclass(frozen=True)
class Case:
    name: str
    settings: SamplerSettings = field(default_factory=lambda: SamplerSettings(final_jump=False))
    guidance: str | None = None  # a guidance variant: a base-style run on the doubled batch


def _euler(**changes) -> SamplerSettings:
    return SamplerSettings(final_jump=False, **changes)


CASES = (
    Case("euler"),
    Case("heun", _euler(heun=True)),
    Case("euler + dcw double haar", _euler(dcw=DCW_DEFAULT)),
    Case("euler + dcw low haar", _euler(dcw=DcwSettings("low", 0.05, 0.0, "haar"))),
    Case("euler + dcw high haar", _euler(dcw=DcwSettings("high", 0.05, 0.0, "haar"))),
    Case("euler + dcw pix", _euler(dcw=DcwSettings("pix", 0.05, 0.0, "haar"))),
    Case("euler + dcw double db4", _euler(dcw=DcwSettings("double", 0.05, 0.02, "db4"))),
    Case("sde", _euler(sde=True)),
    Case("euler + clamp 1.5 + ema 0.2", _euler(velocity_norm_threshold=1.5, velocity_ema_factor=0.2)),
    Case("guided apg_classic (scale 7)", guidance="apg_classic"),
    Case("guided cfg (scale 7)", guidance="cfg"),
    Case("guided adg (scale 7)", guidance="adg"),
)
DCW_SHAPES = ((1, 750), (2, 7500))  # (batch, frames): 30 s batch 1; 300 s batch 2
DCW_WAVELETS = ("haar", "db4", "sym8")


def dit_config(model: str, variant: str) -> dict:
    return tiny_dit_config(variant) | MODELS[model]


def build_transformer(model: str) -> torch.nn.Module:
    """The diffusers DiT at ``model``'s size, seeded random weights of a sane scale, float32."""
    config = convert.component_configs(dit_config(model, "turbo"))["transformer"]
    transformer = DIT_CLASSES["transformer"].from_config(config)
    fill_random(transformer, torch.Generator().manual_seed(0))
    return transformer.eval().requires_grad_(False)


def _prepare(case: Case, transformer, model: str, steps: int) -> tuple[Callable[[], torch.Tensor], int]:
    """A call running ``case``'s whole loop once from the same seeded noise, and its step count."""
    variant = detect_variant(dit_config(model, "base" if case.guidance else "turbo"))
    schedule, _ = build_schedule(variant, steps, SHIFT, None)
    device, dtype = torch.device("cpu"), torch.float32
    gen = torch.Generator().manual_seed(0)
    width = transformer.config.encoder_hidden_size or transformer.config.hidden_size
    condition = Condition(
        encoder_hidden_states=torch.randn(1, ENCODER_TOKENS, width, generator=gen),
        context_latents=torch.randn(1, FRAMES, 2 * LATENT_DIM, generator=gen),
    )
    null = torch.randn(1, 1, width, generator=gen)

    def run() -> torch.Tensor:
        guidance = None
        if case.guidance:  # fresh per run: APG's momentum belongs to one generation
            guidance = Guidance(GUIDANCE_SCALE, (0.0, 1.0), null, variant=case.guidance)
        item_gens = generators([SEED], device)
        noise = item_noise(item_gens, (FRAMES, LATENT_DIM), device, dtype)

        def fresh_noise() -> torch.Tensor:
            return item_noise(item_gens, (FRAMES, LATENT_DIM), device, dtype)

        return denoise(
            transformer, noise, schedule, condition, case.settings, guidance, fresh_noise=fresh_noise
        )

    return run, len(schedule)


def run_model(model: str, steps: int, repeats: int) -> dict:
    """Every case once as a warm-up, then ``repeats`` rounds of every case in turn.

    Rounds interleave the cases, so load from other processes spreads over all of them alike
    rather than inflating whichever case ran while it lasted.
    """
    transformer = build_transformer(model)
    params = sum(p.numel() for p in transformer.parameters())
    print(f"{model}: {params:,} parameters", file=sys.stderr, flush=True)
    prepared = [_prepare(case, transformer, model, steps) for case in CASES]
    wall: list[list[float]] = [[] for _ in CASES]
    cpu: list[list[float]] = [[] for _ in CASES]
    finite = [True] * len(CASES)
    for round_ in range(1 + repeats):
        for i, (run, _) in enumerate(prepared):
            started, cpu_started = time.perf_counter(), time.process_time()
            latents = run()
            if round_ > 0:
                wall[i].append(time.perf_counter() - started)
                cpu[i].append(time.process_time() - cpu_started)
            finite[i] = finite[i] and bool(torch.isfinite(latents).all())
        print(f"  round {round_}/{repeats} done", file=sys.stderr, flush=True)
    rows = []
    for i, case in enumerate(CASES):
        n = prepared[i][1]
        rows.append(
            {
                "case": case.name,
                "steps": n,
                "dit_batch": 2 if case.guidance else 1,
                "dit_calls_per_step": 2 if case.settings.heun else 1,
                "warm_runs_s": [round(t, 4) for t in wall[i]],
                "ms_per_step": round(statistics.median(wall[i]) / n * 1000, 3),
                "ms_per_step_min": round(min(wall[i]) / n * 1000, 3),
                "cpu_ms_per_step": round(statistics.median(cpu[i]) / n * 1000, 3),
                "finite": finite[i],
            }
        )
    euler = rows[0]
    for row in rows:
        row["ratio_to_euler"] = round(row["ms_per_step"] / euler["ms_per_step"], 3)
        row["ratio_to_euler_min"] = round(row["ms_per_step_min"] / euler["ms_per_step_min"], 3)
    return {"model": model, "transformer_params": params, "steps": steps, "repeats": repeats, "cases": rows}


def _median_call_ms(fn: Callable[[], object], calls: int, repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - started) / calls)
    return round(statistics.median(runs) * 1000, 3)


def run_dcw_alone(repeats: int) -> list[dict]:
    """``dcw.correct`` per mode and wavelet at t = 0.5 (both bands active), float32 latents."""
    rows = []
    settings = [DcwSettings("pix", 0.05, 0.0, "haar")]
    settings += [DcwSettings(m, 0.05, 0.02, w) for w in DCW_WAVELETS for m in ("low", "high", "double")]
    for batch, frames in DCW_SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, frames, LATENT_DIM, generator=gen)
        clean = torch.randn(batch, frames, LATENT_DIM, generator=gen)
        calls = 20 if batch * frames <= 1000 else 5
        for setting in settings:
            with torch.inference_mode():
                ms = _median_call_ms(lambda s=setting, x=x, y=clean: correct(x, y, 0.5, s), calls, repeats)
            rows.append(
                {
                    "shape": [batch, frames, LATENT_DIM],
                    "mode": setting.mode,
                    "wavelet": None if setting.mode == "pix" else setting.wavelet,
                    "ms_per_call": ms,
                }
            )
    return rows


def markdown(report: dict) -> str:
    lines = []
    for model in report["models"]:
        lines += [
            f"DiT `{model['model']}` ({model['transformer_params'] / 1e6:.2f} M transformer parameters), "
            f"{model['steps']} steps, median of {model['repeats']} warm runs:",
            "",
            "| case | DiT batch | DiT calls / step | ms / step (median) | x Euler | ms / step (min) "
            "| x Euler (min) | CPU ms / step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in model["cases"]:
            lines.append(
                f"| {row['case']} | {row['dit_batch']} | {row['dit_calls_per_step']} "
                f"| {row['ms_per_step']:.2f} | {row['ratio_to_euler']:.2f} | {row['ms_per_step_min']:.2f} "
                f"| {row['ratio_to_euler_min']:.2f} | {row['cpu_ms_per_step']:.2f} |"
            )
        lines.append("")
    shapes = [tuple(s) for s in dict.fromkeys(tuple(r["shape"]) for r in report["dcw_alone"])]
    lines += [
        "`dcw.correct` alone, ms per call (t = 0.5, float32):",
        "",
        "| mode | wavelet | " + " | ".join(f"[{', '.join(map(str, s))}]" for s in shapes) + " |",
        "|---|---|" + "---:|" * len(shapes),
    ]
    keyed = {(r["mode"], r["wavelet"], tuple(r["shape"])): r["ms_per_call"] for r in report["dcw_alone"]}
    for mode, wavelet in dict.fromkeys((r["mode"], r["wavelet"]) for r in report["dcw_alone"]):
        cells = [f"{keyed[(mode, wavelet, s)]:.2f}" for s in shapes]
        lines.append(f"| {mode} | {wavelet or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="JSON output path")
    parser.add_argument("--quick", action="store_true", help="tiny DiT only, fewer repeats")
    parser.add_argument("--steps", type=int, default=8, help="sampler steps per run (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="warm runs of the tiny DiT (default 5)")
    parser.add_argument("--mid-repeats", type=int, default=3, help="warm runs of the mid DiT (default 3)")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.repeats < 1 or args.mid_repeats < 1:
        parser.error("--steps must be at least 2, --repeats and --mid-repeats at least 1")
    repeats = 2 if args.quick else args.repeats
    started, started_at = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    contention_start = contention()
    models = [run_model("tiny", args.steps, repeats)]
    if not args.quick:
        models.append(run_model("mid", args.steps, args.mid_repeats))
    dcw_rows = run_dcw_alone(3 if args.quick else 7)
    report = {
        "benchmark": "sampler cost per step on CPU (random DiT weights, float32, batch 1, 750 frames)",
        "started": started_at,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "bench/bench_samplers.py", *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(),
        "frames": FRAMES,
        "latent_dim": LATENT_DIM,
        "encoder_tokens": ENCODER_TOKENS,
        "shift": SHIFT,
        "contention_start": contention_start,
        "contention_end": contention(),
        "bench_wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_facts(),
        "models": models,
        "dcw_alone": dcw_rows,
    }
    save_and_summarise(report, Path(args.json), markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

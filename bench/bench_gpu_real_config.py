"""Real 2B-configuration timings on one CUDA GPU, with random weights (no download needed).

Builds the diffusers ACE-Step 1.5 modules at the real 2B DiT configuration
(upstream's published configs) and the real Oobleck VAE configuration (section 9)
directly on the GPU with random initialisation, then times what dominates a generation:

- ``t2m_60s``: turbo text2music, 60 s = 1500 latent frames, 8 steps, no guidance;
- ``lego_120s``: base lego, 120 s = 3000 latent frames, 50 steps with APG guidance (batch
  doubled), plus the VAE encode of the 120 s source;
- the VAE decode of each result through ``acestep.engine.codec.AudioCodec`` (tiled, bounded).

The DiT loop is ``acestep.engine.sampling.denoise``, the one the engine runs, with the schedule,
shift and guidance the engine derives from ``GenerationRequest`` defaults (shift 3.0; base: APG at
scale 7.0 over the whole trajectory). Conditioning is random at realistic lengths (128 caption and
512 lyric tokens, the 750-frame timbre input); steps are timed with a CUDA synchronise after each.
It reports step
time, wall time, real-time factor (RTF = processing seconds / audio seconds; below 1 is faster
than real time) and ``torch.cuda.max_memory_allocated`` per phase. Random weights make noise,
but cost the same time and memory as trained ones.

    python bench/bench_gpu_real_config.py                     # on a CUDA machine
    python bench/bench_gpu_real_config.py --check-config      # anywhere: build on the meta device,
                                                              # check parameter counts against the spec
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import git_commit
from diffusers import AutoencoderOobleck
from speed.models import DIT_2B, VAE

from acestep import GenerationRequest
from acestep.checkpoints import convert, detect_variant
from acestep.checkpoints.loading import DIT_CLASSES
from acestep.engine.codec import AudioCodec
from acestep.engine.sampling import Condition, Guidance, SamplerSettings, denoise
from acestep.engine.schedules import build_schedule
from acestep.engine.seeds import generators, item_noise
from acestep.memory.precision import default_dtype
from acestep.testing import tiny_dit_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "gpu_real_config.json"
FRAMES_PER_SECOND = 25
SAMPLE_RATE = 48000

# upstream's published 2B DiT and VAE configs, shared with the
# ``python -m bench run`` suite.
REAL_2B = DIT_2B | {"dtype": "bfloat16"}
REAL_VAE = VAE
# Parameter counts of the real checkpoints (spec sections 5 and 9: 677 tensors, 337 MB bf16 VAE).
SPEC_PARAMS = {
    "dit_total": 2_393_872_518,
    "dit_tensors": 677,
    "transformer": 1_575_458_880,
    "vae": 168_695_426,
}
CASES = {
    "t2m_60s": {"variant": "turbo", "task": "text2music", "seconds": 60.0, "steps": 8, "source": False},
    "lego_120s": {"variant": "base", "task": "lego", "seconds": 120.0, "steps": 50, "source": True},
}
NO_CUDA = (
    "error: CUDA is not available. This benchmark times the real 2B configuration on an NVIDIA GPU "
    "(bf16 by default). Run it on a machine with a CUDA GPU and a CUDA build of torch, or run "
    "`python bench/bench_gpu_real_config.py --check-config` to check the configuration here."
)


def real_dit_config(variant: str) -> dict:
    """The upstream DiT ``config.json`` of the 2B ``variant`` (turbo / base / sft)."""
    config = tiny_dit_config(variant)
    config.update(REAL_2B)
    return config


DIT_TIMED = ("transformer", "condition_encoder")  # the networks the timed phases run


def build_dit(
    variant: str, device: torch.device, dtype: torch.dtype, names: tuple[str, ...] = DIT_TIMED
) -> dict[str, torch.nn.Module]:
    """Randomly initialised diffusers DiT components at the real configuration, on ``device``."""
    configs = convert.component_configs(real_dit_config(variant))
    modules = {}
    for name in names:
        with torch.device(device):
            module = DIT_CLASSES[name].from_config(configs[name])
        if device.type != "meta":
            torch.nn.Module.to(module, dtype=dtype)
        modules[name] = module.eval().requires_grad_(False)
    return modules


def build_vae(device: torch.device, dtype: torch.dtype) -> AutoencoderOobleck:
    with torch.device(device):
        vae = AutoencoderOobleck(**REAL_VAE)
    if device.type != "meta":
        torch.nn.Module.to(vae, dtype=dtype)
    return vae.eval().requires_grad_(False)


def _count(module: torch.nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), len(params)


def check_config() -> int:
    """Build every component on the meta device and compare parameter counts with the spec."""
    meta = torch.device("meta")
    dit = build_dit("base", meta, torch.bfloat16, names=tuple(DIT_CLASSES))
    counts = {name: _count(module) for name, module in dit.items()}
    total = sum(c[0] for c in counts.values())
    tensors = sum(c[1] for c in counts.values())
    vae = _count(build_vae(meta, torch.bfloat16))[0]
    for name, (params, n) in counts.items():
        print(f"{name:24s} {params:>15,d} parameters in {n} tensors")
    print(f"{'DiT total':24s} {total:>15,d} parameters in {tensors} tensors")
    print(f"{'VAE':24s} {vae:>15,d} parameters ({vae * 2 / 1e6:.0f} MB in bf16)")
    checks = {
        "dit_total": total,
        "dit_tensors": tensors,
        "transformer": counts["transformer"][0],
        "vae": vae,
    }
    wrong = {k: (v, SPEC_PARAMS[k]) for k, v in checks.items() if v != SPEC_PARAMS[k]}
    if wrong:
        print(f"MISMATCH with the spec (got, expected): {wrong}", file=sys.stderr)
        return 1
    print("parameter counts match upstream's (2B: 2,393,872,518 in 677 tensors)")
    return 0


def _sync() -> None:
    torch.cuda.synchronize()


def _gib(value: int) -> float:
    return round(value / 2**30, 2)


def _timed(fn, repeats: int) -> tuple[list[float], int, object]:
    """Run ``fn`` ``repeats`` times; wall seconds of each, peak bytes allocated, the last result."""
    torch.cuda.reset_peak_memory_stats()
    times, result = [], None
    for _ in range(repeats):
        _sync()
        started = time.perf_counter()
        result = fn()
        _sync()
        times.append(time.perf_counter() - started)
    return times, torch.cuda.max_memory_allocated(), result


def run_dit_case(name: str, spec: dict, args, device: torch.device, dtype: torch.dtype) -> dict:
    """Build the turbo or base DiT; time the condition encoder, then the denoising loop.

    Each phase gets one warm-up call, then ``repeats`` timed calls (median reported). The
    weights resident are the transformer and the condition encoder (the 5 Hz tokenizer and
    detokenizer, about 0.4 GB in bf16, are only needed for cover and are not built).
    """
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    built = time.perf_counter()
    modules = build_dit(spec["variant"], device, dtype)
    _sync()
    build_s = time.perf_counter() - built
    weights = torch.cuda.memory_allocated()
    transformer, encoder = modules["transformer"], modules["condition_encoder"]
    variant = detect_variant(real_dit_config(spec["variant"]), f"acestep-v15-{spec['variant']}")
    frames = int(spec["seconds"] * FRAMES_PER_SECOND)
    steps = spec["steps"]
    gen = torch.Generator(device=device).manual_seed(0)
    latent_dim, text_dim = REAL_2B["audio_acoustic_hidden_dim"], REAL_2B["text_hidden_dim"]

    def condition():
        with torch.inference_mode():
            text = torch.randn(1, args.text_tokens, text_dim, generator=gen, device=device)
            lyric = torch.randn(1, args.lyric_tokens, text_dim, generator=gen, device=device)
            timbre = torch.randn(1, 750, latent_dim, generator=gen, device=device)
            states, _ = encoder(
                text_hidden_states=text.to(dtype),
                text_attention_mask=torch.ones(1, args.text_tokens, dtype=torch.bool, device=device),
                lyric_hidden_states=lyric.to(dtype),
                lyric_attention_mask=torch.ones(1, args.lyric_tokens, dtype=torch.bool, device=device),
                refer_audio_acoustic_hidden_states_packed=timbre.to(dtype),
                refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=device),
            )
        return states

    condition()  # warm-up
    cond_times, cond_peak, states = _timed(condition, args.repeats)
    source = torch.randn(1, frames, latent_dim, generator=gen, device=device, dtype=dtype)
    mask = torch.ones(1, frames, latent_dim, device=device, dtype=dtype)
    cond = Condition(encoder_hidden_states=states, context_latents=torch.cat([source, mask], dim=-1))
    # Schedule and guidance exactly as AceStep.generate derives them from a request's defaults.
    lego = spec["task"] == "lego"
    request = GenerationRequest(
        task_type=spec["task"],
        inference_steps=steps,
        track_name="vocals" if lego else None,
        src_audio="source.wav" if lego else None,
    )
    guidance = None
    if variant.uses_guidance and request.guidance_scale > 1.0:
        guidance = Guidance(
            scale=request.guidance_scale,
            interval=(request.cfg_interval_start, request.cfg_interval_end),
            null_embedding=encoder.null_condition_emb,
        )
    schedule, _ = build_schedule(variant, request.inference_steps, request.shift, request.timesteps)
    settings, _ = SamplerSettings.resolve(request, variant)  # the variant's defaults (DCW on turbo)
    noise = item_noise(generators([42], device), (frames, latent_dim), device, dtype)
    step_ends: list[float] = []

    def on_step(done: int, total: int) -> None:
        _sync()
        step_ends.append(time.perf_counter())

    def loop(steps_schedule=schedule):
        step_ends.clear()
        step_ends.append(time.perf_counter())
        return denoise(transformer, noise, steps_schedule, cond, settings, guidance, on_step=on_step)

    _sync()
    cold_started = time.perf_counter()
    loop(schedule[:1])  # first call: CUDA kernels, cuBLAS/SDPA heuristics
    _sync()
    first_step_s = time.perf_counter() - cold_started
    step_times: list[float] = []

    def timed_loop():
        out = loop()
        step_times.extend(b - a for a, b in zip(step_ends[:-1], step_ends[1:], strict=True))
        return out

    loop_times, loop_peak, latents = _timed(timed_loop, args.repeats)
    finite = bool(torch.isfinite(latents).all())
    wall = statistics.median(loop_times)
    return {
        "case": name,
        **spec,
        "frames": frames,
        "dit_tokens": frames // 2,
        "guidance": None if guidance is None else {"scale": guidance.scale, "interval": guidance.interval},
        "shift": request.shift,
        "batch_in_dit": 1 if guidance is None else 2,
        "encoder_tokens": args.text_tokens + args.lyric_tokens + 1,
        "schedule": [round(t, 6) for t in schedule],
        "build_s": round(build_s, 2),
        "weights_gib": _gib(weights),
        "condition_encode_s": round(statistics.median(cond_times), 4),
        "cold_first_step_s": round(first_step_s, 4),
        "dit_wall_s": round(wall, 4),
        "dit_wall_s_all": [round(t, 4) for t in loop_times],
        "step_s_median": round(statistics.median(step_times), 5),
        "dit_rtf": round(wall / spec["seconds"], 5),
        "peak_gib": _gib(max(cond_peak, loop_peak)),
        "latents_finite": finite,
    }


def run_vae(args, device: torch.device, dtype: torch.dtype, cases: dict[str, dict]) -> dict:
    """Per case, the VAE decode of its latents and (lego) the encode of its source, via AudioCodec."""
    vae = build_vae(device, dtype)
    codec = AudioCodec(vae)
    weights = torch.cuda.memory_allocated()
    gen = torch.Generator(device=device).manual_seed(0)
    codec.decode(torch.randn(1, 256, codec.latent_dim, generator=gen, device=device, dtype=dtype))  # warm-up
    out = {
        "weights_gib": _gib(weights),
        "decode_chunk_frames": int(vae.tile_latent_min_length),
        "decode_overlap_frames": int(vae.tile_latent_overlap),
        "decode": {},
        "encode": {},
    }
    for name, spec in cases.items():
        seconds = spec["seconds"]
        frames = int(seconds * FRAMES_PER_SECOND)
        latents = torch.randn(1, frames, codec.latent_dim, generator=gen, device=device, dtype=dtype)
        times, peak, audio = _timed(lambda z=latents: codec.decode(z), args.repeats)
        wall = statistics.median(times)
        out["decode"][name] = {
            "frames": frames,
            "wall_s": round(wall, 4),
            "rtf": round(wall / seconds, 5),
            "peak_gib": _gib(peak),
            "samples": int(audio.shape[-1]),
        }
        if spec["source"]:
            wav = 0.1 * torch.randn(2, int(seconds * SAMPLE_RATE), generator=gen, device=device)
            times, peak, encoded = _timed(lambda w=wav: codec.encode(w, dtype), args.repeats)
            wall = statistics.median(times)
            out["encode"][name] = {
                "seconds": seconds,
                "wall_s": round(wall, 4),
                "rtf": round(wall / seconds, 5),
                "peak_gib": _gib(peak),
                "frames": int(encoded.shape[1]),
            }
    return out


def markdown(report: dict) -> str:
    vae = report["vae"]
    lines = [
        "| case | frames | steps | step ms | DiT s | DiT peak GiB | VAE encode s | VAE decode s "
        "| VAE peak GiB | total s | RTF |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in report["cases"]:
        dec = vae["decode"][case["case"]]
        enc = vae["encode"].get(case["case"])
        encode_s = enc["wall_s"] if enc else 0.0
        vae_peak = max(dec["peak_gib"], enc["peak_gib"] if enc else 0.0)
        total = case["condition_encode_s"] + encode_s + case["dit_wall_s"] + dec["wall_s"]
        lines.append(
            f"| {case['case']} ({case['variant']}) | {case['frames']} | {case['steps']} "
            f"| {case['step_s_median'] * 1000:.1f} | {case['dit_wall_s']:.2f} | {case['peak_gib']:.2f} "
            f"| {f'{encode_s:.2f}' if enc else '-'} | {dec['wall_s']:.2f} | {vae_peak:.2f} | {total:.2f} "
            f"| {total / case['seconds']:.4f} |"
        )
    lines += [
        "",
        "total = condition encoder + VAE encode of the source (lego) + DiT loop + VAE decode; the Qwen3 "
        "text encoder, audio file I/O and model loading are not timed. RTF = total / audio seconds. "
        "Peaks are torch.cuda.max_memory_allocated with the phase's own weights resident (the DiT and the "
        "VAE are measured separately).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="JSON output path")
    parser.add_argument("--dtype", default="bf16", help="bf16 (default), fp16, fp32, or auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per phase (median reported)")
    parser.add_argument("--text-tokens", type=int, default=128, help="caption prompt tokens")
    parser.add_argument("--lyric-tokens", type=int, default=512, help="lyric tokens")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of: {', '.join(CASES)}")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="no GPU needed: build on the meta device and check parameter counts",
    )
    args = parser.parse_args(argv)
    if args.check_config:
        return check_config()
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    device = torch.device("cuda")
    dtype = default_dtype(device, None if args.dtype == "auto" else args.dtype)
    started = time.perf_counter()
    cases = []
    for name in names:  # one model at a time: each case's modules are freed before the next
        cases.append(run_dit_case(name, CASES[name], args, device, dtype))
        torch.cuda.empty_cache()
    report = {
        "benchmark": "real 2B DiT + real VAE configuration, random weights, one GPU",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(),
        "gpu": torch.cuda.get_device_name(device),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dtype": str(dtype).removeprefix("torch."),
        "attention": "torch SDPA (diffusers default backend)",
        "cases": cases,
        "vae": run_vae(args, device, dtype, {name: CASES[name] for name in names}),
    }
    report["bench_wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['gpu']} (sm {report['capability']}), torch {report['torch']}, {report['dtype']}\n")
    print(markdown(report))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

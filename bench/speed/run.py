"""``python -m bench run``: time acestep against stock diffusers on one case, write JSON.

One case = config x task x seconds x steps x batch. In one process, on one set of random-weight
networks at the real configuration: the stock ``AceStepPipeline`` (baseline), acestep eager, then
acestep with the fast DiT path (last, because compiling changes the shared blocks in place);
with ``--t4`` also acestep under the T4 policy (fp16-mixed) on a fresh set. Each variant makes
one warm-up call (compilation included) and ``--runs`` timed calls; stage times come from
synchronised hooks on the networks, identical for both implementations.

``--quantize MODE`` quantizes every set's DiT and text encoder on the CPU before they move to the
device, as the engine does (the stock pipeline runs the same quantized modules); ``--vram-gib N``
runs the main set as on an N GiB card: the allocator capped there from the start (the stock
pipeline included) and acestep with that tier's limits and residency plan.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from acestep import GenerationRequest
from acestep.engine.quantize import cuda_capability
from acestep.memory.devices import apply_vram_cap, clear_vram_cap, total_gib
from acestep.memory.precision import plan_named
from acestep.memory.quantization import QuantizationError
from acestep.testing import synthetic_audio

from . import models as built
from . import options
from .timing import StageClock, TimedRunner

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "speed"
CAPTION = "energetic synth-pop with punchy drums, warm analog bass, bright lead vocal, 120 bpm, F minor"
LYRICS = (
    "[verse]\nneon rivers running through the city after midnight\n"
    "every window holds a story and a song we never finish\n"
    "[chorus]\nhold on, hold on, the night is young and we are burning\n"
    "hold on, hold on, the lights are ours until the morning\n"
) * 3  # about 520 byte-level tokens, a realistic lyric length
TOLERANCE = {"bfloat16": 0.05, "float16": 0.05, "float32": 1e-3}  # relative L2, fast vs eager latents


def _request(args, seed: int = 42) -> GenerationRequest:
    fields = {
        "caption": CAPTION,
        "lyrics": LYRICS,
        "audio_duration": args.seconds,
        "inference_steps": args.steps,
        "batch_size": args.batch,
        "seed": seed,
        "audio_format": "wav",
        "task_type": args.task,
    }
    if args.task == "lego":
        fields |= {"src_audio": str(args.source), "track_name": "vocals"}
    return GenerationRequest(**fields)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(device, call, runs: int) -> dict:
    """Warm-up once, then ``runs`` timed calls; ``call(clock)`` returns (latents or None, finite,
    seconds of file reading/writing to leave out of the wall time)."""
    clock = StageClock(device)
    started = time.perf_counter()
    call(clock)
    _sync(device)
    first = time.perf_counter() - started
    walls, stage_runs, latents, finite = [], [], None, True
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(runs):
        clock.reset()
        started = time.perf_counter()
        latents, ok, file_io = call(clock)
        _sync(device)
        walls.append(time.perf_counter() - started - file_io)
        clock.totals["file_io"] += file_io
        stage_runs.append(clock.summary())
        finite = finite and ok
    stages = {key: statistics.median(run[key] for run in stage_runs) for key in stage_runs[0]}
    result = {"timed_runs": runs, "first_call_s": round(first, 3), "wall_s": statistics.median(walls)}
    result |= {"stages": stages, "finite": bool(finite), "dit_step_s": [round(t, 5) for t in clock.steps]}
    if device.type == "cuda":
        result["peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return result | {"_latents": latents}


def _stock(models, request: GenerationRequest, source: torch.Tensor | None, runs: int) -> dict:
    built.on_device(models)  # under --vram-gib this may not fit: a finding, reported as the run's error
    pipe = built.stock_pipeline(models)
    pipe.set_progress_bar_config(disable=True)
    parts = models.components
    device = models.device

    def call(clock: StageClock):
        with clock.watch(parts):
            generators = [
                torch.Generator(device).manual_seed(request.seed + i) for i in range(request.batch_size)
            ]
            extra = {"src_audio": source, "track_name": "vocals"} if source is not None else {}
            audio = pipe(
                prompt=[request.caption] * request.batch_size,
                lyrics=[request.lyrics] * request.batch_size,
                audio_duration=request.audio_duration,
                num_inference_steps=request.inference_steps,
                guidance_scale=request.guidance_scale if models.paths.variant.uses_guidance else 1.0,
                shift=request.shift,
                generator=generators,
                task_type=request.task_type,
                output_type="pt",
                **extra,
            ).audios
        return None, bool(torch.isfinite(audio).all()), 0.0

    return _measure(device, call, runs)


def _acestep(
    models, request: GenerationRequest, fast: str, runs: int, out: Path, cap_gib: float | None = None
) -> dict:
    engine = built.engine(models, fast, cap_gib)
    engine.dit = TimedRunner(engine.dit)
    captured: list[torch.Tensor] = []
    decode = engine.codec.decode

    def capturing_decode(latents):
        captured.append(latents.detach().float().cpu())
        return decode(latents)

    engine.codec.decode = capturing_decode

    def call(clock: StageClock):
        captured.clear()
        engine.dit.clock = clock
        with clock.watch(models.components, dit_hook=False):
            try:
                result = engine.generate(request, out)
            except Exception as exc:  # NaN latents or silent output: a finding, not a crash
                if "NaN" not in str(exc) and "silent" not in str(exc):
                    raise
                return None, False, 0.0
        # Reading the source file and writing WAVs are not generation: the stock pipeline gets a
        # tensor and returns one.
        return (
            torch.cat(captured),
            True,
            result.timings.get("save", 0.0) + result.timings.get("load_audio", 0.0),
        )

    result = _measure(models.device, call, runs)
    result["fast_active"] = engine.dit.runner.active
    if engine.limits is not None:
        result["tier"] = engine.limits.tier.name
    result["residency"] = engine.residency.plan.as_dict()  # where each network waits between uses
    result |= _park_wake(engine, models.device)
    return result


def _park_wake(engine, device: torch.device) -> dict:
    """Park and wake twice through pinned buffers (the first park allocates them), then once
    with plain copies; seconds of the last pinned cycle and of the plain one."""
    if device.type != "cuda":
        return {}

    def cycle() -> tuple[float, float]:
        started = time.perf_counter()
        engine.park()
        _sync(device)
        parked = time.perf_counter() - started
        started = time.perf_counter()
        engine.wake()
        _sync(device)
        return round(parked, 3), round(time.perf_counter() - started, 3)

    host = engine.residency.host
    cycle()
    park, wake = cycle()
    engine.residency.host = None
    park_plain, wake_plain = cycle()
    engine.residency.host = host
    return {"park_s": park, "wake_s": wake, "park_plain_s": park_plain, "wake_plain_s": wake_plain}


def _release(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        clear_vram_cap(device)  # the T4 run's 16 GB cap ends with it (--vram-gib's is set after)


def _relative(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return float((a - b).norm() / b.norm())


def _machine(device: torch.device) -> dict:
    import diffusers

    info = {"torch": torch.__version__, "diffusers": diffusers.__version__, "host_cpus": _cpus()}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        info |= {"device": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}"}
    else:
        info["device"] = platform.processor() or platform.machine()
    return info


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _variant(name: str, impl: str, precision: str, fast: str, measure) -> dict:
    print(f"[bench] {name}: {impl} ({precision}, fast {fast})", file=sys.stderr, flush=True)
    try:
        result = measure()
    except Exception as exc:  # one failed variant is reported, the others still run
        print(f"[bench] {impl} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return {"impl": impl, "precision": precision, "fast": fast, "error": f"{type(exc).__name__}: {exc}"}
    return {"impl": impl, "precision": precision, "fast": fast} | result


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(built.CONFIGS), default="2b-turbo")
    parser.add_argument("--task", choices=("text2music", "lego"), default="text2music")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=None, help="default: 8 turbo, 50 base")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", help="precision of the main runs (a policy name)")
    parser.add_argument("--fast", default="graphs", choices=("off", "compile", "graphs"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--t4", action="store_true", help="also run the T4 policy (fp16-mixed)")
    parser.add_argument(
        "--quantize",
        default="none",
        help="quantize the DiT and text encoder as ACESTEP_QUANTIZE says: none (default), int8, fp8, "
        "w8a8, auto, or per component (dit=int8,text_encoder=none)",
    )
    parser.add_argument(
        "--vram-gib",
        type=_positive_gib,
        default=None,
        help="run the main set as on a card of this size: its tier's plan, the allocator capped there",
    )
    parser.add_argument("--skip", default="", help="comma-separated impls to leave out")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 8 if built.CONFIGS[args.config][1] == "turbo" else 50
    if args.task == "lego" and built.CONFIGS[args.config][1] == "turbo":
        parser.error("lego needs a base model (--config 2b-base)")
    try:
        args.quantize = options.canonical(args.quantize)
    except QuantizationError as exc:
        parser.error(f"--quantize: {exc}")
    return args


def _positive_gib(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size in GiB")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2
    try:
        options.check_quantize(args.quantize, device.type, cuda_capability(device))
    except options.OptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = f"{args.config}-{args.task}-{int(args.seconds)}s-{args.steps}st-b{args.batch}"
    name += options.file_tag(args.quantize, args.vram_gib)
    skip = {item.strip() for item in args.skip.split(",") if item.strip()}
    work = Path(tempfile.mkdtemp(prefix="acestep-bench-"))
    source_wave = None
    if args.task == "lego":
        import soundfile as sf

        args.source = work / "source.wav"
        wave = synthetic_audio(args.seconds, seed=1)
        sf.write(str(args.source), wave, 48000)
        source_wave = torch.from_numpy(wave.T.copy()).float()
    request = _request(args)
    out = args.out or RESULTS / f"{name}.json"
    document = {
        "kind": "speed",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _commit(),
        "command": "python -m bench run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": _machine(device),
        "case": {
            "config": args.config,
            "task": args.task,
            "seconds": args.seconds,
            "steps": args.steps,
            "batch": args.batch,
            "device": args.device,
            "quantize": args.quantize,
            "vram_gib": args.vram_gib,
        },
        "runs": [],
        "checks": {},
    }
    latents: dict[str, torch.Tensor | None] = {}

    def record(impl: str, precision: str, fast: str, measure, models, cap_gib: float | None) -> None:
        """Run one variant and rewrite the file, so a later crash or timeout keeps what ran."""
        if impl in skip:
            return
        run = _variant(name, impl, precision, fast, measure)
        run |= {"quantized": options.quantized_modes(models.quantization), "vram_gib": cap_gib}
        run["quantized_linears"] = models.quantized_linears
        latents[impl] = run.pop("_latents", None)
        if "wall_s" in run:
            run["rtf"] = run["wall_s"] / args.seconds
        document["runs"].append(run)
        error = _relative(latents.get("acestep-fast"), latents.get("acestep"))
        if error is not None:
            tolerance = TOLERANCE.get(args.dtype, 0.05)
            document["checks"] = {"fast_vs_eager_rel_err": error, "fast_vs_eager_tolerance": tolerance}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=2) + "\n")

    def build(precision: str, gib: float | None) -> built.Models:
        # ``auto`` components resolve as the engine would on a card of ``gib``.
        plan = options.quantization_plan(args.quantize, device.type, gib)
        return built.build(args.config, device, plan_named(precision), quantization=plan)

    if args.t4:  # first, on its own set of networks: the fast path below recompiles shared blocks
        cap = built.T4_GIB
        t4 = build("fp16-mixed", cap if device.type == "cuda" else None)
        record(
            "acestep-t4",
            "fp16-mixed",
            "off",
            partial(_acestep, t4, request, "off", args.runs, work, cap),
            t4,
            cap,
        )
        t4 = None  # one set of networks on the device at a time (peak memory figures)
        _release(device)
    main_impls = {"diffusers", "acestep"} | ({"acestep-fast"} if args.fast != "off" else set())
    if main_impls <= skip:  # only the T4 run was asked for: the main set is not built
        print(f"[bench] wrote {out}", file=sys.stderr)
        return 0
    cap = args.vram_gib
    models = build(args.dtype, cap if cap is not None else total_gib(device))
    print(f"[bench] built {args.config}: {built.parameter_count(models)}", file=sys.stderr, flush=True)
    apply_vram_cap(device, cap)  # from the start: the stock pipeline runs on the simulated card too
    stock = partial(_stock, models, request, source_wave, args.runs)
    record("diffusers", args.dtype, "off", stock, models, cap)
    eager = partial(_acestep, models, request, "off", args.runs, work, cap)
    record("acestep", args.dtype, "off", eager, models, cap)
    if args.fast != "off":
        fast = partial(_acestep, models, request, args.fast, args.runs, work, cap)
        record("acestep-fast", args.dtype, args.fast, fast, models, cap)
    print(f"[bench] wrote {out}", file=sys.stderr)
    return 0

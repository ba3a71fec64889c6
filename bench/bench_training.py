"""Cost of one LoRA training update at the real 2B DiT configuration, with random weights.

Builds the diffusers transformer at the real 2B configuration (``bench_gpu_real_config``'s
upstream config, random initialisation, nothing downloaded), attaches a LoRA with
``acestep.training.adapter.TrainableAdapter`` (rank 64, alpha 128 by default: q/k/v/o of the self-
and cross-attention of all 24 layers, as a run does) and times the update the trainer makes
(``acestep/training/trainer.py``): the objective's timesteps and noise, the DiT's forward, the
flow-matching loss, the backward pass, gradient clipping, the optimizer and the schedule, built
from ``acestep.training``'s own pieces. Latents, condition states and the null embedding are
random tensors of the real shapes (no VAE or text encoder): a crop of ``--crop-seconds`` is
25 latent frames a second (12.5 DiT tokens), the condition ``--condition-tokens`` long.

Each case (with and without gradient checkpointing) runs in a fresh process: one warm-up update,
then ``--steps`` timed ones (median reported). Peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss``
of that process; on CUDA also ``torch.cuda.max_memory_allocated`` and updates per second. The
memory estimate ``acestep.memory.training_fit`` refuses runs with is printed beside the figures.
Precision follows the trainer: the policy's dtype for the frozen DiT (bf16 or fp16-mixed on GPUs,
float32 on CPU) with autocast on CUDA, the adapter in float32.

    python bench/bench_training.py                                # CPU: both cases, 10 s crop
    python bench/bench_training.py --device cuda --crop-seconds 60 --rank 64 --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from _common import contention, git_commit, machine_facts, save_and_summarise

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "training.json"
LATENT_CHANNELS = 64  # the VAE's latent width (context = silence latents + chunk mask: twice it)
CONDITION_TOKENS = 641  # bench_gpu_real_config's 128 caption + 512 lyric + 1 timbre tokens


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default=None, help="the frozen DiT's precision (default: the policy's)")
    p.add_argument("--variant", choices=("turbo", "base"), default="turbo", help="the objective")
    p.add_argument("--crop-seconds", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--alpha", type=float, default=None, help="default: twice the rank")
    p.add_argument("--condition-tokens", type=int, default=CONDITION_TOKENS)
    p.add_argument("--steps", type=int, default=3, help="timed updates per case, after one warm-up")
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only the case with (or without) it; default: both, each in its own process",
    )
    p.add_argument("--json", default=str(DEFAULT_JSON))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(args: argparse.Namespace) -> dict:
    """One case in this process: build, attach, one warm-up update, ``--steps`` timed updates."""
    import torch
    from bench_gpu_real_config import build_dit, real_dit_config

    from acestep.memory.precision import precision_plan
    from acestep.memory.training_fit import DitShape, estimate_gib
    from acestep.training.adapter import TrainableAdapter
    from acestep.training.batches import derived_seed, generator
    from acestep.training.objective import Objective, flow_loss, noisy_input
    from acestep.training.optimizers import build_optimizer, build_schedule
    from acestep.training.request import TrainingRequest

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = precision_plan(device, args.dtype)
    dtype = precision.torch_dtype
    request = TrainingRequest(
        dataset="synthetic",
        lora_rank=args.rank,
        lora_alpha=args.alpha or 2.0 * args.rank,
        train_batch_size=args.batch_size,
        gradient_accumulation=1,
        crop_seconds=args.crop_seconds,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    started = time.perf_counter()
    torch.manual_seed(0)
    config = real_dit_config(args.variant)
    transformer = build_dit(args.variant, device, dtype, names=("transformer",))["transformer"]
    sync()
    build_s = time.perf_counter() - started
    rss_built = _peak_rss_mib()
    base_params = sum(p.numel() for p in transformer.parameters())  # before the adapter joins them
    transformer.train()
    if request.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    adapter = TrainableAdapter(transformer, request, request.training_seed)
    params = adapter.parameters()
    total = 1 + args.steps
    optimizer = build_optimizer(request, params)
    scheduler = build_schedule(optimizer, request, total)
    objective = Objective.for_variant(
        args.variant == "turbo",
        request.training_shift,
        request.timestep_mu,
        request.timestep_sigma,
        request.cfg_ratio,
    )

    data = torch.Generator().manual_seed(1)
    frames = int(args.crop_seconds * 25) // 2 * 2  # whole DiT tokens, as batches.py crops
    batch, hidden = args.batch_size, config["hidden_size"]
    x0 = torch.randn(batch, frames, LATENT_CHANNELS, generator=data)
    valid = torch.ones(batch, frames)
    states = torch.randn(batch, args.condition_tokens, hidden, generator=data)
    null = torch.randn(1, 1, hidden, generator=data)
    silence = 0.1 * torch.randn(batch, frames, LATENT_CHANNELS, generator=data)
    context = torch.cat([silence, torch.ones_like(silence)], dim=-1)
    autocast = torch.autocast("cuda", dtype=dtype) if cuda and dtype != torch.float32 else nullcontext()
    scaler = torch.amp.GradScaler("cuda") if cuda and dtype == torch.float16 else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def update(step: int) -> dict:
        """One optimizer update as ``Trainer._train`` makes it, timed by phase."""
        optimizer.zero_grad(set_to_none=True)
        rng = generator(request.training_seed, step, 0)
        torch.manual_seed(derived_seed(request.training_seed, step, 0, 0xD0))
        sync()
        t0, cpu0 = time.perf_counter(), time.process_time()
        noise = torch.randn(x0.shape, generator=rng)
        t = objective.timesteps(batch, rng)
        dropped = objective.drop_conditions(states, null, rng)
        x0_d, noise_d = x0.to(device), noise.to(device)
        with autocast:
            predicted = transformer(
                hidden_states=noisy_input(x0_d, noise_d, t.to(device)).to(dtype),
                timestep=t.to(device, dtype),
                timestep_r=t.to(device, dtype),
                encoder_hidden_states=dropped.to(device, dtype),
                context_latents=context.to(device, dtype),
                return_dict=False,
            )[0]
            loss = flow_loss(predicted, x0_d, noise_d, valid.to(device))
        sync()
        t1 = time.perf_counter()
        (scaler.scale(loss) if scaler else loss).backward()
        sync()
        t2 = time.perf_counter()
        if scaler:
            scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, request.max_grad_norm)
        (scaler.step(optimizer), scaler.update()) if scaler else optimizer.step()
        scheduler.step()
        sync()
        t3 = time.perf_counter()
        return {
            "step_s": t3 - t0,
            "cpu_s": time.process_time() - cpu0,  # every thread's CPU time: robust to other load
            "forward_s": t1 - t0,
            "backward_s": t2 - t1,
            "optimizer_s": t3 - t2,
            "loss": float(loss.detach()),
            "grad_norm": float(norm),
        }

    warmup = update(0)
    timed = [update(step) for step in range(1, total)]
    median = {
        k: round(statistics.median(r[k] for r in timed), 3)
        for k in ("step_s", "cpu_s", "forward_s", "backward_s", "optimizer_s")
    }
    shape = DitShape.from_config(config)
    bytes_per_value = 4 if dtype == torch.float32 else 2
    result = {
        "gradient_checkpointing": request.gradient_checkpointing,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "variant": args.variant,
        "crop_seconds": args.crop_seconds,
        "frames": frames,
        "dit_tokens": frames // 2,
        "condition_tokens": args.condition_tokens,
        "batch": batch,
        "rank": request.lora_rank,
        "alpha": request.lora_alpha,
        "transformer_params": base_params,
        "adapter_params": adapter.trainable_count(),
        "build_s": round(build_s, 1),
        "warmup_step_s": round(warmup["step_s"], 3),
        "steps_s": [round(r["step_s"], 3) for r in timed],
        "median": median,
        "steps_per_s": round(1.0 / median["step_s"], 4),
        "losses": [round(r["loss"], 4) for r in [warmup, *timed]],
        "grad_norms": [round(r["grad_norm"], 4) for r in [warmup, *timed]],
        "peak_rss_mib": round(_peak_rss_mib()),
        "rss_after_build_mib": round(rss_built),
        "estimate_gib": round(
            estimate_gib(
                shape, args.rank, args.crop_seconds, batch, request.gradient_checkpointing, bytes_per_value
            ),
            2,
        ),
    }
    if cuda:
        result["peak_vram_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def _child_args(args: argparse.Namespace, checkpointing: bool) -> list[str]:
    flags = ["--device", args.device, "--variant", args.variant, "--crop-seconds", str(args.crop_seconds),
             "--batch-size", str(args.batch_size), "--rank", str(args.rank), "--steps", str(args.steps),
             "--condition-tokens", str(args.condition_tokens)]  # fmt: skip
    flags += ["--dtype", args.dtype] if args.dtype else []
    flags += ["--alpha", str(args.alpha)] if args.alpha else []
    flags.append("--gradient-checkpointing" if checkpointing else "--no-gradient-checkpointing")
    return [sys.executable, __file__, "--child", *flags]


def markdown(report: dict) -> str:
    rows = [
        "| gradient checkpointing | s / update (median) | CPU s / update | forward s | backward s "
        "| optimizer s | updates / s | peak RSS MiB | peak VRAM GiB | estimate GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in report["cases"]:
        m = case["median"]
        rows.append(
            f"| {'on' if case['gradient_checkpointing'] else 'off'} | {m['step_s']} | {m['cpu_s']} "
            f"| {m['forward_s']} | {m['backward_s']} | {m['optimizer_s']} | {case['steps_per_s']} "
            f"| {case['peak_rss_mib']} | {case.get('peak_vram_gib', '-')} | {case['estimate_gib']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        print(json.dumps(run_case(args)))
        return 0
    started = time.perf_counter()
    contention_start = contention()
    wanted = [args.gradient_checkpointing] if args.gradient_checkpointing is not None else [False, True]
    cases = []
    for checkpointing in wanted:
        done = subprocess.run(_child_args(args, checkpointing), capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        cases.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report = {
        "benchmark": "training",
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(
            ["python", "bench/bench_training.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine_facts(),
        "contention_start": contention_start,
        "contention_end": contention(),
        "bench_wall_s": round(time.perf_counter() - started, 1),
        "cases": cases,
    }
    save_and_summarise(report, Path(args.json), markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

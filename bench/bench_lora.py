"""LoRA costs on the real 2B DiT configuration, with random weights (no download needed).

Builds the diffusers transformer at the real 2B configuration, writes a random adapter for it
(rank 64, alpha 128, every self- and cross-attention projection of all 24 layers, as upstream's
trainer targets), and measures through ``acestep.lora.adapters.Adapters``, the code the engine
runs:

- load (read the file, convert, attach), the adapter's bytes, switching between two adapters, the
  fused mode's fuse (saving the originals) and restore, and the final unload;
- the DiT's denoising time for a few steps with no adapter, with the adapter beside the weights
  (runtime) and fused into them;
- that the base output is bit-identical before any adapter, after switching and after unload.

    python bench/bench_lora.py                    # CUDA (bf16) if present, else CPU (float32: a
                                                  # CPU without bf16 units is far slower in bf16)
    python bench/bench_lora.py --seconds 60 --steps 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import git_commit, write_report
from bench_gpu_real_config import REAL_2B, build_dit
from safetensors.torch import save_file

from acestep.engine.sampling import Condition, denoise
from acestep.lora.adapters import Adapters

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "lora" / "lora.json"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FRAMES_PER_SECOND = 25


def write_adapter(transformer: torch.nn.Module, path: Path, rank: int, alpha: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS) and "attn" in name:
            a = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
            b = torch.randn(module.out_features, rank, generator=generator) * 0.01
            tensors[f"transformer.{name}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"transformer.{name}.lora_B.weight"] = b.to(torch.bfloat16)
    config = json.dumps({"r": rank, "lora_alpha": alpha})
    save_file(tensors, str(path), metadata={"acestep_base_variant": "turbo", "lora_adapter_metadata": config})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    started = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length the DiT runs at")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per timed run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default=None, help="default: bf16 on CUDA, else float32"
    )
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    transformer = build_dit("turbo", device, dtype, names=("transformer",))["transformer"]
    frames = int(args.seconds * FRAMES_PER_SECOND)
    latent, hidden = REAL_2B["audio_acoustic_hidden_dim"], REAL_2B["hidden_size"]
    gen = torch.Generator(device=device).manual_seed(0)
    noise = torch.randn(1, frames, latent, generator=gen, device=device, dtype=dtype)
    states = torch.randn(1, 641, hidden, generator=gen, device=device, dtype=dtype)  # 128+512+1 tokens
    context = torch.randn(1, frames, 2 * latent, generator=gen, device=device, dtype=dtype)
    condition = Condition(encoder_hidden_states=states, context_latents=context)
    schedule = [1.0 - i / args.steps for i in range(args.steps)]

    def denoise_s() -> tuple[float, torch.Tensor]:
        runs = [timed(lambda: denoise(transformer, noise, schedule, condition), device)]
        runs += [timed(lambda: denoise(transformer, noise, schedule, condition), device)
                 for _ in range(args.repeats - 1)]  # fmt: skip
        return statistics.median(t for t, _ in runs), runs[-1][1]

    with tempfile.TemporaryDirectory() as folder:
        for index, name in enumerate(("style_a", "style_b")):
            path = Path(folder) / f"{name}.safetensors"
            write_adapter(transformer, path, args.rank, 2.0 * args.rank, index)
        size = (Path(folder) / "style_a.safetensors").stat().st_size
        adapters = Adapters(transformer, "turbo", directory=folder, fuse=False)
        denoise(transformer, noise, schedule[:1], condition)  # warm-up
        base_s, base = denoise_s()
        load_s, _ = timed(lambda: adapters.load(["style_a", "style_b"]), device)
        adapter_bytes = adapters.loaded["style_a"].nbytes
        first_apply_s, _ = timed(lambda: adapters.apply((("style_a", 1.0),)), device)
        runtime_s, with_a = denoise_s()
        switch_s, _ = timed(lambda: adapters.apply((("style_b", 1.0),)), device)
        adapters.apply(())
        _, after_switch = denoise_s()
        adapters.fuse = True
        fuse_s, _ = timed(lambda: adapters.apply((("style_a", 1.0),)), device)
        fused_bytes = adapters.nbytes() - 2 * adapter_bytes
        fused_s, fused_a = denoise_s()
        restore_s, _ = timed(lambda: adapters.apply(()), device)
        _, after_restore = denoise_s()
        unload_s, _ = timed(adapters.unload, device)
        _, after_unload = denoise_s()

    report = {
        "benchmark": "lora",
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "config": {
            "dit": "2B turbo (random weights)",
            "dtype": str(dtype).removeprefix("torch."),
            "seconds": args.seconds,
            "steps": args.steps,
            "rank": args.rank,
            "alpha": 2.0 * args.rank,
            "layers_adapted": 192,
        },
        "adapter_file_mib": round(size / 2**20, 1),
        "adapter_resident_mib": round(adapter_bytes / 2**20, 1),
        "fused_originals_mib": round(fused_bytes / 2**20, 1),
        "load_two_s": round(load_s, 3),
        "activate_s": round(first_apply_s, 4),
        "switch_s": round(switch_s, 4),
        "fuse_s": round(fuse_s, 3),
        "restore_s": round(restore_s, 3),
        "unload_s": round(unload_s, 3),
        "denoise_s": {"base": round(base_s, 3), "runtime": round(runtime_s, 3), "fused": round(fused_s, 3)},
        "runtime_overhead": round(runtime_s / base_s - 1, 4),
        "fused_overhead": round(fused_s / base_s - 1, 4),
        "base_identical_after_switch": bool(torch.equal(after_switch, base)),
        "base_identical_after_fuse_restore": bool(torch.equal(after_restore, base)),
        "base_identical_after_unload": bool(torch.equal(after_unload, base)),
        "adapter_changes_output": not torch.equal(with_a, base),
        "fused_vs_runtime_max_abs": float((fused_a.float() - with_a.float()).abs().max()),
    }
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

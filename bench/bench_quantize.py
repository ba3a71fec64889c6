"""Weight quantization at the real configurations on CPU, with random weights: bytes, cost, error.

For each component (the 2B DiT's transformer, the text encoder; optionally the XL transformer and
the 5 Hz LMs) and each case (a storage dtype and a quantization mode, acestep/memory/quantization.py):

- builds the network at upstream's configuration (``acestep.checkpoints.component_bytes``) on the CPU
  with a fixed seed (the same random weights in every case), timed as ``build_s``;
- casts it to the case's dtype and quantizes it the way the engine does
  (``acestep.engine.quantize.quantize_module``), timed as ``quantize_s``;
- weighs it: ``measured`` is what its tensors hold (a torchao tensor: its int8 ``qdata`` and
  float32 ``scale``), ``computed`` is ``component_bytes``' figure for the same network;
- runs one forward on a fixed random input (the DiT: ``--seconds`` of latents at 25 frames a
  second, batch 1, 641 condition tokens, t = 0.5; the text encoder and LMs: ``--tokens`` random
  token ids) and reports the relative L2 difference of the output from the float32 case's
  (``||y - y_fp32|| / ||y_fp32||``), and the forward's time.

Random weights make no music, but the arithmetic and bytes are those of the real networks; the
error of trained weights may differ (their outliers are what int8's per-channel scale absorbs).

    python bench/bench_quantize.py                                   # 2B DiT + text encoder
    python bench/bench_quantize.py --components dit-xl,lm-1.7B       # bigger (needs ~20 GB RAM)
    python bench/bench_quantize.py --cases float32:none,float32:int8 --seconds 10
    python bench/bench_quantize.py --device cuda --seconds 60      # the int8 time cost on a GPU
    python bench/bench_quantize.py --cache /tmp/qcache --cases float32:int8   # the quantized cache

With ``--cache FOLDER`` each quantized case also writes its quantized cache entry there
(``acestep/engine/quant_cache.py``), timed as ``cache_write_s``, then builds the network again and
reads the entry into it instead of quantizing, timed as ``cache_read_s`` (checked bit for bit).
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch
from _common import contention, git_commit, machine_facts, save_and_summarise

from acestep.checkpoints import component_bytes as cb
from acestep.engine.quant_cache import entry_for
from acestep.engine.quantize import LM_KEPT, quantize_module, torchao_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "quantize.json"
FRAMES_PER_SECOND = 25
CONDITION_TOKENS = 641  # bench_gpu_real_config's 128 caption + 512 lyric + 1 timbre tokens
LATENT_CHANNELS = 64
# bench component -> (component_bytes' component, the network in it that is built and run)
BENCH_COMPONENTS = {
    "dit": ("dit-2b", "transformer"),
    "dit-xl": ("dit-xl", "transformer"),
    "text_encoder": ("text_encoder", "text_encoder"),
    **{f"lm-{size}": (f"lm-{size}", "lm") for size in cb.LMS},
}
REFERENCE = ("float32", "none")
DEFAULT_CASES = "float32:none,bfloat16:none,float32:int8,bfloat16:int8"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--components", default="dit,text_encoder", help=f"of {', '.join(BENCH_COMPONENTS)}")
    p.add_argument(
        "--cases", default=DEFAULT_CASES, help="dtype:mode pairs; float32:none is always run first"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="DiT latent length")
    p.add_argument("--tokens", type=int, default=64, help="text encoder / LM prompt length")
    p.add_argument("--device", default="cpu", help="where the forward runs (quantized on the CPU first)")
    p.add_argument("--cache", default="", help="a folder: also time writing and reading the quantized cache")
    p.add_argument("--json", default=str(DEFAULT_JSON))
    return p


def build(component: str, part: str) -> torch.nn.Module:
    """The network at the real configuration on the CPU, float32, the same weights every call."""
    kind, config = cb.COMPONENTS[component]
    torch.manual_seed(0)
    if kind == "dit":
        from acestep.checkpoints.convert import component_configs

        return cb.DIT_PARTS[part].from_config(component_configs(dict(config))[part]).eval()
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    cls = Qwen3ForCausalLM if kind == "lm" else Qwen3Model
    return cls(Qwen3Config(**config)).eval()


def stored_bytes(module: torch.nn.Module) -> int:
    """What the module's tensors hold; a torchao tensor counts its ``qdata`` and ``scale``."""
    total = 0
    for tensor in {id(t): t for t in (*module.parameters(), *module.buffers())}.values():
        inner = (tensor.qdata, tensor.scale) if hasattr(tensor, "qdata") else (tensor,)
        total += sum(t.untyped_storage().nbytes() for t in inner)
    return total


def inputs(component: str, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    kind, config = cb.COMPONENTS[component]
    data = torch.Generator().manual_seed(1)
    if kind != "dit":
        return {"input_ids": torch.randint(0, config["vocab_size"], (1, args.tokens), generator=data)}
    frames = int(args.seconds * FRAMES_PER_SECOND) // 2 * 2  # whole DiT tokens (2x patching)
    width = config.get("encoder_hidden_size", config["hidden_size"])
    return {
        "hidden_states": torch.randn(1, frames, LATENT_CHANNELS, generator=data),
        "timestep": torch.full((1,), 0.5),
        "timestep_r": torch.full((1,), 0.5),
        "encoder_hidden_states": torch.randn(1, CONDITION_TOKENS, width, generator=data),
        "context_latents": torch.randn(1, frames, 2 * LATENT_CHANNELS, generator=data),
    }


def forward(
    module: torch.nn.Module, kind: str, feed: dict[str, torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    device = next(module.parameters()).device
    with torch.inference_mode():
        if kind == "dit":
            cast = {k: v.to(device, dtype) for k, v in feed.items()}
            out = module(**cast, return_dict=False)[0]
        else:
            out = module(**{k: v.to(device) for k, v in feed.items()})
            out = out.logits if kind == "lm" else out.last_hidden_state
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out.float().cpu()


def quantized_linears(module: torch.nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if hasattr(getattr(m, "weight", None), "__tensor_flatten__")]


def time_cache(
    module: torch.nn.Module, component: str, part: str, dtype: torch.dtype, mode: str, cache: Path
) -> tuple[float, float, int]:
    """Write ``module``'s quantized cache entry, then read it into a fresh build of the same network:
    (write seconds, read seconds, entry bytes); the read weights must equal ``module``'s bit for bit."""
    source = cache / f"source-{component}"  # stands for the checkpoint folder the entry is keyed on
    source.mkdir(parents=True, exist_ok=True)
    (source / "config.json").write_text(f'{{"component": "{component}"}}')
    linears = quantized_linears(module)
    dtype_name = str(dtype).removeprefix("torch.")
    entry = entry_for(cache, source, component, mode, dtype_name, torchao_config(mode))
    started = time.perf_counter()
    entry.store(module, linears)
    write_s = time.perf_counter() - started
    fresh = build(component, part)
    torch.nn.Module.to(fresh, dtype=dtype)
    started = time.perf_counter()
    if not entry.restore(fresh, linears):
        raise RuntimeError(f"the cache entry {entry.path} was not read back")
    read_s = time.perf_counter() - started
    for name in linears:
        a, b = module.get_submodule(name).weight, fresh.get_submodule(name).weight
        for inner in a.__tensor_flatten__()[0]:
            if not torch.equal(getattr(a, inner).view(torch.uint8), getattr(b, inner).view(torch.uint8)):
                raise RuntimeError(f"{name}.{inner} differs after the cache round trip")
    return write_s, read_s, entry.path.stat().st_size


def run_case(
    component: str,
    part: str,
    dtype_name: str,
    mode: str,
    feed: dict,
    ref: torch.Tensor | None,
    device: str,
    cache: str = "",
) -> tuple[dict, torch.Tensor]:
    kind, _ = cb.COMPONENTS[component]
    dtype = cb.DTYPES[dtype_name]
    gc.collect()
    started = time.perf_counter()
    module = build(component, part)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    torch.nn.Module.to(module, dtype=dtype)
    quantize_module(module, mode, kept=LM_KEPT if kind == "lm" else ())
    quantize_s = time.perf_counter() - started
    measured = stored_bytes(module)
    cached = {}
    if cache and mode != "none":
        write_s, read_s, size = time_cache(module, component, part, dtype, mode, Path(cache))
        cached = {"cache_write_s": round(write_s, 2), "cache_read_s": round(read_s, 2), "cache_bytes": size}
    module.to(device)  # as the engine: quantized on the CPU, then moved
    if device != "cpu":
        forward(module, kind, feed, dtype)  # warm-up: kernel selection and caches are not the cost
    started = time.perf_counter()
    out = forward(module, kind, feed, dtype)
    forward_s = time.perf_counter() - started
    del module
    rel_l2 = 0.0 if ref is None else float((out - ref).norm() / ref.norm())
    row = {
        "component": component,
        "network": part,
        "dtype": dtype_name,
        "mode": mode,
        "computed_bytes": cb.parts_bytes(component, dtype_name, mode)[part],
        "measured_bytes": measured,
        "build_s": round(build_s, 2),
        "quantize_s": round(quantize_s, 2),
        "forward_s": round(forward_s, 2),
        "rel_l2_vs_float32": rel_l2,
        "finite": bool(torch.isfinite(out).all()),
        **cached,
    }
    print(row, flush=True)
    return row, out


def main() -> int:
    args = _parser().parse_args()
    components = [c.strip() for c in args.components.split(",") if c.strip()]
    unknown = [c for c in components if c not in BENCH_COMPONENTS]
    if unknown:
        raise SystemExit(f"unknown components {unknown}; known: {', '.join(BENCH_COMPONENTS)}")
    cases = [tuple(c.strip().split(":", 1)) for c in args.cases.split(",") if c.strip()]
    cases = [REFERENCE, *(c for c in cases if c != REFERENCE)]
    report = {
        "benchmark": "quantize",
        "commit": git_commit(),
        "machine": machine_facts(),
        "contention_start": contention(),
        "seconds": args.seconds,
        "tokens": args.tokens,
        "device": args.device,
        "rows": [],
    }
    started = time.perf_counter()
    for name in components:
        component, part = BENCH_COMPONENTS[name]
        feed = inputs(component, args)
        ref = None
        for dtype_name, mode in cases:
            row, out = run_case(component, part, dtype_name, mode, feed, ref, args.device, args.cache)
            ref = out if ref is None else ref
            report["rows"].append(row)
    report["bench_wall_s"] = time.perf_counter() - started
    report["contention_end"] = contention()
    lines = [
        "| network | dtype | mode | computed | measured | build s | quantize s | forward s | rel. L2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['component']} {r['network']} | {r['dtype']} | {r['mode']} "
            f"| {r['computed_bytes'] / 1e9:.3f} GB | {r['measured_bytes'] / 1e9:.3f} GB "
            f"| {r['build_s']:.1f} | {r['quantize_s']:.1f} | {r['forward_s']:.1f} "
            f"| {r['rel_l2_vs_float32']:.2e} |"
        )
    save_and_summarise(report, Path(args.json), "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The final latents of a whole generation, quantized against float32, at the real configurations.

Builds every network of ``--config`` (default the 2B turbo DiT, its condition encoder, the text
encoder and the VAE at upstream's shapes) with the same random weights in each case (a storage
dtype and a DiT/text-encoder quantization mode), runs one text2music request through acestep's
engine on the CPU and records the latents the VAE decodes (a hook on the decoder, as
tests/test_quantization.py does on the tiny model). Reports each case's relative L2 difference
from the float32 case's latents and its times, and checks that a second run of one case gives the
same bytes.

    python bench/bench_quantize_latents.py                       # 2b-turbo, 10 s, 8 steps
    python bench/bench_quantize_latents.py --seconds 30 --cases float32:none,bfloat16:int8
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import contention, git_commit, machine_facts, save_and_summarise

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from acestep.memory.precision import plan_named  # noqa: E402
from acestep.memory.quantization import QuantizationPlan  # noqa: E402
from acestep.request import GenerationRequest  # noqa: E402
from bench.speed import models as built  # noqa: E402

DEFAULT_CASES = "float32:none,bfloat16:none,float32:int8,bfloat16:int8"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quantize_latents.json"


def run_case(config: str, dtype: str, mode: str, request: GenerationRequest) -> tuple[torch.Tensor, dict]:
    plan = QuantizationPlan(dit=mode, text_encoder=mode)
    started = time.perf_counter()
    models = built.build(config, torch.device("cpu"), plan_named(dtype), quantization=plan)
    engine = built.engine(models)
    build_s = time.perf_counter() - started
    seen: list[torch.Tensor] = []
    hook = engine.components.vae.decoder.register_forward_pre_hook(
        lambda _m, a: seen.append(a[0].float().clone())
    )
    try:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            engine.generate(request, Path(out))
            generate_s = time.perf_counter() - started
    finally:
        hook.remove()
    del engine, models
    gc.collect()
    return torch.cat(seen), {"build_quantize_s": round(build_s, 1), "generate_s": round(generate_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="2b-turbo", choices=sorted(built.CONFIGS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="dtype:mode,... (the first is the reference)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    cases = [tuple(case.split(":")) for case in args.cases.split(",")]
    request = GenerationRequest(
        caption="warm piano ballad", lyrics="[verse]\nla la la", audio_duration=args.seconds,
        inference_steps=args.steps, seed=1, audio_format="wav",
    )  # fmt: skip
    report = {"commit": git_commit(), "machine": machine_facts(), "contention_start": contention()}
    report |= {"config": args.config, "seconds": args.seconds, "steps": args.steps, "cases": []}
    started = time.perf_counter()
    reference = None
    for dtype, mode in cases:
        latents, times = run_case(args.config, dtype, mode, request)
        reference = latents if reference is None else reference
        rel = float((latents - reference).norm() / reference.norm())
        row = {
            "dtype": dtype,
            "mode": mode,
            "rel_l2": rel,
            "finite": bool(torch.isfinite(latents).all()),
            **times,
        }
        report["cases"].append(row)
        print(row, flush=True)
    dtype, mode = cases[-1]
    again, _ = run_case(args.config, dtype, mode, request)
    report["repeat_same_bytes"] = {"case": f"{dtype}:{mode}", "same": bool(torch.equal(again, latents))}
    report["bench_wall_s"] = time.perf_counter() - started
    report["contention_end"] = contention()
    rows = [
        f"| {r['dtype']} | {r['mode']} | {r['rel_l2']:.2e} | {r['finite']} | {r['build_quantize_s']} "
        f"| {r['generate_s']} |"
        for r in report["cases"]
    ]
    table = "\n".join(
        [
            "| dtype | mode | rel. L2 vs first | finite | build + quantize s | generate s |",
            "|---|---|---:|---|---:|---:|",
        ]
        + rows
    )
    save_and_summarise(report, args.out, table + f"\n\nrepeat: {report['repeat_same_bytes']}")


if __name__ == "__main__":
    main()

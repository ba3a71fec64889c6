"""The memory policy per simulated card (acestep/memory/fit.py): which quantization mode, offload,
streaming and batch limit each card gets for a 2B and an XL DiT, computed from the weight table,
and a clear refusal where nothing fits. Torch-free decisions: no model is loaded here."""

from __future__ import annotations

import pytest

from acestep.memory.fit import (
    MARGINAL,
    STREAMED,
    WITH_OFFLOAD,
    YES,
    ModelBytes,
    decode_tile_frames,
    encode_tile_seconds,
    fit_model,
)
from acestep.memory.gpus import GIB, GpuInfo, StaticSource
from acestep.memory.limits import Limits, MemoryLimitError
from acestep.memory.manager import MemoryManager
from acestep.memory.quantization import QuantizationPlan
from acestep.memory.residency import Place
from acestep.memory.weight_table import WEIGHT_BYTES

TURBO, XL_TURBO = "acestep-v15-turbo", "acestep-v15-xl-turbo"
# name -> (total GiB as the driver reports it, compute capability)
CARDS = {
    "4 GB": (4.0, (8, 6)),
    "6 GB": (6.0, (8, 6)),
    "8 GB": (8.0, (8, 6)),
    "T4": (15.0, (7, 5)),
    "RTX 4090": (23.99, (8, 9)),
    "H100": (79.2, (9, 0)),
    "GB10": (119.7, (12, 1)),
}
# card -> tier, DiT quantization, and per DiT (2B, XL): rating, DiT idle place, streamed, batch.
EXPECTED = {
    "4 GB": ("tier1", "int8", (YES, "cpu", False, 1), (STREAMED, "cpu", True, 1)),
    "6 GB": ("tier2", "int8", (YES, "cpu", False, 1), (STREAMED, "cpu", True, 1)),
    "8 GB": ("tier3", "int8", (YES, "cpu", False, 2), (YES, "cpu", False, 2)),
    "T4": ("tier5", "int8", (YES, "gpu", False, 4), (YES, "gpu", False, 4)),
    "RTX 4090": ("tier6b", "none", (YES, "gpu", False, 8), (YES, "gpu", False, 8)),
    "H100": ("unlimited", "none", (YES, "gpu", False, 8), (YES, "gpu", False, 8)),
    "GB10": ("unlimited", "none", (YES, "gpu", False, 8), (YES, "gpu", False, 8)),
}


def manager(card: str, **env: str) -> MemoryManager:
    gib, capability = CARDS[card]
    return MemoryManager(source=StaticSource([GpuInfo(0, card, int(gib * GIB), 0, capability)]), env=env)


@pytest.mark.parametrize("card", list(CARDS))
@pytest.mark.parametrize("is_xl", [False, True], ids=["2B", "XL"])
def test_each_card_gets_its_mode_offload_and_batch(card: str, is_xl: bool):
    tier, mode, two_b, xl = EXPECTED[card]
    rating, dit_place, streamed, batch = xl if is_xl else two_b
    memory = manager(card)
    fit = memory.fit_dit(XL_TURBO if is_xl else TURBO, is_xl)
    assert memory.limits.tier.name == tier and memory.quantization.dit == mode
    assert fit.rating == rating and fit.peak_gib <= fit.budget_gib
    assert memory.plan.idle["dit"].value == dit_place
    assert (memory.plan.streamed == ("dit",)) is streamed and memory.limits.stream_dit is streamed
    assert memory.limits.max_batch == batch
    shown = memory.get_status()
    assert shown["fit"]["rating"] == rating and shown["limits"]["stream_dit"] is streamed
    assert shown["plan"]["streamed"] == (["dit"] if streamed else [])


def test_the_largest_job_of_the_4_gb_tier_fits_without_streaming_a_2b_dit():
    """The 4 GB memory-mode promise (a 180 s turbo song, batch 1, no LM) at the tier's own 360 s."""
    memory = manager("4 GB")
    fit = memory.fit_dit(TURBO, False)
    assert memory.limits.max_duration >= 180 and not memory.limits.lm_enabled
    assert fit.rating == YES and memory.plan.one_at_a_time and fit.peak_gib < 3.5


def test_without_int8_a_4_gb_card_streams_the_2b_dit():
    memory = manager("4 GB", ACESTEP_QUANTIZE="none")
    fit = memory.fit_dit(TURBO, False)
    assert memory.quantization.dit == "none"
    assert fit.rating == STREAMED and memory.plan.streamed == ("dit",)
    assert memory.limits.origin["stream_dit"] == "tier1 fit (streamed)"


def test_a_smaller_batch_before_streaming():
    """A 16 GB card's tier allows batch 8 at 600 s: the XL DiT fits whole at a smaller batch."""
    memory = MemoryManager(source=StaticSource([GpuInfo(0, "16", 16 * GIB, 0, (8, 9))]), env={})
    fit = memory.fit_dit(XL_TURBO, True)
    assert fit.rating == MARGINAL and not fit.stream_dit
    assert memory.limits.max_batch == fit.max_batch < memory.limits.tier.max_batch
    assert memory.limits.origin["max_batch"] == "tier6a fit (marginal)"


def test_an_operators_batch_is_not_lowered():
    memory = MemoryManager(
        source=StaticSource([GpuInfo(0, "16", 16 * GIB, 0, (8, 9))]), env={"ACESTEP_MAX_BATCH_SIZE": "8"}
    )
    fit = memory.fit_dit(XL_TURBO, True)
    assert memory.limits.max_batch == 8 and fit.rating == STREAMED


def test_more_offload_is_taken_when_the_tier_plan_is_too_tight():
    memory = manager("RTX 4090")
    memory.lm_name = "acestep-5Hz-lm-1.7B"
    fit = memory.fit_dit(XL_TURBO, True)
    assert fit.rating == WITH_OFFLOAD and memory.plan.idle["text_encoder"] is Place.CPU
    assert memory.plan.idle["dit"] is Place.GPU and memory.limits.origin["offload_to_cpu"].endswith(
        "fit (with offload)"
    )


def test_nothing_fits_a_2_gib_card_and_the_refusal_says_why():
    memory = MemoryManager(
        source=StaticSource([GpuInfo(0, "big", 24 * GIB, 0, (8, 9))]), env={"MAX_CUDA_VRAM": "2"}
    )
    with pytest.raises(MemoryLimitError) as caught:
        memory.fit_dit(TURBO, False)
    message = str(caught.value)
    assert caught.value.limit == "fit" and "tier1" in message and "simulated by MAX_CUDA_VRAM" in message
    assert "VAE encode stage needs" in message and "1.50 GiB there is" in message
    assert caught.value.value > caught.value.allowed


def test_switching_off_the_offload_a_model_needs_is_refused():
    memory = manager("4 GB", ACESTEP_OFFLOAD_DIT_TO_CPU="false")
    with pytest.raises(MemoryLimitError, match="only with ACESTEP_OFFLOAD_DIT_TO_CPU=true.*Remove"):
        memory.fit_dit(XL_TURBO, True)


def test_the_cpu_fits_everything_unchanged():
    memory = MemoryManager(source=StaticSource([]), env={})
    before = memory.limits
    fit = memory.fit_dit(XL_TURBO, True)
    assert fit.rating == YES and memory.limits == before and not memory.plan.on_gpu


def test_quantizing_lowers_the_computed_peak_by_the_weight_bytes_saved():
    limits = Limits.for_gpu(24, env={})
    bf16 = fit_model(limits, True, "bfloat16", QuantizationPlan())
    int8 = fit_model(limits, True, "bfloat16", QuantizationPlan(dit="int8"))
    whole = WEIGHT_BYTES[("dit-xl", "bfloat16", "none")]["transformer"]
    quantized = WEIGHT_BYTES[("dit-xl", "bfloat16", "int8")]["transformer"]
    saved = (whole - quantized) / GIB
    assert bf16.rating == int8.rating == YES
    assert bf16.stages["diffusion"] - int8.stages["diffusion"] == pytest.approx(saved)
    # fp8 and w8a8 store one byte a weight, as int8 does.
    fp8 = ModelBytes.of(True, "bfloat16", "bfloat16", QuantizationPlan(dit="fp8"), None)
    assert fp8.whole["dit"] == pytest.approx(quantized / GIB)


def test_tiles_follow_the_card_size():
    assert [decode_tile_frames(g) for g in (None, 4, 12, 16, 24, 80)] == [256, 128, 256, 384, 512, 3072]
    assert [encode_tile_seconds(g) for g in (None, 8, 15, 16, 80)] == [30, 15, 15, 30, 30]

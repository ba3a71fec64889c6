"""The 5 Hz LM's dtype is part of the precision plan: bf16 only where the GPU has bf16."""

from __future__ import annotations

import pytest
import torch
from _util import TARGET_GPUS

from acestep import AceStep
from acestep.memory.gpus import GpuInfo, StaticSource
from acestep.memory.manager import MemoryManager
from acestep.memory.precision import plan_for_device, planned_lm_dtype

GIB = 2**30


def manager_for(gpu: str, **env) -> MemoryManager:
    name, gib, capability = TARGET_GPUS[gpu]
    return MemoryManager(StaticSource([GpuInfo(0, name, gib * GIB, 0, capability)]), env=env)


@pytest.mark.parametrize(
    ("gpu", "dit", "lm"),
    [
        ("t4", "fp16-mixed", "float32"),  # no bf16 below compute capability 8.0
        ("4090", "bfloat16", "bfloat16"),
        ("h100", "bfloat16", "bfloat16"),
        ("gb10", "bfloat16", "bfloat16"),
    ],
)
def test_each_simulated_gpu_plans_the_lm(gpu, dit, lm):
    manager = manager_for(gpu)
    assert (manager.precision.name, manager.precision.lm) == (dit, lm)
    assert manager.get_status()["precision"]["dtype"] == dit
    assert planned_lm_dtype("cuda", TARGET_GPUS[gpu][2][0]) == lm


def test_a_t4_never_gets_a_bf16_lm():
    for setting in (None, "auto", "fp16-mixed", "mixed"):
        plan = plan_for_device("cuda", 7, setting)
        assert plan.lm == "float32" and plan.lm_torch_dtype == torch.float32
    assert manager_for("t4", ACESTEP_DTYPE="fp16-mixed").precision.lm == "float32"


def test_cpu_and_mps_lm_stay_float32():
    assert planned_lm_dtype("cpu") == "float32"
    assert planned_lm_dtype("mps") == "float32"  # the DiT runs float16 there, the LM did not
    assert plan_for_device("mps").as_dict() == {
        "name": "float16",
        "dtype": "float16",
        "float32_parts": [],
        "rope": "fp32",
        "lm": "float32",
    }
    assert MemoryManager(StaticSource([]), env={}).precision.lm == "float32"


def test_a_dtype_setting_that_names_one_dtype_reaches_the_lm():
    assert manager_for("t4", ACESTEP_DTYPE="fp16").precision.lm == "float16"
    assert manager_for("t4", ACESTEP_DTYPE="bf16").precision.lm == "bfloat16"
    assert manager_for("4090", ACESTEP_DTYPE="float32").precision.lm == "float32"
    assert planned_lm_dtype("cpu", None, "bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match=r"ACESTEP_DTYPE.*got 'half'"):
        planned_lm_dtype("cuda", 7, "half")


@pytest.mark.parametrize(("dtype", "lm"), [("bfloat16", torch.bfloat16), ("fp16-mixed", torch.float32)])
def test_the_engine_loads_the_lm_in_the_plans_dtype(lm_checkpoint, dtype, lm):
    engine = AceStep.from_pretrained(lm_checkpoint, device="cpu", dtype=dtype)
    assert engine.precision.lm_torch_dtype == lm
    model = engine.lm.load(engine.residency)
    assert {p.dtype for p in model.model.parameters()} == {lm}

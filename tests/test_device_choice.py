"""One rule picks the device: the server (GPU facts without torch) and the worker (torch's
facts) agree for the same facts and settings."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from acestep.memory.device_choice import DeviceChoiceError, choose_device, parse_device_setting
from acestep.memory.devices import resolve_device
from acestep.memory.gpus import GpuInfo, StaticSource
from acestep.memory.manager import MemoryManager

GIB = 2**30


def gpu(index: int, used_gib: float, gib: int = 24) -> GpuInfo:
    return GpuInfo(index, f"GPU {index}", gib * GIB, int(used_gib * GIB), (8, 9), uuid=f"GPU-{index}")


THREE = [gpu(0, 10), gpu(1, 2), gpu(2, 5)]  # GPU 1 has the least memory in use
ONE = [gpu(0, 3)]

# (facts, ACESTEP_DEVICE, ACESTEP_GPU_DEVICE, the GPU index both pick, or "cpu")
CASES = [
    (THREE, None, None, 1),
    (THREE, "auto", "auto", 1),
    (THREE, "cuda", None, 1),
    (THREE, "auto", "2", 2),
    (THREE, "cuda", "0", 0),
    (THREE, "cuda:2", None, 2),
    (THREE, "cuda:0", "2", 0),  # an index in ACESTEP_DEVICE names the GPU outright
    (THREE, "cpu", "1", "cpu"),
    (THREE, "auto", "cpu", "cpu"),
    (THREE, "auto", "none", "cpu"),
    (ONE, "auto", None, 0),
    (ONE, "cuda", "auto", 0),
    ([], "auto", None, "cpu"),
    ([], None, "3", "cpu"),
]


def server_pick(facts: list[GpuInfo], device: str | None, gpu_device: str | None) -> int | str:
    env = {k: v for k, v in (("ACESTEP_DEVICE", device), ("ACESTEP_GPU_DEVICE", gpu_device)) if v is not None}
    manager = MemoryManager(StaticSource(facts), env=env)  # the server's facts: NVML has no ordinal
    return "cpu" if manager.gpu is None else manager.gpu.index


def worker_pick(facts, device, gpu_device, monkeypatch) -> int | str:
    """What a worker or in-process engine resolves, given torch's view of the same GPUs."""
    for name, value in (("ACESTEP_DEVICE", device), ("ACESTEP_GPU_DEVICE", gpu_device)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    torch_facts = StaticSource([replace(g, ordinal=g.index) for g in facts])
    chosen = resolve_device("auto", source=torch_facts)
    if chosen.type == "cpu":
        return "cpu"
    assert chosen.type == "cuda"
    return chosen.index if chosen.index is not None else 0  # plain "cuda": the only GPU


@pytest.mark.parametrize(("facts", "device", "gpu_device", "expected"), CASES)
def test_server_and_worker_pick_the_same_device(facts, device, gpu_device, expected, monkeypatch):
    assert server_pick(facts, device, gpu_device) == expected
    assert worker_pick(facts, device, gpu_device, monkeypatch) == expected


@pytest.mark.parametrize(("facts", "device", "gpu_device", "expected"), CASES)
def test_the_worker_the_server_starts_uses_the_servers_gpu(facts, device, gpu_device, expected, monkeypatch):
    env = {k: v for k, v in (("ACESTEP_DEVICE", device), ("ACESTEP_GPU_DEVICE", gpu_device)) if v is not None}
    manager = MemoryManager(StaticSource(facts), env=env)
    child = manager.worker_env()
    # The worker sees only the GPU named in CUDA_VISIBLE_DEVICES, as its ordinal 0.
    visible = [replace(g, index=0, ordinal=0) for g in facts if child["CUDA_VISIBLE_DEVICES"] == g.uuid]
    assert worker_pick(visible, child["ACESTEP_DEVICE"], child.get("ACESTEP_GPU_DEVICE"), monkeypatch) == (
        "cpu" if expected == "cpu" else 0
    )
    if expected != "cpu":
        assert child["CUDA_VISIBLE_DEVICES"] == f"GPU-{expected}"


@pytest.mark.parametrize(
    ("facts", "device", "gpu_device", "message"),
    [
        ([], "cuda", None, "CUDA is not available"),
        ([], "cuda:1", None, "CUDA is not available"),
        (THREE, "cuda", "7", "visible GPUs are: 0, 1, 2"),
        (THREE, "cuda", "cpu", "asks for a GPU"),
        (THREE, "mps", None, "has no MPS"),
        (THREE, "tpu", None, "ACESTEP_DEVICE must be"),
    ],
)
def test_both_refuse_the_same_impossible_settings(facts, device, gpu_device, message, monkeypatch):
    with pytest.raises(ValueError, match=message):
        server_pick(facts, device, gpu_device)
    with pytest.raises(ValueError, match=message):
        worker_pick(facts, device, gpu_device, monkeypatch)


def test_auto_falls_back_to_mps_then_cpu():
    assert choose_device([], "auto", None, mps=True).kind == "mps"
    assert choose_device([], "mps", None, mps=True).torch_name == "mps"
    assert choose_device(THREE, "auto", None, mps=True).gpu.index == 1  # a GPU first
    assert choose_device([], "auto", "cpu", mps=True).kind == "cpu"  # "no GPU" means the CPU
    with pytest.raises(DeviceChoiceError):
        choose_device([], "mps", None, mps=False)


def test_gpu_facts_are_read_only_when_needed():
    def facts() -> list[GpuInfo]:
        raise AssertionError("a CPU-only choice must not read the GPUs")

    assert choose_device(facts, "cpu", "1").kind == "cpu"
    assert choose_device(facts, "mps", None, mps=True).kind == "mps"
    assert parse_device_setting(" CUDA:3 ") == ("cuda", "3")
    assert resolve_device("cpu") == torch.device("cpu")

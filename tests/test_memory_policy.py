"""Memory policy on CPU with injected GPU facts: tiers, limits, validation, plans, keep-alive, status."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from acestep import GenerationRequest
from acestep.memory.gpus import GIB, GpuInfo, StaticSource, select_gpu
from acestep.memory.keep_alive import NEVER, IdleTimer, KeepAliveError, KeepAlivePolicy, parse_keep_alive
from acestep.memory.limits import Limits, MemoryLimitError, planned_seconds
from acestep.memory.manager import MemoryManager
from acestep.memory.residency import Place, plan_for
from acestep.memory.tiers import tier_for_gib
from acestep.memory_manager import get_memory_manager


def gpu(gib: float, index: int = 0, used_gib: float = 0.0) -> GpuInfo:
    return GpuInfo(index, f"Fake {gib} GiB", int(gib * GIB), int(used_gib * GIB), (8, 0))


def manager(gib: float | None, **env: str) -> MemoryManager:
    source = StaticSource([gpu(gib)] if gib else [])
    return MemoryManager(source=source, env=env)


# Each threshold, just at and just past it (upstream's later table: <= for all but 15.5 and 20).
@pytest.mark.parametrize(
    ("gib", "tier"),
    [
        (None, "cpu"),
        (0.5, "tier1"),
        (4.0, "tier1"),
        (4.01, "tier2"),
        (6.0, "tier2"),
        (6.01, "tier3"),
        (8.0, "tier3"),
        (8.01, "tier4"),
        (12.0, "tier4"),
        (12.01, "tier5"),
        (14.56, "tier5"),  # a T4 reports about 14.6 GiB
        (15.49, "tier5"),
        (15.5, "tier6a"),
        (19.99, "tier6a"),
        (20.0, "tier6b"),
        (23.99, "tier6b"),  # an RTX 4090
        (24.0, "tier6b"),
        (24.01, "unlimited"),
        (79.2, "unlimited"),  # an H100
    ],
)
def test_tier_at_every_threshold(gib, tier):
    assert tier_for_gib(gib).name == tier
    assert manager(gib).limits.tier.name == tier


def test_tier_limits_follow_upstreams_table():
    t1, t5, t6b = tier_for_gib(4), tier_for_gib(14.5), tier_for_gib(22)
    assert (t1.max_duration, t1.max_duration_lm, t1.max_batch, t1.lm_sizes) == (360, 240, 1, ())
    assert (t1.offload_to_cpu, t1.offload_dit_to_cpu) == (True, True)
    assert (t5.max_batch, t5.lm_sizes) == (4, ("0.6B", "1.7B"))
    assert (t5.offload_to_cpu, t5.offload_dit_to_cpu) == (True, False)
    assert (t6b.max_duration, t6b.recommended_lm, t6b.offload_to_cpu) == (480, "4B", False)


def test_max_cuda_vram_simulates_a_smaller_card():
    limits = manager(80, MAX_CUDA_VRAM="4").limits
    assert (limits.tier.name, limits.gib, limits.simulated) == ("tier1", 4.0, True)
    # A cap above the real card changes nothing.
    assert manager(8, MAX_CUDA_VRAM="16").limits.tier.name == "tier3"
    with pytest.raises(ValueError, match="MAX_CUDA_VRAM must be a number"):
        manager(8, MAX_CUDA_VRAM="lots")


def test_overrides_replace_tier_values_and_say_so():
    limits = manager(
        4,
        ACESTEP_MAX_DURATION="180",
        ACESTEP_MAX_BATCH_SIZE="2",
        ACESTEP_OFFLOAD_DIT_TO_CPU="false",
        ACESTEP_INIT_LLM="false",
    ).limits
    assert (limits.max_duration, limits.max_duration_lm, limits.max_batch) == (180, 180, 2)
    assert (limits.offload_to_cpu, limits.offload_dit_to_cpu, limits.lm_enabled) == (True, False, False)
    assert limits.origin["max_duration"] == "ACESTEP_MAX_DURATION"
    assert limits.origin["max_batch"] == "ACESTEP_MAX_BATCH_SIZE"
    # The DiT is offloaded only together with the VAE and text encoder (upstream's rule).
    assert manager(40, ACESTEP_OFFLOAD_DIT_TO_CPU="true").limits.offload_dit_to_cpu is False
    with pytest.raises(ValueError, match="ACESTEP_OFFLOAD_TO_CPU must be true/false/auto"):
        manager(8, ACESTEP_OFFLOAD_TO_CPU="maybe")
    with pytest.raises(ValueError, match="ACESTEP_MAX_BATCH_SIZE must be positive"):
        manager(8, ACESTEP_MAX_BATCH_SIZE="0")


def test_validation_names_the_limit_and_the_setting():
    mm = manager(6)  # tier2: 600 s, batch 1
    with pytest.raises(MemoryLimitError) as err:
        mm.validate(GenerationRequest(audio_duration=30, batch_size=2))
    assert err.value.limit == "max_batch"
    message = str(err.value)
    assert "batch_size 2 is over the maximum of 1 without the LM" in message
    assert "tier2 limit for a 6.0 GiB GPU" in message
    assert "ACESTEP_MAX_BATCH_SIZE=2" in message

    mm = manager(6, ACESTEP_MAX_DURATION="100")
    with pytest.raises(MemoryLimitError) as err:
        mm.validate(GenerationRequest(audio_duration=150, batch_size=1))
    assert err.value.limit == "max_duration"
    assert "audio_duration is 150.0 s, over the 100 s maximum without the LM" in str(err.value)
    assert "set by ACESTEP_MAX_DURATION" in str(err.value)
    assert "ACESTEP_MAX_DURATION=151" in str(err.value)
    # Within the limits nothing is raised and nothing is changed (no silent clamp).
    request = GenerationRequest(audio_duration=100, batch_size=1)
    assert mm.validate(request) == 300.0
    assert (request.audio_duration, request.batch_size) == (100, 1)


def test_with_lm_limits_apply_when_the_lm_runs():
    mm = manager(4)  # tier1: 360 s without the LM, 240 s with it, and no LM allowed at all
    request = GenerationRequest(audio_duration=300, batch_size=1)
    mm.validate(request)
    with pytest.raises(MemoryLimitError, match="over the 240 s maximum with the LM"):
        mm.validate(request, uses_lm=True)
    with pytest.raises(MemoryLimitError, match="needs the 5Hz LM, which is off"):
        mm.limits.check_lm("acestep-5Hz-lm-0.6B")
    tier5 = manager(14.5)
    tier5.limits.check_lm("acestep-5Hz-lm-1.7B")
    with pytest.raises(MemoryLimitError, match=r"acestep-5Hz-lm-4B \(4B\) is too large"):
        tier5.limits.check_lm("acestep-5Hz-lm-4B")


def test_source_length_counts_when_no_duration_is_given(tmp_path):
    long = tmp_path / "long.flac"
    sf.write(long, np.full((100 * 8000, 2), 0.1, dtype=np.float32), 8000)
    lego = GenerationRequest(task_type="lego", src_audio=str(long), batch_size=1)
    assert planned_seconds(lego) == pytest.approx(100.0)
    with pytest.raises(MemoryLimitError, match="the source audio is 100.0 s, over the 90 s"):
        manager(6, ACESTEP_MAX_DURATION="90").validate(lego)
    repaint = GenerationRequest(
        task_type="repaint", src_audio=str(long), repainting_start=-10, repainting_end=130, batch_size=1
    )
    assert planned_seconds(repaint) == pytest.approx(140.0)
    codes = "".join(f"<|audio_code_{i}|>" for i in range(50))
    assert planned_seconds(GenerationRequest(audio_code_string=codes)) == pytest.approx(10.0)
    assert planned_seconds(GenerationRequest()) == 120.0


@pytest.mark.parametrize(
    ("gib", "idle"),
    [
        (None, dict.fromkeys(("lm", "text_encoder", "vae", "condition_encoder", "dit"), "cpu")),
        (4, dict.fromkeys(("lm", "text_encoder", "vae", "condition_encoder", "dit"), "cpu")),
        (10, dict.fromkeys(("lm", "text_encoder", "vae", "condition_encoder", "dit"), "cpu")),
        (14.5, {"lm": "cpu", "text_encoder": "cpu", "vae": "cpu", "condition_encoder": "gpu", "dit": "gpu"}),
        (23.9, dict.fromkeys(("lm", "text_encoder", "vae", "condition_encoder", "dit"), "gpu")),
    ],
)
def test_residency_plan_per_tier(gib, idle):
    plan = manager(gib).plan
    assert {k: v.value for k, v in plan.idle.items()} == idle
    assert plan.one_at_a_time == (gib is not None and gib <= 12)
    assert plan.compute == ("cpu" if gib is None else "cuda")


class Located(torch.nn.Module):
    """A module that records where ``nn.Module.to`` sends it without moving its data: this machine
    has no second device, and ``meta`` cannot come back to the CPU."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.where = "cpu"
        self.moves: list[str] = []

    def _apply(self, fn, recurse=True):
        self.where = fn(torch.empty(0)).device.type
        self.moves.append(self.where)
        return self


def test_residency_moves_only_the_running_component():
    """The low-VRAM plan: only the component in use is sent to the compute device."""
    from acestep.memory.residency import Residency

    names = ("text_encoder", "vae", "condition_encoder", "transformer")
    modules = {name: Located() for name in names}
    residency = Residency(modules, plan_for(Limits.for_gpu(4, env={}), "meta"))  # meta stands in for cuda
    residency.settle()
    assert all(m.moves == [] for m in modules.values())  # already where the plan keeps them
    with residency.use("dit"):
        assert residency.state["dit"] is Place.GPU and modules["transformer"].where == "meta"
        assert all(modules[n].where == "cpu" for n in names[:3])
        assert all(residency.state[c] is Place.CPU for c in ("text_encoder", "vae", "condition_encoder"))
    assert residency.state["dit"] is Place.CPU and modules["transformer"].moves == ["meta", "cpu"]
    with residency.use("vae", "condition_encoder"):
        assert {n: modules[n].where for n in names} == {
            "text_encoder": "cpu", "vae": "meta", "condition_encoder": "meta", "transformer": "cpu"
        }  # fmt: skip
    assert residency.state["lm"] is Place.UNLOADED

    modules = {name: Located() for name in names}
    resident = Residency(modules, plan_for(Limits.for_gpu(40, env={}), "meta"))
    resident.settle()
    assert all(resident.state[c] is Place.GPU for c in ("text_encoder", "vae", "condition_encoder", "dit"))
    with resident.use("dit"):
        pass
    assert modules["transformer"].moves == ["meta"]  # a resident plan never moves between uses
    resident.park()
    assert all(m.where == "cpu" for m in modules.values())
    assert all(resident.state[c] is Place.CPU for c in ("text_encoder", "vae", "condition_encoder", "dit"))


def test_auto_gpu_is_the_least_used():
    gpus = [gpu(24, 0, used_gib=10), gpu(16, 1, used_gib=2), gpu(24, 2, used_gib=5)]
    assert select_gpu(gpus, "auto").index == 1
    assert select_gpu(gpus, None).index == 1
    assert select_gpu(gpus, "2").index == 2
    assert select_gpu(gpus, "cpu") is None
    with pytest.raises(ValueError, match="visible GPUs are: 0, 1, 2"):
        select_gpu(gpus, "7")
    mm = MemoryManager(source=StaticSource(gpus), env={"ACESTEP_GPU_DEVICE": "auto"})
    assert mm.gpu.index == 1 and mm.limits.tier.name == "tier6a"
    assert mm.worker_env()["CUDA_VISIBLE_DEVICES"] == "1"
    assert MemoryManager(source=StaticSource(gpus), env={"ACESTEP_DEVICE": "cpu"}).gpu is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(0, 0.0), ("0", 0.0), (-1, NEVER), ("-1", NEVER), (300, 300.0), ("90s", 90.0), ("5m", 300.0),
     ("1h30m", 5400.0), ("2.5", 2.5), ("never", NEVER)],
)  # fmt: skip
def test_keep_alive_parsing(text, seconds):
    assert parse_keep_alive(text) == seconds


def test_keep_alive_policy_and_operator_lock():
    policy = KeepAlivePolicy.from_env({"ACESTEP_KEEP_ALIVE": "0"})
    assert policy.for_request(None) == 0.0 and policy.for_request("10m") == 600.0
    locked = KeepAlivePolicy.from_env({"ACESTEP_KEEP_ALIVE": "-1", "ACESTEP_KEEP_ALIVE_OVERRIDE": "false"})
    assert locked.for_request(None) == math.inf
    with pytest.raises(KeepAliveError, match="ACESTEP_KEEP_ALIVE_OVERRIDE=false"):
        locked.for_request("0")
    with pytest.raises(KeepAliveError, match="not a duration"):
        parse_keep_alive("soon")
    with pytest.raises(ValueError, match="keep_alive 'soon' is not a duration"):
        GenerationRequest(keep_alive="soon")
    with pytest.raises(ValueError, match="ACESTEP_IDLE_UNLOAD must be park or free"):
        KeepAlivePolicy.from_env({"ACESTEP_IDLE_UNLOAD": "nap"})


def test_idle_timer_with_a_fake_clock():
    now = [100.0]
    timer = IdleTimer(clock=lambda: now[0])
    assert not timer.due()
    timer.job_finished(30.0)
    assert timer.seconds_left() == 30.0
    now[0] = 129.9
    assert not timer.due()
    now[0] = 130.0
    assert timer.due()
    timer.job_started()  # a new job cancels the pending unload
    assert not timer.due() and timer.seconds_left() is None
    timer.job_finished(0.0)
    assert timer.due()
    timer.job_finished(NEVER)
    now[0] = 1e9
    assert not timer.due()


def test_status_reports_tier_limits_plan_and_gpu():
    source = StaticSource([gpu(16, used_gib=3)])
    mm = MemoryManager(source=source, env={"ACESTEP_KEEP_ALIVE": "2m"})
    source.set_used(0, int(5 * GIB))
    status = mm.get_status()
    assert status["tier"] == "tier6a" and status["device"] == "cuda:0"
    assert status["gpu"]["used_bytes"] == 5 * GIB  # live, not the figure at start
    assert status["limits"]["max_batch"] == 8 and status["limits"]["origin"]["max_batch"] == "tier6a"
    assert status["plan"]["idle"]["vae"] == "cpu" and status["plan"]["idle"]["dit"] == "gpu"
    assert status["keep_alive"]["default_seconds"] == 120.0
    assert status["worker"] is None and status["residency"] is None
    json.dumps(status)  # plain data, ready for /v1/memory
    assert "tier tier6a" in mm.banner()


def test_get_memory_manager_is_one_instance_built_from_the_environment(monkeypatch):
    from acestep.memory import manager as module

    monkeypatch.setenv("ACESTEP_DEVICE", "cpu")
    monkeypatch.setenv("ACESTEP_MAX_BATCH_SIZE", "3")
    old = module.set_memory_manager(None)
    try:
        first = get_memory_manager()
        assert first is get_memory_manager()
        assert first.get_status()["tier"] == "cpu" and first.limits.max_batch == 3
    finally:
        module.set_memory_manager(old)


def test_planning_never_imports_torch():
    """The server side (manager, dispatcher, process runner) must not even import torch."""
    code = (
        "import sys, json\n"
        "from acestep.memory.gpus import StaticSource, GpuInfo\n"
        "from acestep.memory.manager import MemoryManager\n"
        "import acestep.worker.dispatcher, acestep.worker.process, acestep.memory_manager\n"
        "from acestep import GenerationRequest\n"
        "m = MemoryManager(StaticSource([GpuInfo(0, 'x', 8 * 2**30, 0)]), env={})\n"
        "m.validate(GenerationRequest(audio_duration=10, batch_size=1))\n"
        "json.dumps(m.get_status())\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_non_finite_keep_alive_is_refused():
    for value in ("nan", float("nan"), "inf", float("-inf")):
        with pytest.raises(KeepAliveError, match="finite"):
            parse_keep_alive(value)
    with pytest.raises(ValueError, match="finite"):
        GenerationRequest(keep_alive="nan")


def test_messages_say_what_decides_the_length():
    codes = "".join(f"<|audio_code_{i}|>" for i in range(150))  # 30 s at 5 Hz
    with pytest.raises(MemoryLimitError, match=r"the audio codes \(150 at 5 Hz\) is 30.0 s"):
        manager(6, ACESTEP_MAX_DURATION="20").validate(
            GenerationRequest(audio_code_string=codes, batch_size=1)
        )
    with pytest.raises(
        MemoryLimitError, match=r"the default duration \(no audio_duration given\) is 120.0 s"
    ):
        manager(6, ACESTEP_MAX_DURATION="20").validate(GenerationRequest(batch_size=1))


def test_oom_advice_suggests_only_what_is_not_already_on():
    from acestep.worker.runner import oom_advice

    assert "ACESTEP_OFFLOAD_TO_CPU=true" in oom_advice(manager(40).limits)
    tier5 = oom_advice(manager(14.5).limits)
    assert "ACESTEP_OFFLOAD_TO_CPU" not in tier5 and "ACESTEP_OFFLOAD_DIT_TO_CPU=true" in tier5
    tier1 = oom_advice(manager(4).limits)
    assert "OFFLOAD" not in tier1 and "shorter audio_duration" in tier1


def test_worker_sees_the_chosen_gpu_by_uuid_and_nvml_honours_visibility(monkeypatch):
    from acestep.memory.gpus import _visible_filter

    gpus = [
        GpuInfo(0, "a", 16 * GIB, 9 * GIB, uuid="GPU-aaa"),
        GpuInfo(3, "b", 16 * GIB, 1 * GIB, uuid="GPU-bbb"),
    ]
    mm = MemoryManager(source=StaticSource(gpus), env={})
    assert mm.gpu.index == 3 and mm.worker_env()["CUDA_VISIBLE_DEVICES"] == "GPU-bbb"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-aa")
    visible = _visible_filter()
    assert visible(3, "GPU-zzz") and visible(0, "GPU-aaa") and not visible(1, "GPU-ccc")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _visible_filter() is None

"""The deployment files: Dockerfile lint, compose validity, and each target's env file and
constraints agreeing with the package's extras and the memory manager's policy.

The image build itself needs a Docker engine and runs in docker/smoke.sh (see docs/deployment.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from acestep.checkpoints.download import KNOWN_MODELS
from acestep.memory.gpus import GpuInfo, StaticSource
from acestep.memory.limits import MemoryLimitError
from acestep.memory.manager import MemoryManager
from acestep.memory.tiers import lm_size_of
from acestep.request import GenerationRequest
from acestep.settings import parse_bool_setting

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
TARGETS = ("t4", "4090", "spark")
CLEAN_PATH = "/usr/bin:/bin:/usr/local/bin"
BIN = Path(sys.executable).parent
GIB = 2**30
# The GPU each target is built for, as NVML reports it: (name, total bytes, compute capability).
TARGET_GPUS = {
    "t4": ("Tesla T4", 15360 * 2**20, (7, 5)),
    "4090": ("NVIDIA GeForce RTX 4090", 24564 * 2**20, (8, 9)),
    "spark": ("NVIDIA GB10", 119 * GIB, (12, 1)),
}

sys.path.insert(0, str(DOCKER))
from target_requirements import target_requirements  # noqa: E402


def read_env(target: str) -> dict[str, str]:
    env = {}
    for line in (DOCKER / "env" / f"{target}.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def pins(target: str) -> dict[str, str]:
    out = {}
    for line in (DOCKER / "constraints" / f"{target}.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{target}.txt: {line!r} is not an exact pin"
            out[canonicalize_name(name)] = version.strip()
    return out


def requirements(target: str) -> list[Requirement]:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(r) for r in target_requirements(data, target)]


def manager(target: str, **extra) -> MemoryManager:
    name, total, capability = TARGET_GPUS[target]
    env = read_env(target) | extra
    return MemoryManager(StaticSource([GpuInfo(0, name, total, 0, capability)]), env=env)


# -- lint and validity ---------------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean():
    done = subprocess.run([BIN / "hadolint", DOCKER / "Dockerfile"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shell_scripts_are_shellcheck_clean():
    scripts = [*DOCKER.glob("*.sh"), *(ROOT / "scripts").glob("*.sh"), ROOT / ".ci" / "run"]
    done = subprocess.run([BIN / "shellcheck", *scripts], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def compose_config(profile: str) -> dict:
    done = subprocess.run(
        ["docker-compose", "-f", DOCKER / "compose.yaml", "--profile", profile, "config"],
        capture_output=True,
        text=True,
        env={"PATH": CLEAN_PATH},  # no ACESTEP_* from this shell
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def ports(service: dict) -> set[tuple[str, str, str]]:
    """(host address, published, container port); compose v1 prints strings, v2 mappings."""
    out = set()
    for port in service["ports"]:
        if isinstance(port, str):
            host, published, target = port.removesuffix("/tcp").rsplit(":", 2)
            out.add((host, published, target))
        else:
            out.add((port["host_ip"], str(port["published"]), str(port["target"])))
    return out


def volumes(service: dict) -> dict[str, Path]:
    """Container folder name -> host path."""
    out = {}
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        out[Path(target).name] = Path(source)
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_compose_service_per_target(target):
    service = compose_config(target)["services"][f"acestep-{target}"]
    assert service["profiles"] == [target]
    assert service["build"]["args"]["TARGET"] == target
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert Path(service["build"]["context"]) == ROOT
    assert service["restart"] == "unless-stopped"
    expected = {("127.0.0.1", "8501", "8001")}  # the API (with /lego) on every target
    if target != "t4":  # the T4 image has no UI, so no UI port is taken on the shared host
        expected.add(("127.0.0.1", "8500", "7860"))
    assert ports(service) == expected
    assert service["init"] is True
    mounts = volumes(service)
    assert set(mounts) == {"checkpoints", "outputs", "lora_output", "training_data", "cache"}
    assert all(source.parent == ROOT for source in mounts.values())  # upstream's checkpoints/ layout
    (gpu,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"] and gpu["device_ids"] == ["0"]
    environment = service["environment"]
    assert environment["NVIDIA_VISIBLE_DEVICES"] == "0" and environment["ACESTEP_GPU_DEVICE"] == "0"
    # No key by default: the entrypoint allows that only because the ports are on loopback.
    assert environment["ACESTEP_PUBLISH_HOST"] == "127.0.0.1" and not environment["ACESTEP_AUTH"]
    # The env file reaches the container, with compose's own settings on top.
    for name, value in read_env(target).items():
        if name != "ACESTEP_GPU_DEVICE":
            assert environment[name] == value, name
    assert (service.get("platform") == "linux/arm64") == (target == "spark")


def test_compose_cluster_profile_is_redis_two_api_servers_and_a_worker_per_gpu():
    services = {
        name: service
        for name, service in compose_config("cluster")["services"].items()
        if "cluster" in service.get("profiles", [])
    }
    assert set(services) == {"redis", "models", "api-1", "api-2", "worker-0", "worker-1"}
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--appendfsync") + 1] == "always"
    assert volumes(services["redis"])["data"].parent == ROOT
    assert {p for s in ("api-1", "api-2") for p in ports(services[s])} == {
        ("127.0.0.1", "8501", "8001"),
        ("127.0.0.1", "8502", "8001"),
    }
    parts = [services[name] for name in ("models", "api-1", "api-2", "worker-0", "worker-1")]
    for part in parts:  # one queue, one image, the same folders (results and uploads are shared)
        assert part["environment"]["ACESTEP_QUEUE_URL"] == "redis://redis:6379/0"
        assert part["image"] == "acestep:4090"
        # every part: the models, the results, and the training folders a run may land on
        assert set(volumes(part)) == {"checkpoints", "outputs", "cache", "lora_output", "training_data"}
    for name in ("api-1", "api-2", "worker-0", "worker-1"):
        depends = services[name]["depends_on"]
        assert depends["models"]["condition"] == "service_completed_successfully"
    assert "deploy" not in services["api-1"]  # API servers never touch a GPU
    for index in (0, 1):
        worker = services[f"worker-{index}"]
        assert worker["command"] == ["acestep-worker", "--gpu", "0"]  # its only visible GPU
        assert worker["environment"]["NVIDIA_VISIBLE_DEVICES"] == str(index)
        (gpu,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert gpu["device_ids"] == [str(index)]
    assert services["models"]["command"] == ["acestep-download", "--missing"]


def test_compose_gpu_choice_selects_one_device():
    done = subprocess.run(
        ["docker-compose", "-f", DOCKER / "compose.yaml", "--profile", "4090", "config"],
        capture_output=True,
        text=True,
        env={"PATH": CLEAN_PATH, "ACESTEP_GPU_DEVICE": "2", "ACESTEP_PUBLISH_HOST": "0.0.0.0"},
    )
    assert done.returncode == 0, done.stderr
    service = yaml.safe_load(done.stdout)["services"]["acestep-4090"]
    assert service["environment"]["NVIDIA_VISIBLE_DEVICES"] == "2"
    assert service["environment"]["ACESTEP_PUBLISH_HOST"] == "0.0.0.0"  # the entrypoint then needs a key
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["2"]
    assert service["environment"]["ACESTEP_GPU_DEVICE"] == "0"  # the only GPU the container sees
    assert {host for host, _, _ in ports(service)} == {"0.0.0.0"}


# -- constraints agree with the extras ----------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_constraints_pin_exactly_the_targets_requirements(target):
    pinned = pins(target)
    needed = {canonicalize_name(r.name): r for r in requirements(target)}
    assert set(pinned) == set(needed), f"pinned but not needed: {set(pinned) - set(needed)}; " + (
        f"needed but not pinned: {set(needed) - set(pinned)}"
    )
    for name, requirement in needed.items():
        assert requirement.specifier.contains(Version(pinned[name]), prereleases=True), (name, pinned[name])


@pytest.mark.parametrize("target", TARGETS)
def test_torch_is_a_cuda_12_8_build(target):
    torch = Version(pins(target)["torch"])
    assert torch.local == "cu128", "torch must be the CUDA 12.8 build (torch bundles its CUDA libraries)"
    assert "torchaudio" not in pins(target)  # not a dependency: its extension is tied to one torch build
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128" in dockerfile
    assert "ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04" in dockerfile


def test_target_requirements_expand_the_extras():
    t4 = {canonicalize_name(r.name) for r in requirements("t4")}
    full = {canonicalize_name(r.name) for r in requirements("4090")}
    assert {"torch", "diffusers", "fastapi", "uvicorn"} <= t4
    assert not {"gradio", "mcp"} & t4  # the shared T4 runs the API only
    assert {"gradio", "mcp"} <= full
    done = subprocess.run(
        [sys.executable, DOCKER / "target_requirements.py", ROOT / "pyproject.toml", "nope"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "unknown target 'nope'" in done.stderr


# -- env files agree with the package and the memory manager ------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_env_file_needs_only_what_the_target_installs(target):
    env = read_env(target)
    names = {canonicalize_name(r.name) for r in requirements(target)}
    assert env["ACESTEP_SERVE"] in ("ui", "api")
    if env["ACESTEP_SERVE"] == "ui":
        assert "gradio" in names, "the UI needs the ui extra"
    assert (env["ACESTEP_MCP"] == "on") == ("mcp" in names)
    assert env["ACESTEP_CONFIG_PATH"] in KNOWN_MODELS  # the entrypoint can download it
    if parse_bool_setting("ACESTEP_INIT_LLM", env["ACESTEP_INIT_LLM"]):
        # The LM runs on transformers (a core dependency); what the image must be able to fetch
        # is the LM the target names.
        assert env["ACESTEP_LM_MODEL_PATH"] in KNOWN_MODELS, "the entrypoint can download the LM"
        assert env["ACESTEP_LM_MODEL_PATH"] in KNOWN_MODELS
        assert env["ACESTEP_LM_BACKEND"] == "pt"
    documented = (ROOT / "docs" / "deployment.md").read_text()
    for name in env:
        assert name in documented, f"{name} is not explained in docs/deployment.md"


def test_t4_policy(tmp_path):
    """Base model, no LM, fp16-mixed, one component on the GPU, batch 1, nothing held between jobs."""
    mm = manager("t4")
    status = mm.get_status()
    assert status["tier"] == "tier5"
    assert status["precision"] == {
        "dtype": "fp16-mixed",
        "attention": "sdpa",
        "rope": "fp32",
        "fast_dit": "off",
    }
    assert mm.limits.offload_to_cpu and mm.limits.offload_dit_to_cpu and not mm.limits.lm_enabled
    plan = mm.plan.as_dict()
    assert plan["compute"] == "cuda" and plan["one_at_a_time"]
    assert set(plan["idle"].values()) == {"cpu"}  # nothing waits on the GPU between stages
    assert mm.keep_alive.default == 0 and mm.keep_alive.idle_level == "free"
    track = tmp_path / "track.wav"
    sf.write(track, np.zeros((120 * 8000, 1), dtype=np.float32), 8000)  # the header says 120 s
    lego = GenerationRequest(task_type="lego", track_name="drums", src_audio=str(track), batch_size=1)
    assert mm.validate(lego) == 0
    with pytest.raises(MemoryLimitError, match="batch"):
        mm.validate(lego.model_copy(update={"batch_size": 2}))
    with pytest.raises(MemoryLimitError, match="ACESTEP_INIT_LLM"):
        mm.limits.check_lm("acestep-5Hz-lm-1.7B")


@pytest.mark.parametrize("target", ["4090", "spark"])
def test_full_stack_policy(target):
    """Turbo DiT + the 4B LM, all on the GPU, bf16; the Spark frees rather than parks (unified memory)."""
    mm = manager(target)
    env = read_env(target)
    precision = mm.get_status()["precision"]
    assert precision == {"dtype": "bfloat16", "attention": "sdpa", "rope": "fp32", "fast_dit": "off"}
    assert mm.limits.lm_enabled and not mm.limits.offload_to_cpu and not mm.limits.offload_dit_to_cpu
    assert lm_size_of(env["ACESTEP_LM_MODEL_PATH"]) in mm.limits.tier.lm_sizes
    mm.limits.check_lm(env["ACESTEP_LM_MODEL_PATH"])
    mm.validate(GenerationRequest(thinking=True, audio_duration=240, batch_size=2))
    assert mm.keep_alive.idle_level == ("free" if target == "spark" else "park")
    assert mm.keep_alive.default == 30 * 60


def test_dockerfile_layers_dependencies_before_code():
    text = (DOCKER / "Dockerfile").read_text()
    runtime = text[text.index("AS runtime") :]
    assert runtime.index("--requirement") < runtime.index("COPY --from=wheel")
    assert re.search(r"^USER 1000", text, re.MULTILINE), "the server must not run as root"
    assert "HEALTHCHECK" in text and "/health" in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1 :].count("!acestep/") == 1  # only what the image needs

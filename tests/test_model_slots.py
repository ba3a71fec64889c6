"""Model slots (issue 21, item 2; flows 2 and 3; the finding "models look unloaded"), through a real
``acestep-api`` with a worker process on a tiny checkpoints root holding several DiTs:

- slot 1 ``acestep-v15-base``, slot 2 ``acestep-v15-turbo``; ``acestep-v15-sft`` only on disk (on
  demand); ``acestep-v15-broken`` on disk with weights that do not fit (its load fails);
- ``ACESTEP_MAX_LOADED_DITS=1``: a one-DiT tier, where a switch frees the least recently used DiT.

Tests set the state they need first (``/v1/load``), so they hold in any order.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _cluster import BASE, TURBO, two_model_checkpoint
from _redis import RedisServer
from _server import Server
from safetensors.torch import save_file

from acestep.checkpoints.slots import UnknownModel
from acestep.errors import JobErrorKind
from acestep.jobs.failures import FAILURE_STATUS, RefusalCause
from acestep.memory.limits import Limits
from acestep.memory.manager import dit_capacity, dits_to_free
from acestep.request import GenerationRequest

SFT, BROKEN, PARTIAL = "acestep-v15-sft", "acestep-v15-broken", "acestep-v15-partial"
JOB = {"prompt": "slots", "audio_duration": 6, "batch_size": 1}
INVENTORY_FIELDS = {
    "models",
    "default_model",
    "lm_models",
    "loaded_lm_model",
    "llm_initialized",
    "gpus",
    "gpu_mapping",
    "device_map",
}
UNKNOWN = FAILURE_STATUS[RefusalCause.UNKNOWN_MODEL]


def slots_root(root: Path) -> Path:
    """Base and turbo, an SFT copy of the base DiT, and a DiT folder whose weights do not fit."""
    two_model_checkpoint(root)
    shutil.copytree(root / BASE, root / SFT)
    broken = root / BROKEN
    broken.mkdir()
    for name in ("config.json", "silence_latent.pt"):
        shutil.copy(root / BASE / name, broken / name)
    save_file({"unrelated": torch.zeros(1)}, str(broken / "model.safetensors"))
    (root / PARTIAL).mkdir()  # a download that stopped after its config
    shutil.copy(root / BASE / "config.json", root / PARTIAL / "config.json")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = slots_root(tmp_path_factory.mktemp("slots_root"))
    server = Server(
        root,
        tmp_path_factory.mktemp("slots"),
        dit=BASE,
        ACESTEP_CONFIG_PATH2=TURBO,
        ACESTEP_MAX_LOADED_DITS="1",
    )
    yield server
    server.stop()


def models(server: Server) -> dict[str, dict]:
    response = server.get("/v1/models")
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()["data"]["models"]}


def use(server: Server, name: str) -> dict:
    response = server.post(f"/v1/load?config_path={name}")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def run(server: Server, body: dict) -> dict:
    entry = server.wait(server.release(json=body))
    assert entry["status"] == 1, entry
    return entry["items"][0]


def test_finding_models_look_loaded(server):
    """A DAW greys out cover and repaint on ``is_loaded: false``: every served model reads true,
    the one loaded on demand included, and ``residency`` says where its weights are."""
    use(server, BASE)
    entries = models(server)
    assert {BASE, TURBO, SFT} <= set(entries)
    assert all(entry["is_loaded"] for entry in entries.values())
    assert entries[SFT]["residency"] == "unloaded" and entries[SFT]["slot"] is None
    assert entries[BASE]["residency"] == "ready" and entries[BASE]["is_default"]
    assert entries[BASE]["slot"] == 1 and entries[TURBO]["slot"] == 2
    assert "lego" in entries[SFT]["supported_task_types"]
    assert "lego" not in entries[TURBO]["supported_task_types"]
    assert not any(name.startswith("acestep-5Hz-lm-") for name in entries)


def test_inventory_fields_on_models_model_inventory_and_health(server):
    use(server, BASE)
    listed = server.get("/v1/models").json()["data"]
    inventory = server.get("/v1/model_inventory").json()["data"]
    assert set(listed) == INVENTORY_FIELDS and listed == inventory
    assert listed["default_model"] == BASE and listed["lm_models"] == []
    assert listed["llm_initialized"] is False and listed["loaded_lm_model"] is None
    assert listed["gpus"] == [] and listed["gpu_mapping"] is None  # a CPU server
    health = server.client.get("/health").json()["data"]  # open without a key
    assert {"gpus", "gpu_mapping", "device_map", "models_initialized", "loaded_model"} <= set(health)
    assert health["loaded_model"] == BASE
    assert server.client.get("/v1/model_inventory").status_code == 401  # behind the key


def test_flow_3_v1_load_config_path(server):
    """The wrapper's switch: ``POST /v1/load?config_path=<dit>``; ``data.model`` names it, and the
    next job (naming no model) runs on it."""
    use(server, BASE)
    data = use(server, TURBO)
    assert data["model"] == TURBO and data["action"] == "load"
    assert run(server, JOB)["dit_model"] == TURBO
    assert server.get("/v1/models").json()["data"]["default_model"] == TURBO
    body = server.post("/v1/load", json={"config_path": f"/anywhere/checkpoints/{BASE}/"})
    assert body.status_code == 200 and body.json()["data"]["model"] == BASE  # the basename counts
    assert run(server, JOB)["dit_model"] == BASE


def test_a_request_model_loads_on_demand_and_evicts_under_a_one_dit_tier(server):
    use(server, BASE)
    assert run(server, JOB | {"model": SFT})["dit_model"] == SFT  # not in a slot: from the root
    entries = models(server)
    assert entries[SFT]["residency"] == "ready" and entries[BASE]["residency"] == "unloaded"
    reports = server.get("/v1/memory").json()["data"]["last_reports"]
    assert f"model {SFT}; freed {BASE}" in reports[-1]["note"]
    # Upstream's aliases name the same model; one that names none runs on the default.
    assert run(server, JOB | {"dit_model": TURBO})["dit_model"] == TURBO
    assert run(server, JOB | {"modelName": TURBO})["dit_model"] == TURBO
    assert run(server, JOB)["dit_model"] == BASE
    entries = models(server)
    assert [name for name, e in entries.items() if e["residency"] != "unloaded"] == [BASE]


def test_an_unknown_model_is_a_4xx_listing_the_served_names(server):
    for response in (
        server.post("/release_task", json=JOB | {"model": "acestep-v15-nope"}),
        server.post("/v1/load?config_path=acestep-v15-nope"),
        server.post("/v1/init", json={"model": "acestep-v15-nope"}),
    ):
        assert response.status_code == UNKNOWN, response.text
        detail = response.json()["detail"]
        assert "'acestep-v15-nope' is not served here; served models: " in detail
        assert BASE in detail and TURBO in detail and SFT in detail


def test_an_unknown_model_name_is_clipped_in_the_refusal(server):
    """A refusal quotes a long name clipped (the field allows 255 characters; longer is a 400)."""
    response = server.post("/release_task", json=JOB | {"model": "acestep-v15-" + "x" * 240})
    assert response.status_code == UNKNOWN, response.text[:200]
    detail = response.json()["detail"]
    assert "x" * 100 not in detail and "(254 characters)" in detail, detail


def test_a_half_downloaded_model_is_not_served(server):
    """A DiT folder without its weights is not listed, and naming it is the unknown-model 400 on
    every route (never a 500 from a failed resolve)."""
    assert PARTIAL not in models(server)
    for response in (
        server.post("/release_task", json=JOB | {"model": PARTIAL}),
        server.post(f"/v1/load?config_path={PARTIAL}"),
        server.post("/v1/init", json={"model": PARTIAL}),
    ):
        assert response.status_code in (UNKNOWN, FAILURE_STATUS[JobErrorKind.INPUT]), response.text
        assert PARTIAL in response.json()["detail"]


def test_flow_2_v1_unload(server):
    """The wrapper calls ``POST /v1/unload`` after every job: the model is freed, with the same
    report as /unload; after a failed job the job's own error still reaches the client."""
    run(server, JOB)
    freed = server.post("/v1/unload")
    assert freed.status_code == 200, freed.text
    data = freed.json()["data"]
    assert data["action"] == "free" and "exited with code 0" in data["note"]
    memory = server.get("/v1/memory").json()["data"]
    assert memory["worker"]["state"] == "unloaded" and memory["worker"]["pid"] is None
    assert all(entry["residency"] == "unloaded" for entry in models(server).values())
    again = server.post("/unload").json()["data"]
    assert set(again) == set(data) and again["action"] == "free"
    assert server.post("/v1/models/unload", json={"level": "free"}).json()["data"]["action"] == "free"

    failed = server.wait(server.release(json=JOB | {"model": BROKEN}))
    after = server.post("/v1/unload")
    assert after.status_code == 200
    assert failed["status"] == 2 and "the model could not be loaded" in failed["items"][0]["error"]
    assert server.query(failed["task_id"])["error"] == failed["items"][0]["error"]
    use(server, BASE)


def test_v1_init(server):
    use(server, BASE)
    first = server.post("/v1/init", json={})
    assert first.status_code == 200, first.text
    data = first.json()["data"]
    assert data["message"] == "Model initialization completed" and data["slot"] == 1
    assert data["loaded_model"] == BASE and data["llm_initialized"] is False
    assert {entry["name"] for entry in data["models"]} >= {BASE, TURBO, SFT}
    second = server.post("/v1/init", json={"model": SFT, "slot": 2}).json()["data"]
    assert second["slot"] == 2 and second["loaded_model"] == SFT
    entries = models(server)
    assert entries[SFT]["slot"] == 2 and entries[BASE]["is_default"] and entries[TURBO]["slot"] is None
    undeclared = server.post("/v1/init", json={"slot": 3})
    assert undeclared.status_code == 400
    assert "Slot 3 is not available because ACESTEP_CONFIG_PATH3 was not set" in undeclared.json()["detail"]
    assert server.post("/v1/init", json={"slot": 4}).status_code == 400
    no_lm = server.post("/v1/init", json={"init_llm": True})
    assert no_lm.status_code == FAILURE_STATUS[RefusalCause.LM_MISSING]
    assert "LLM init failed" in no_lm.json()["detail"]
    assert server.post("/v1/init", json={"model": TURBO, "slot": 2}).status_code == 200


def test_v1_reinitialize(server):
    use(server, BASE)
    assert server.post("/v1/unload").status_code == 200
    data = server.post("/v1/reinitialize").json()["data"]
    assert data["reloaded"] == ["DiT/VAE/Text Encoder"]
    assert data["message"] == "✅ Service reinitialized\n🔄 Reloaded: DiT/VAE/Text Encoder"
    again = server.post("/v1/reinitialize").json()["data"]
    assert again == again | {"reloaded": [], "message": "✅ Service reinitialized"}


def test_the_memory_manager_decides_how_many_dits_and_which_to_free():
    assert dits_to_free([], BASE, 1) == []
    assert dits_to_free([BASE], BASE, 1) == []
    assert dits_to_free([TURBO, BASE], SFT, 1) == [TURBO, BASE]
    assert dits_to_free([TURBO, BASE], SFT, 2) == [TURBO]  # the least recently used first
    assert dits_to_free([TURBO, BASE], SFT, 3) == []
    assert dit_capacity(Limits.for_gpu(8.0)) == 1  # a tier that offloads: one DiT at a time
    assert dit_capacity(Limits.for_gpu(24.0)) == 1  # a 4090: one DiT beside the LM
    assert dit_capacity(Limits.for_gpu(80.0)) == 3
    assert dit_capacity(Limits.for_gpu(80.0), 2) == 2  # ACESTEP_MAX_LOADED_DITS


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def test_a_cluster_routes_by_the_same_model_names(redis_server, tmp_path):
    """Jobs go to the queue of the model they name; an unknown name is refused with the served
    names; a load that names a model reaches only its workers."""
    from acestep.cluster.control import ClusterControl
    from acestep.cluster.executors import NoopExecutor
    from acestep.cluster.queue import RedisJobQueue
    from acestep.cluster.settings import ClusterSettings
    from acestep.cluster.worker import ClusterWorker

    settings = ClusterSettings(url=redis_server.url, namespace="slots", heartbeat_timeout_s=2)
    queue = RedisJobQueue(settings, tmp_path, TURBO, ["text2music"], "turbo")
    control = ClusterControl(queue)
    workers = [
        ClusterWorker(settings, NoopExecutor(name), tmp_path, f"w-{name}", gpu=str(index))
        for index, name in enumerate((BASE, TURBO))
    ]
    for worker in workers:
        worker.start()
    try:
        request = GenerationRequest(caption="x")
        assert queue.submit(request, model=BASE).model == BASE
        assert queue.submit(request, model=TURBO).model == TURBO
        with pytest.raises(UnknownModel, match=f"served models: {BASE}, {TURBO}"):
            queue.submit(request, model=SFT)
        loaded = control.load(timeout=30, model=BASE)
        assert loaded["model"] == BASE and list(loaded["workers"]) == [workers[0].id]
        with pytest.raises(UnknownModel):
            control.load(timeout=30, model=SFT)
    finally:
        for worker in workers:
            worker.stop()
        queue.close()


def test_two_loaded_dits_share_one_loaded_lm(tmp_path, lm_limits):
    """With room for two DiTs, a job that thinks on the second DiT takes the LM the first one
    loaded instead of loading a second copy; the first keeps an unloaded LM stage."""
    from acestep.testing import make_tiny_lm
    from acestep.worker.runner import EngineSpec, InProcessRunner

    root = two_model_checkpoint(tmp_path / "root")
    make_tiny_lm(root)
    runner = InProcessRunner(EngineSpec(str(root), dit=BASE, device="cpu", max_dits=2), limits=lm_limits)
    job = GenerationRequest(
        caption="one lm",
        lyrics="[verse]\nla",
        thinking=True,
        use_cot_caption=False,
        audio_duration=4.0,
        inference_steps=2,
        seed=5,
        batch_size=1,
        audio_format="wav",
    )
    runner.generate(job, tmp_path / "a", model=BASE)
    first = runner._engines[BASE].lm.model
    assert first is not None
    runner.generate(job, tmp_path / "b", model=TURBO)
    assert list(runner.models()) == [BASE, TURBO]  # both DiTs stay loaded
    assert runner._engines[TURBO].lm.model is first  # handed over, not loaded again
    assert runner._engines[BASE].lm.model is None
    assert runner._engines[BASE].residency.state["lm"].value == "unloaded"
    runner.generate(job, tmp_path / "c", model=BASE)  # and back
    assert runner._engines[BASE].lm.model is first
    assert runner._engines[TURBO].lm.model is None


def test_a_default_model_switch_switches_the_default_steps(tmp_path):
    """Routes that fill in steps for a request naming none (/lego, chat, MCP, the UI) read the
    default model's variant: after /v1/load or /v1/init of slot 1 it is the new model's."""
    from types import SimpleNamespace

    from acestep.checkpoints.layout import resolve
    from acestep.checkpoints.slots import ModelSlots
    from acestep.serving.routes_models import _take

    root = two_model_checkpoint(tmp_path / "root")
    slots = ModelSlots.build(resolve(root, BASE))
    state = SimpleNamespace(
        slots=slots, model_name=BASE, variant=slots.primary.variant, queue=SimpleNamespace()
    )
    _take(state, slots.assign(1, TURBO))
    assert state.model_name == TURBO and state.variant.name == "turbo"
    assert state.variant.default_steps != resolve(root, BASE).variant.default_steps

"""Training on the cluster: a real redis-server, a turbo and a base ``acestep-worker`` sharing the
training and LoRA folders. A run goes to a worker of the model it names, stores its progress
(steps, losses, adapter) in its record, and its adapter serves generation; a stop ends it after its
update with a checkpoint; the REST routes of an API server queue and follow it; and a run whose
worker is killed goes on from its last checkpoint on the next worker of its model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf
from _cluster import BASE, HEARTBEAT_S, TURBO, Worker, cluster_env, two_model_checkpoint, wait_until
from _redis import RedisServer
from _server import Server

from acestep.checkpoints.slots import UnknownModel
from acestep.cluster.queue import RedisJobQueue
from acestep.cluster.routing import choose_training_model
from acestep.cluster.settings import ClusterSettings
from acestep.lora.catalog import scan as scan_loras
from acestep.request import GenerationRequest
from acestep.testing import synthetic_audio
from acestep.training import checkpoint_files
from acestep.training.request import TrainingRequest

TINY = {"lora_rank": 4, "lora_alpha": 8, "gradient_accumulation": 1, "crop_seconds": 2, "warmup_steps": 0}
TURBO_TASKS = ["cover", "repaint", "text2music"]


def _queue(url: str, root: Path, namespace: str = "acestep") -> RedisJobQueue:
    # No repairs thread: the workers' own broker moves a killed worker's message on.
    settings = ClusterSettings(url=url, namespace=namespace, heartbeat_timeout_s=HEARTBEAT_S)
    return RedisJobQueue(settings, root / "results", TURBO, TURBO_TASKS, "turbo", repairs=False)


def _ready(queue: RedisJobQueue, names: set[str]) -> None:
    wait_until(
        lambda: names <= {w["name"] for w in queue.workers() if w["alive"] and w["state"] == "ready"},
        180,
        f"workers {sorted(names)} ready",
        interval=0.3,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_training")
    redis_server = RedisServer(root / "redis")
    checkpoint = two_model_checkpoint(root / "checkpoints")
    training, loras = root / "training", root / "loras"
    songs = training / "songs"
    songs.mkdir(parents=True)
    for i in range(2):
        sf.write(songs / f"song{i}.wav", synthetic_audio(3.0, seed=i), 48000)
    # Every part of the cluster sees the dataset and the two folders at the same paths.
    env = cluster_env(redis_server.url, root) | {
        "ACESTEP_CHECKPOINTS_DIR": str(checkpoint),
        "ACESTEP_TRAINING_DIR": str(training),
        "ACESTEP_LORA_DIR": str(loras),
    }
    workers = [
        Worker(env, root, "w-turbo", "--dit", TURBO, "--gpu", "0"),
        Worker(env, root, "w-base", "--dit", BASE, "--gpu", "1"),
    ]
    queue = _queue(redis_server.url, root)
    try:
        _ready(queue, {"w-turbo", "w-base"})
        yield SimpleNamespace(
            queue=queue,
            redis=redis_server,
            root=root,
            env=env,
            checkpoint=checkpoint,
            songs=songs,
            training=training,
            loras=loras,
        )
    finally:
        queue.close()
        for worker in workers:
            worker.stop()
        redis_server.stop()


def _run(cluster, name: str, **fields) -> TrainingRequest:
    return TrainingRequest(dataset=str(cluster.songs), output_name=name, **(TINY | fields))


def test_a_run_trains_on_a_worker_of_its_model_and_its_progress_is_stored(cluster):
    queue = cluster.queue
    request = _run(cluster, "on-base", train_epochs=2)
    record = queue.submit_training(request, str(cluster.songs), BASE)
    assert (record.kind, record.model) == ("train", BASE)
    stored = queue.get(record.id)
    assert stored.kind == "train" and stored.request == request and stored.dataset == str(cluster.songs)
    assert stored.training is not None  # queued: its first progress; then its worker's reports

    done = queue.wait(record.id, timeout=300)
    assert done.state == "succeeded", done.error
    assert done.worker.startswith("w-base-") and done.result is None  # its outcome is its progress
    progress = done.training
    assert progress.adapter == "on-base" and progress.stage == "done" and not progress.stopped
    assert progress.step == progress.total_steps == 4  # 2 songs x 2 epochs, one update each
    assert [int(step) for step, _ in progress.losses] == [1, 2, 3, 4]
    adapters, problems = scan_loras(cluster.loras)
    assert {"on-base", "on-base-peft"} <= set(adapters) and not problems

    # The worker's engine comes back after the run, and generation uses the new adapter by name.
    song = GenerationRequest(caption="drums", audio_duration=2.0, inference_steps=2, seed=5, lora=["on-base"])
    generated = queue.wait(queue.submit(song, model=BASE).id, timeout=300)
    assert generated.state == "succeeded", generated.error
    assert generated.worker.startswith("w-base-") and generated.kind == "generate"
    assert generated.result.metas["lora"] == [{"name": "on-base", "scale": 1.0}]


def test_a_model_no_worker_serves_is_refused_and_no_model_means_the_default():
    models = {TURBO: {"variant": "turbo", "tasks": TURBO_TASKS}}
    with pytest.raises(UnknownModel, match="'acestep-v15-xl-base' is not served here; served models: "):
        choose_training_model("acestep-v15-xl-base", TURBO, models)
    assert choose_training_model(None, TURBO, models) == TURBO
    assert choose_training_model(TURBO, "other", models) == TURBO


def test_an_unknown_model_is_refused_before_anything_is_queued(cluster):
    before = cluster.queue.stats()["jobs"]["total"]
    with pytest.raises(UnknownModel):
        cluster.queue.submit_training(_run(cluster, "nowhere"), str(cluster.songs), "acestep-v15-xl-base")
    assert cluster.queue.stats()["jobs"]["total"] == before


def test_a_stop_ends_a_running_run_after_its_update_with_a_checkpoint(cluster):
    queue = cluster.queue
    record = queue.submit_training(_run(cluster, "stopped", train_epochs=500), str(cluster.songs), TURBO)

    def training():
        current = queue.get(record.id)
        assert not current.done, current.error
        return current.state == "running" and current.training.step >= 1

    wait_until(training, 300, "the run's first update")
    assert queue.cancel(record.id) == "cancelling"
    done = queue.wait(record.id, timeout=300)
    assert done.state == "succeeded", done.error
    assert done.worker.startswith("w-turbo-")
    progress = done.training
    assert progress.stopped and progress.adapter == "stopped" and progress.step < progress.total_steps
    steps = checkpoint_files.steps(cluster.training / "runs" / "stopped")
    assert steps and steps[-1] == progress.step  # the checkpoint of its last update
    assert "stopped" in scan_loras(cluster.loras)[0]


def test_the_training_routes_of_an_api_server_queue_and_follow_a_run(cluster):
    (cluster.root / "api").mkdir()
    server = Server(cluster.checkpoint, cluster.root / "api", dit=TURBO, **cluster.env, ACESTEP_TRAINING="on")
    try:
        body = {"tensor_dir": "songs", "output_name": "via-rest", "train_epochs": 2, "model": BASE} | TINY
        started = server.post("/v1/training/start", json=body)
        assert started.status_code == 200, started.text
        task_id = started.json()["data"]["task_id"]
        assert started.json()["data"]["tensor_dir"] == str(cluster.songs.resolve())

        def ended() -> dict | None:
            status = server.get("/v1/training/status", params={"task_id": task_id}).json()["data"]
            return status if status["state"] in ("succeeded", "failed") else None

        status = wait_until(ended, 300, "the run to end", interval=0.5)
        assert status["state"] == "succeeded", status["error"]
        assert status["status"] == "Completed" and status["adapter"] == "via-rest"
        assert len(status["loss_history"]) == 4
        assert cluster.queue.get(task_id).worker.startswith("w-base-")
    finally:
        server.stop()


def test_a_run_whose_worker_is_killed_goes_on_from_its_checkpoint(cluster):
    # Its own namespace and worker, so killing it leaves the other tests' workers alone.
    env = cluster.env | {"ACESTEP_QUEUE_NAMESPACE": "resume"}
    queue = _queue(cluster.redis.url, cluster.root, namespace="resume")
    first = Worker(env, cluster.root, "r-first", "--dit", BASE, "--gpu", "2")
    second: Worker | None = None
    try:
        _ready(queue, {"r-first"})
        request = _run(cluster, "resumed", train_epochs=40, save_every_n_steps=2)
        record = queue.submit_training(request, str(cluster.songs), BASE)

        def checkpointed():
            current = queue.get(record.id)
            assert not current.done, current.error
            return current.state == "running" and current.training.checkpoints

        wait_until(checkpointed, 300, "the run's first checkpoint")
        first.kill()
        saved = checkpoint_files.steps(cluster.training / "runs" / "resumed")
        assert saved
        second = Worker(env, cluster.root, "r-second", "--dit", BASE, "--gpu", "3")
        done = queue.wait(record.id, timeout=300 + 3 * HEARTBEAT_S)
        assert done.state == "succeeded", done.error
        assert done.worker.startswith("r-second-") and done.attempts == 2
        progress = done.training
        assert progress.step == progress.total_steps == 80 and not progress.stopped
        assert set(saved) <= set(progress.checkpoints)  # the first worker's checkpoints carried on
        assert [int(step) for step, _ in progress.losses] == list(range(1, 81))
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()
        queue.close()

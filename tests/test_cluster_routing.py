"""Routing, settings and metrics of the cluster (no Redis needed)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from acestep.checkpoints.slots import UnknownModel
from acestep.cluster.routing import RoutingError, choose_model
from acestep.cluster.settings import ClusterConfigError, ClusterSettings, redacted
from acestep.jobs.queue import DurationHistogram
from acestep.serving.metrics import render

BASE_TASKS = ["complete", "cover", "extract", "lego", "repaint", "text2music"]
TURBO_TASKS = ["cover", "repaint", "text2music"]
MODELS = {
    "acestep-v15-turbo": {"variant": "turbo", "tasks": TURBO_TASKS},
    "acestep-v15-base": {"variant": "base", "tasks": BASE_TASKS},
}


def _worker(model: str, state: str = "ready", running: str | None = None, alive: bool = True) -> dict:
    return {
        "id": f"{model}-{state}-{running}",
        "model": model,
        "state": state,
        "running": running,
        "alive": alive,
    }


def test_a_lego_job_goes_to_a_base_model_whatever_the_default():
    model, warnings = choose_model("lego", None, "acestep-v15-turbo", MODELS, [_worker("acestep-v15-turbo")])
    assert model == "acestep-v15-base" and not warnings


def test_a_warm_idle_worker_wins_then_a_warm_busy_one_then_any_live_one_then_the_default():
    default = "acestep-v15-turbo"
    both = {"acestep-v15-base": MODELS["acestep-v15-base"], default: MODELS[default]}
    assert choose_model("text2music", None, default, both, [])[0] == default
    live_base = [_worker("acestep-v15-base", state="unloaded")]
    assert choose_model("text2music", None, default, both, live_base)[0] == "acestep-v15-base"
    warm_turbo = [*live_base, _worker(default, state="ready", running="job-1")]
    assert choose_model("text2music", None, default, both, warm_turbo)[0] == default
    idle_base = [*warm_turbo, _worker("acestep-v15-base", state="ready")]
    assert choose_model("text2music", None, default, both, idle_base)[0] == "acestep-v15-base"
    dead = [_worker("acestep-v15-base", state="ready", alive=False)]
    assert choose_model("text2music", None, default, both, dead)[0] == default


def test_an_asked_for_model_is_honoured_or_refused_with_the_reason():
    assert (
        choose_model("text2music", "acestep-v15-base", "acestep-v15-turbo", MODELS, [])[0]
        == "acestep-v15-base"
    )
    with pytest.raises(RoutingError, match="cannot run lego; it supports cover, repaint, text2music"):
        choose_model("lego", "acestep-v15-turbo", "acestep-v15-turbo", MODELS, [])
    # A name no worker serves is refused with the served names (issue 21: never a silent fallback).
    with pytest.raises(UnknownModel, match="'acestep-v15-xl-base' is not served here; served models: "):
        choose_model("lego", "acestep-v15-xl-base", "acestep-v15-turbo", MODELS, [])
    with pytest.raises(RoutingError, match="no worker serves a model that can run lego"):
        choose_model(
            "lego", None, "acestep-v15-turbo", {"acestep-v15-turbo": MODELS["acestep-v15-turbo"]}, []
        )


def test_settings_come_from_the_environment_and_bad_ones_are_refused():
    assert ClusterSettings.from_env({}) is None
    settings = ClusterSettings.from_env(
        {"ACESTEP_QUEUE_URL": "redis://:secret@h:6379/1", "ACESTEP_WORKER_HEARTBEAT_TIMEOUT": "10"}
    )
    assert settings.heartbeat_timeout_s == 10 and settings.heartbeat_interval_s == 2.5
    assert redacted(settings.url) == "redis://:***@h:6379/1"
    with pytest.raises(ClusterConfigError, match="must be a Redis URL"):
        ClusterSettings.from_env({"ACESTEP_QUEUE_URL": "amqp://rabbit"})
    with pytest.raises(ValueError, match="at least 2"):
        ClusterSettings.from_env({"ACESTEP_QUEUE_URL": "redis://h", "ACESTEP_WORKER_HEARTBEAT_TIMEOUT": "1"})
    with pytest.raises(ClusterConfigError, match="NAMESPACE"):
        ClusterSettings.from_env({"ACESTEP_QUEUE_URL": "redis://h", "ACESTEP_QUEUE_NAMESPACE": "a b"})


def test_metrics_follow_the_stats():
    histogram = DurationHistogram()
    for seconds in (0.3, 4.0, 4.5, 700.0):
        histogram.add(seconds)
    stats = {
        "jobs": {"queued": 3, "running": 1, "succeeded": 10, "failed": 2},
        "queue_by_model": {"acestep-v15-base": 2, "acestep-v15-turbo": 1},
        "queue_maxsize": 200,
        "durations": histogram.as_dict(),
        "workers": [
            {"id": "h-gpu0-1", "model": "acestep-v15-base", "gpu": "0", "alive": True, "state": "ready",
             "running": "job-9", "vram_used_bytes": 5 * 2**30, "vram_total_bytes": 16 * 2**30},
            {"id": "h-gpu1-2", "model": "acestep-v15-turbo", "gpu": "1", "alive": False, "state": "unloaded",
             "running": None, "vram_used_bytes": None, "vram_total_bytes": None},
        ],
    }  # fmt: skip
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(render(stats).decode())
        for s in family.samples
    }
    assert samples[("acestep_jobs", (("state", "failed"),))] == 2
    assert samples[("acestep_queue_depth", (("model", "acestep-v15-base"),))] == 2
    worker = (("gpu", "0"), ("model", "acestep-v15-base"), ("worker", "h-gpu0-1"))
    assert samples[("acestep_worker_up", worker)] == 1 and samples[("acestep_worker_busy", worker)] == 1
    assert samples[("acestep_worker_vram_used_bytes", worker)] == 5 * 2**30
    assert (
        samples[("acestep_worker_up", (("gpu", "1"), ("model", "acestep-v15-turbo"), ("worker", "h-gpu1-2")))]
        == 0
    )
    assert samples[("acestep_job_duration_seconds_bucket", (("le", "5.0"),))] == 3
    assert samples[("acestep_job_duration_seconds_bucket", (("le", "+Inf"),))] == 4
    assert samples[("acestep_job_duration_seconds_count", ())] == 4


def test_acestep_worker_without_a_queue_or_with_a_bad_one_says_why(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ACESTEP_QUEUE_URL"}
    env["ACESTEP_TMPDIR"] = str(tmp_path)
    code = "from acestep.cli import worker_main; raise SystemExit(worker_main())"

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", code, "--engine", "noop", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)

    missing = run()
    assert missing.returncode == 1 and "set ACESTEP_QUEUE_URL or --queue-url" in missing.stderr
    wrong = run("--queue-url", "http://localhost:6379")
    assert wrong.returncode == 1 and "must be a Redis URL" in wrong.stderr

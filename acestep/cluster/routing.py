"""Which model queue a job goes to: the model asked for, else one whose workers are warm.

Each worker serves one DiT folder and advertises it (name, variant, tasks, residency); the names
are the folder basenames one server uses for its slots (acestep/checkpoints/slots.py). A job with
no ``model`` goes to a model that supports its task, preferring one with an idle worker that has
it loaded, then a loaded busy one, then any live worker, then the server's own default: a lego job
reaches a base-model worker without a reload when one exists, and waits for one when none is up.
A training run goes to the model it names, else to the server's default.
"""

from __future__ import annotations

from acestep.checkpoints.slots import UnknownModel


class RoutingError(ValueError):
    """No model can run this job (a 400 with the reason)."""


def choose_model(
    task: str,
    requested: str | None,
    default: str,
    models: dict[str, dict],
    workers: list[dict],
) -> tuple[str, list[str]]:
    """``models``: name -> {"variant", "tasks"}; ``workers``: adverts with ``alive``. Returns the model
    and warnings for the client. A ``requested`` name no worker has served is ``UnknownModel``."""
    warnings: list[str] = []
    if requested:
        if requested in models:
            if task not in models[requested]["tasks"]:
                raise RoutingError(
                    f"model {requested!r} ({models[requested]['variant']}) cannot run {task}; it supports "
                    f"{', '.join(sorted(models[requested]['tasks']))}"
                )
            return requested, warnings
        raise UnknownModel(requested, sorted(models))  # the same 4xx as one server's (patches/0038)
    candidates = [name for name, info in models.items() if task in info["tasks"]]
    if not candidates:
        served = ", ".join(f"{n} ({i['variant']})" for n, i in sorted(models.items())) or "none"
        raise RoutingError(f"no worker serves a model that can run {task}; models known: {served}")
    live = [w for w in workers if w.get("alive")]

    def rank(name: str) -> tuple:
        mine = [w for w in live if w.get("model") == name]
        ready = [w for w in mine if w.get("state") == "ready"]
        return (
            any(not w.get("running") for w in ready),
            bool(ready),
            bool(mine),
            name == default,
            name,
        )

    return max(candidates, key=rank), warnings


def choose_training_model(requested: str | None, default: str, models: dict[str, dict]) -> str:
    """The model a training run trains for: the one asked for (``UnknownModel`` when no worker has
    served it, as for generation), else the server's default. Never the idlest worker's: the
    adapter only fits the variant it was trained on, so that must not depend on the load."""
    if not requested:
        return default
    if requested not in models:
        raise UnknownModel(requested, sorted(models))
    return requested

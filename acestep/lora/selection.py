"""``LoraSelection``: which adapters a server applies to a request, checked before it is queued.

A request that names its adapters (``lora``, ``lora_scale``) gets exactly those; one that names
none gets the server's default, which ``POST /v1/lora/load`` sets (upstream's sticky LoRA) and
``POST /v1/lora/unload`` clears. The default is written into the queued request, so every job
records the adapters it ran with and reproduces from its own parameters. Torch-free.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from acestep.errors import JobError
from acestep.lora.catalog import LoraError, LoraInfo, find, no_adapters, scan
from acestep.request import MAX_ADAPTERS, GenerationRequest
from acestep.settings import lora_dir


class DefaultFull(LoraError):
    """The default holds as many adapters as a request may name (a 409)."""


class DefaultStore(Protocol):
    """Where the default lives: this process, or Redis for a cluster's API servers."""

    def get(self) -> dict: ...
    def put(self, value: dict) -> None: ...


class MemoryDefault:
    def __init__(self) -> None:
        self._value: dict = {}
        self._lock = threading.Lock()

    def get(self) -> dict:
        with self._lock:
            return dict(self._value)

    def put(self, value: dict) -> None:
        with self._lock:
            self._value = dict(value)


class LoraSelection:
    def __init__(
        self,
        model_tag: str | None,
        directory: str | Path | None = None,
        store: DefaultStore | None = None,
    ):
        """``model_tag``: the served DiT (``base``, ``xl-base``, ...); None leaves the base-model
        check to the worker that runs the job (a cluster serves several models)."""
        self.model_tag = model_tag
        self.directory = Path(directory) if directory is not None else None
        self.store = store or MemoryDefault()
        # Changes to the default read, then write it; one at a time in this process. (Two API
        # servers of a cluster changing it at the same instant may still lose one of the changes.)
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        return self.directory if self.directory is not None else lora_dir()

    def catalog(self) -> dict:
        """``GET /v1/loras``: every adapter with its metadata, and the files that are not usable."""
        found, problems = scan(self.folder)
        default = self.default()
        chosen = {e["name"]: e["scale"] for e in default["adapters"]} if default["enabled"] else {}
        return {
            "directory": str(self.folder),
            "model_variant": self.model_tag,
            "loras": [
                info.as_dict()
                | {
                    "compatible": self.model_tag is None or info.base_variant in (None, self.model_tag),
                    "default_scale": chosen.get(info.name),
                }
                for info in found.values()
            ],
            "problems": problems,
            "default": default,
        }

    def check(self, names: list[str] | tuple[str, ...]) -> list[LoraInfo]:
        """``LoraNotFound`` / ``LoraError`` unless every name is a usable adapter for this model."""
        return find(self.folder, list(names), self.model_tag)

    def admit(
        self, request: GenerationRequest, model_tag: str | None = None
    ) -> tuple[GenerationRequest, list[str]]:
        """The request as it will run on a ``model_tag`` DiT (default: this selection's model): the
        default adapters filled in when it names none, and the notes to pass on. ``LoraError``
        when a named adapter is missing, unusable or made for another model."""
        model_tag = model_tag or self.model_tag
        if request.lora is not None:
            find(self.folder, request.lora, model_tag)
            return request, []
        default = self.default()
        if not default["enabled"] or not default["adapters"]:
            return request, []
        found, _ = scan(self.folder)
        chosen, notes = [], []
        for entry in default["adapters"]:
            name = entry["name"]
            base = found[name].base_variant if name in found else None
            if model_tag is not None and base not in (None, model_tag):
                # A cluster serving several models: the default fits some of them only.
                notes.append(f"default LoRA {name!r} ({base}) not used on this {model_tag} model")
            else:
                chosen.append(entry)
        names = [entry["name"] for entry in chosen]
        try:
            find(self.folder, names, model_tag)
        except LoraError as exc:
            why = f"the server's default LoRA cannot be used ({exc}); POST /v1/lora/unload"
            raise LoraError(why) from None
        # A lora_scale sent without names scales the default adapters (one value, or one each).
        given = "lora_scale" in request.model_fields_set and len(request.lora_scale) in (1, len(names))
        scales = request.lora_scale if given else [entry["scale"] for entry in chosen]
        fields = request.model_dump(exclude_unset=True) | {"lora": names, "lora_scale": scales or [1.0]}
        return GenerationRequest.model_validate(fields), notes  # validated like any request

    # -- the default ------------------------------------------------------------------------

    def default(self) -> dict:
        value = self.store.get()
        return {"adapters": list(value.get("adapters", [])), "enabled": bool(value.get("enabled", True))}

    def set_default(self, name: str, scale: float) -> dict:
        """Add ``name`` at ``scale`` to the default (replacing its scale if it is there), enabled;
        ``LoraError`` when the default already holds as many adapters as a request may name."""
        with self._lock:
            self.room_for(name)
            adapters = [entry for entry in self.default()["adapters"] if entry["name"] != name]
            adapters.append({"name": name, "scale": float(scale)})
            self.store.put({"adapters": adapters, "enabled": True})
            return self.default()

    def room_for(self, name: str) -> None:
        """``DefaultFull`` unless ``name`` can join the default (at most what a request may name)."""
        adapters = [entry["name"] for entry in self.default()["adapters"]]
        if name not in adapters and len(adapters) >= MAX_ADAPTERS:
            raise DefaultFull(
                f"the default already has {len(adapters)} adapters ({', '.join(adapters)}), the most a "
                "request may use; unload one first (POST /v1/lora/unload)"
            )

    def set_scale(self, scale: float, name: str | None = None) -> dict:
        """Upstream's ``/v1/lora/scale``: one default adapter's scale (all of them without a name)."""
        with self._lock:
            current = self.default()
            if name is not None and name not in {entry["name"] for entry in current["adapters"]}:
                raise KeyError(name)
            adapters = [
                entry | {"scale": float(scale)} if name in (None, entry["name"]) else entry
                for entry in current["adapters"]
            ]
            self.store.put({"adapters": adapters, "enabled": current["enabled"]})
            return self.default()

    def set_enabled(self, enabled: bool) -> dict:
        """Upstream's ``/v1/lora/toggle``: keep the default adapters but stop (or resume) using them."""
        with self._lock:
            self.store.put(self.default() | {"enabled": bool(enabled)})
            return self.default()

    def clear_default(self, names: list[str] | None = None) -> dict:
        with self._lock:
            current = self.default()
            adapters = [e for e in current["adapters"] if names is not None and e["name"] not in names]
            self.store.put({"adapters": adapters, "enabled": current["enabled"]})
            return self.default()

    # -- the GPU side, through the memory manager (or a cluster's controls) -------------------

    def load(self, manager, name: str, scale: float) -> dict:
        """Upstream's ``/v1/lora/load``: check ``name`` by its header, load it on the GPU worker(s)
        after the running job, and add it to the default; the measured report and the default.
        ``LoraError`` with the reason when the adapter or a worker refuses."""
        self.check([name])
        self.room_for(name)
        report = _refused_by_all(_on_worker(manager.load_lora, [name]))
        return report | {"default": self.set_default(name, scale)}

    def unload(self, manager, names: list[str] | None = None) -> dict:
        """Remove adapters (all by default) from the GPU worker(s) and from the default."""
        report = _refused_by_all(_on_worker(manager.unload_lora, names))
        return report | {"default": self.clear_default(names)}


def _on_worker(command, names) -> dict:
    """A worker process answers a refusal as an ``input`` job error: the adapter's own error."""
    try:
        return command(names)
    except JobError as exc:
        if exc.kind == "input":
            raise LoraError(str(exc)) from None
        raise


def _refused_by_all(report: dict) -> dict:
    """A cluster's broadcast: workers whose model the adapter does not fit refuse it; only all
    refusing is an error."""
    replies = list((report.get("workers") or {}).values())
    failures = [str(reply.get("error")) for reply in replies if not reply.get("ok")]
    if failures and len(failures) == len(replies):
        raise LoraError("; ".join(failures))
    return report


def resident(status: dict) -> dict | list:
    """The adapters in the model from a memory status: one server's, or per live cluster worker."""
    if status.get("mode") == "cluster":
        return [{"worker": w["id"], "adapters": w.get("adapters")} for w in status["workers"] if w["alive"]]
    return status.get("adapters") or no_adapters()

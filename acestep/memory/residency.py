"""Where each component lives: unloaded, in CPU RAM, or on the GPU, and the plan that decides it.

The plan is data: for every component, where it waits between uses. A component whose idle place
is the CPU is moved to the GPU only while it runs, so the lowest tiers hold one component on the
GPU at a time (upstream's ``offload_to_cpu`` + ``offload_dit_to_cpu``). A *streamed* component is
never moved whole: it waits in CPU RAM and runs a block at a time (``memory/streaming.py``), for
one that does not fit the GPU at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from acestep.memory.limits import Limits

# The components a memory plan talks about, in the order a generation first uses them.
COMPONENTS = ("lm", "text_encoder", "vae", "condition_encoder", "dit")

# What residency reports name: the components, and LoRA adapters (which live inside the DiT).
REPORTED = (*COMPONENTS, "lora")

# Engine modules behind each component (the LM is attached when a request first needs it).
MODULES: dict[str, tuple[str, ...]] = {
    "lm": ("lm",),
    "text_encoder": ("text_encoder",),
    "vae": ("vae",),
    "condition_encoder": ("condition_encoder", "audio_tokenizer", "audio_token_detokenizer"),
    "dit": ("transformer",),
}

# The components that can be streamed: one module whose blocks are a top-level ``ModuleList``
# (the DiT's ``layers``, the Qwen3 text encoder's ``layers``).
STREAMABLE = ("dit", "text_encoder")


class Place(str, Enum):  # noqa: UP042 (str() of a member stays "Place.X", as before)
    UNLOADED = "unloaded"
    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True)
class ResidencyPlan:
    """Where each component waits between uses; ``compute`` is the device that runs them.

    ``streamed`` components run by group offload: they wait on the CPU (whatever ``idle`` says)
    and while in use only a block or two of them is on the compute device."""

    compute: str  # "cuda", "cuda:0", "mps" or "cpu"
    idle: dict[str, Place]
    streamed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name in self.streamed if name not in STREAMABLE]
        if unknown:
            raise ValueError(f"cannot stream {', '.join(unknown)}: only {', '.join(STREAMABLE)} can be")
        if any(self.idle.get(name) is not Place.CPU for name in self.streamed):
            object.__setattr__(self, "idle", self.idle | dict.fromkeys(self.streamed, Place.CPU))

    @property
    def on_gpu(self) -> bool:
        return self.compute != "cpu"

    @property
    def one_at_a_time(self) -> bool:
        """Only the running component is on the GPU (the low-VRAM plan)."""
        return self.on_gpu and all(place is Place.CPU for place in self.idle.values())

    def as_dict(self) -> dict:
        return {
            "compute": self.compute,
            "idle": {name: place.value for name, place in self.idle.items()},
            "one_at_a_time": self.one_at_a_time,
            "streamed": list(self.streamed),
        }


def plan_for(limits: Limits, compute: str) -> ResidencyPlan:
    """The plan a tier's (possibly overridden) offload settings imply."""
    if compute == "cpu":
        return ResidencyPlan("cpu", dict.fromkeys(COMPONENTS, Place.CPU))
    light = Place.CPU if limits.offload_to_cpu else Place.GPU
    heavy = Place.CPU if limits.offload_dit_to_cpu else Place.GPU
    idle = {"lm": light, "text_encoder": light, "vae": light, "condition_encoder": heavy, "dit": heavy}
    return ResidencyPlan(compute, idle, ("dit",) if limits.stream_dit else ())


def tightened(plan: ResidencyPlan | None, limits: Limits, compute: str) -> ResidencyPlan:
    """``plan`` (default: the one ``limits`` imply) with every component those limits keep on the
    CPU or stream moved there: a plan made for a 2B DiT does not keep an XL DiT resident where
    it does not fit (``acestep/memory/fit.py`` decides the limits)."""
    required = plan_for(limits, compute)
    if plan is None:
        return required
    if not plan.on_gpu:
        return plan
    idle = {
        name: Place.CPU if required.idle[name] is Place.CPU else place for name, place in plan.idle.items()
    }
    streamed = tuple(name for name in STREAMABLE if name in (*plan.streamed, *required.streamed))
    return ResidencyPlan(plan.compute, idle, streamed)


def resident_plan(compute: str) -> ResidencyPlan:
    """Everything stays on the compute device (no offload)."""
    place = Place.CPU if compute == "cpu" else Place.GPU
    return ResidencyPlan(compute, dict.fromkeys(COMPONENTS, place))


class Residency:
    """Moves a loaded engine's modules according to a plan. One job at a time uses it."""

    def __init__(self, modules: dict, plan: ResidencyPlan):
        import torch

        self._torch = torch
        self.modules = modules  # engine module name -> nn.Module
        self.plan = plan
        self.compute = torch.device(plan.compute)
        # Pinned host buffers for the GPU <-> RAM moves (see memory/transfer.py).
        from acestep.memory.transfer import HostCopies, pinning_enabled  # torch: not at planning time

        self.host = HostCopies(pin=True) if self.compute.type == "cuda" and pinning_enabled() else None
        self.streams: dict = {}  # engine module name -> StreamedModule, for streamed components
        self.state: dict[str, Place] = {name: self._observe(name) for name in COMPONENTS}

    def _observe(self, component: str) -> Place:
        for name in MODULES[component]:
            module = self.modules.get(name)
            if module is not None:
                param = next(module.parameters(), None)
                on_cpu = param is None or param.device.type == "cpu"
                return Place.CPU if on_cpu else Place.GPU
        return Place.UNLOADED

    def _move(self, component: str, place: Place) -> None:
        if component in self.plan.streamed:
            self._place_streamed(component)  # never moved whole: its hooks move it a block at a time
            return
        if self.state[component] in (place, Place.UNLOADED):
            return
        device = self.compute if place is Place.GPU else self._torch.device("cpu")
        if place is Place.GPU:
            # Recorded first: a move that fails half way (out of memory) leaves some weights on
            # the GPU, and recovery must still see the component there to move it back.
            self.state[component] = place
        for name in MODULES[component]:
            module = self.modules.get(name)
            if module is None:
                continue
            if self.host is None:
                self._torch.nn.Module.to(module, device=device)
            elif place is Place.GPU:
                self.host.to_device(module, device)
            else:
                self.host.to_host(name, module)
        self.state[component] = place

    def _place_streamed(self, component: str) -> None:
        """A streamed component at rest: in CPU RAM, with current hooks (installed at the first
        call, re-installed when its parameters changed or a forward left a block on the GPU)."""
        from acestep.memory.streaming import StreamedModule

        for name in MODULES[component]:
            module = self.modules.get(name)
            if module is None:
                continue
            stream = self.streams.get(name)
            if stream is not None and stream.module is not module:  # another module under this name
                stream.remove()
                stream = None
            if stream is None:
                self._torch.nn.Module.to(module, device="cpu")  # the hooks pin what is in RAM
                self.streams[name] = StreamedModule(module, self.plan.compute)
            elif not stream.rest():
                stream.refresh()
            self.state[component] = Place.CPU

    def _drop_streams(self, names: tuple[str, ...]) -> None:
        for name in names:
            stream = self.streams.pop(name, None)
            if stream is not None:
                stream.remove()

    def attach(self, component: str, module) -> None:
        """Add a module loaded after start-up (the LM) and put it where the plan keeps it."""
        (name,) = MODULES[component]
        self.modules[name] = module
        self.state[component] = self._observe(component)
        self._move(component, self.plan.idle[component] if self.plan.on_gpu else Place.CPU)

    def detach(self, component: str) -> None:
        """Forget a module loaded after start-up (the LM), handed to another engine."""
        (name,) = MODULES[component]
        self._drop_streams((name,))
        self.modules.pop(name, None)
        self.state[component] = Place.UNLOADED

    def release(self) -> None:
        """Take every streaming hook off (an engine being freed): the hooks and their pinned
        host copies go with the modules, and the modules are plain ones again, in CPU RAM."""
        self._drop_streams(tuple(self.streams))

    def settle(self) -> None:
        """Put every loaded component where the plan keeps it between jobs (after load or wake)."""
        for component in COMPONENTS:
            self._move(component, self.plan.idle[component] if self.plan.on_gpu else Place.CPU)

    @contextlib.contextmanager
    def use(self, *components: str) -> Iterator[None]:
        """Bring ``components`` to the compute device for the duration of the block (a streamed
        one: its hooks current; it comes a block at a time as it runs, and goes back after)."""
        moving = components if self.plan.on_gpu else tuple(c for c in components if c in self.plan.streamed)
        if not moving:
            yield
            return
        try:
            for component in moving:
                self._move(component, Place.GPU)
            yield
        finally:
            offloaded = False
            for component in moving:
                if self.plan.idle[component] is Place.CPU:
                    self._move(component, Place.CPU)
                    offloaded = True
            if offloaded and self.compute.type == "cuda":
                self._torch.cuda.empty_cache()

    def park(self) -> None:
        """Every component to CPU RAM (a fast wake: no disk read, no re-initialisation)."""
        for component in COMPONENTS:
            self._move(component, Place.CPU)

    def as_dict(self) -> dict[str, str]:
        return {name: place.value for name, place in self.state.items()}

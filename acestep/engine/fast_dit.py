"""The opt-in fast DiT path: compiled transformer blocks, and CUDA graphs of the whole step.

``ACESTEP_DIT_FAST``:
- ``off`` (default): eager, as diffusers' modules run.
- ``compile``: ``torch.compile`` of each transformer block (regional compilation: the 24 blocks
  share one compiled graph, so compiling costs one block, not the model).
- ``graphs``: ``compile`` plus one CUDA graph per input shape for the whole DiT forward, replayed
  every step (the launch overhead of ~700 kernels per step disappears). Only while the DiT stays
  on the GPU between steps; the graphs are dropped whenever its weights move.

A streamed DiT (group offload, ``memory/streaming.py``) runs eager whatever the mode: its hooks
move every block's weights during the forward, which compiled graphs and CUDA graphs cannot follow.

Every compilation and capture runs under :func:`acestep.memory.capture.guarded_capture`: the CPU and
CUDA RNG states are restored afterwards whatever happened, and a failure logs once and leaves the
process eager, so a broken compiler or capture costs speed, never a job. The denoise loop draws no
random numbers, so the fast path changes no seed's audio beyond the documented tolerance
(``docs/performance.md``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import torch
from loguru import logger

from acestep.memory.capture import guarded_capture
from acestep.memory.precision import FAST_MODES, fast_mode
from acestep.memory.streaming import is_streamed
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value

__all__ = ["FAST_MODES", "CompiledModules", "DitRunner", "compiled_decoder", "fast_mode"]

T = TypeVar("T")

# Input shapes kept: (batch, frames) and the prompt's token count (cross-attention has no mask,
# so the condition cannot be padded to a common length). All graphs share one memory pool: they
# replay one at a time and each output is cloned at once, so the pool is one forward's worth.
MAX_GRAPHS = 8
_INPUTS = ("hidden_states", "timestep", "timestep_r", "encoder_hidden_states", "context_latents")


class CompiledModules:
    """``nn.Module.compile`` in place on some modules, guarded.

    The first call compiles (inside :func:`guarded_capture`: RNG states restored whatever
    happens); a later recompile that fails (a new shape) is caught too. After any failure the
    modules go back to their plain forwards for the life of the process.
    """

    def __init__(self, name: str, modules: list[torch.nn.Module], dynamic: bool | None, backend: str | None):
        self.name = name
        self.modules = modules
        self.dynamic = dynamic
        # ACESTEP_DIT_COMPILE_BACKEND: inductor (default) needs Triton on CUDA, a C++ compiler on CPU.
        self.backend = backend or setting_value(current_settings(), "ACESTEP_DIT_COMPILE_BACKEND")
        self.compiled = False
        self.failed = False

    def run(self, call: Callable[[], T]) -> T:
        """``call()``, through the compiled modules unless compiling failed."""
        if self.failed:
            return call()
        if not self.compiled:

            def compile_and_call() -> T:
                for module in self.modules:
                    module.compile(backend=self.backend, fullgraph=False, dynamic=self.dynamic)
                return call()

            result = guarded_capture(self.name, compile_and_call)
            if result is None:
                self.fall_back()
                return call()
            self.compiled = True
            return result
        try:
            return call()
        except torch._dynamo.exc.TorchDynamoException as exc:
            logger.warning(f"{self.name}: recompile failed ({type(exc).__name__}: {exc}); running eager")
            self.fall_back()
            return call()

    def fall_back(self) -> None:
        self.failed = True
        self.compiled = False
        for module in self.modules:
            module._compiled_call_impl = None  # nn.Module.compile's handle: back to the plain forward


class _Graph:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: dict[str, torch.Tensor], output: torch.Tensor):
        self.graph, self.inputs, self.output = graph, inputs, output


class DitRunner:
    """Calls the transformer like diffusers does (``return_dict=False`` -> a tuple), fast if asked."""

    def __init__(self, transformer: torch.nn.Module, mode: str = "off", backend: str | None = None):
        if mode not in FAST_MODES:
            raise ValueError(f"fast DiT mode must be one of {', '.join(FAST_MODES)}, got {mode!r}")
        self.transformer = transformer
        self.mode = mode
        # dynamic=None: the first length compiles static; a second length compiles one dynamic
        # graph for all later ones, so new durations do not each recompile.
        blocks = list(getattr(transformer, "layers", []))
        self.blocks = CompiledModules("DiT compile", blocks, dynamic=None, backend=backend)
        self.graph_failed = False
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool = None  # a torch.cuda.graph_pool_handle, made at the first capture
        self.graphs_allowed = True  # the engine clears this when the DiT waits on the CPU
        self.refused = ""  # why the fast path is not used although asked for (a streamed DiT)

    @property
    def backend(self) -> str:
        return self.blocks.backend

    @property
    def compiled(self) -> bool:
        return self.blocks.compiled

    @property
    def broken(self) -> bool:
        """A compile or capture failed: eager for the life of the process."""
        return self.blocks.failed or self.graph_failed

    @property
    def active(self) -> str:
        """The path actually in use: ``off`` after a failure or a refusal."""
        return "off" if self.broken or self._refuse() else self.mode

    def _refuse(self) -> bool:
        """Refuse the fast path for a streamed DiT (said once; compiled blocks back to eager)."""
        if self.refused or self.mode == "off":
            return bool(self.refused)
        if not is_streamed(self.transformer):
            return False
        self.refused = "the DiT is streamed (group offload moves its weights during the forward)"
        logger.info(f"fast DiT {self.mode} refused: {self.refused}; running eager")
        self.reset()
        for module in self.blocks.modules:
            module._compiled_call_impl = None  # nn.Module.compile's handle: back to the plain forward
        return True

    def reset(self) -> None:
        """Forget captured graphs and their pool (the weights moved, or memory is being given back)."""
        self._graphs.clear()
        self._pool = None

    def __call__(self, **inputs) -> tuple[torch.Tensor]:
        inputs.pop("return_dict", None)
        if self.active == "off":
            return self._eager(inputs)
        replay = self.active == "graphs" and self.graphs_allowed and inputs["hidden_states"].is_cuda
        if replay and self.blocks.compiled:
            return (self._replay(inputs),)
        # The first call compiles the blocks; graphs are captured from the next one on.
        return self.blocks.run(lambda: self._eager(inputs))

    def _eager(self, inputs: dict) -> tuple[torch.Tensor]:
        return self.transformer(**inputs, return_dict=False)

    def _fall_back(self) -> None:
        self.graph_failed = True
        self.reset()
        self.blocks.fall_back()

    def _replay(self, inputs: dict) -> torch.Tensor:
        key = tuple((name, tuple(inputs[name].shape), inputs[name].dtype) for name in _INPUTS)
        entry = self._graphs.get(key)
        if entry is None:
            entry = guarded_capture("DiT CUDA graph", lambda: self._capture(inputs))
            if entry is None:
                self._fall_back()
                return self._eager(inputs)[0]
            self._graphs[key] = entry
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        for name in _INPUTS:
            entry.inputs[name].copy_(inputs[name])
        entry.graph.replay()
        return entry.output.clone()

    def _capture(self, inputs: dict) -> _Graph:
        static = {name: inputs[name].clone() for name in _INPUTS}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the main stream, as capture requires
            self.transformer(**static, return_dict=False)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.transformer(**static, return_dict=False)[0]
        logger.info(f"DiT CUDA graph captured for {tuple(static['hidden_states'].shape)}")
        return _Graph(graph, static, output)


def compiled_decoder(vae: torch.nn.Module, backend: str | None = None) -> CompiledModules:
    """The VAE decoder compiled in place: its Snake activations fuse into single kernels.
    Dynamic lengths: the last tile of every duration differs, and one graph serves them all."""
    return CompiledModules("VAE decoder compile", [vae.decoder], dynamic=True, backend=backend)

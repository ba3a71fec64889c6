"""The opt-in fast DiT path: compiled transformer blocks, and CUDA graphs of the whole step.

``ACESTEP_DIT_FAST``:
- ``off`` (default): eager, as diffusers' modules run.
- ``compile``: ``torch.compile`` of each transformer block (regional compilation: the 24 blocks
  share one compiled graph, so compiling costs one block, not the model).
- ``graphs``: ``compile`` plus one CUDA graph per input shape for the whole DiT forward, replayed
  every step (the launch overhead of ~700 kernels per step disappears). Only while the DiT stays
  on the GPU between steps; the graphs are dropped whenever its weights move.

Every compilation and capture runs under :func:`acestep.lm.capture.guarded_capture`: the CPU and
CUDA RNG states are restored afterwards whatever happened, and a failure logs once and leaves the
process eager, so a broken compiler or capture costs speed, never a job. The denoise loop draws no
random numbers, so the fast path changes no seed's audio beyond the documented tolerance
(``docs/performance.md``).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
from loguru import logger

from acestep.lm.capture import guarded_capture
from acestep.memory.precision import FAST_MODES, fast_mode

__all__ = ["FAST_MODES", "DitRunner", "fast_mode"]

# Input shapes kept: (batch, frames) and the prompt's token count (cross-attention has no mask,
# so the condition cannot be padded to a common length). All graphs share one memory pool: they
# replay one at a time and each output is cloned at once, so the pool is one forward's worth.
MAX_GRAPHS = 8
_INPUTS = ("hidden_states", "timestep", "timestep_r", "encoder_hidden_states", "context_latents")


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
        # ACESTEP_DIT_COMPILE_BACKEND: inductor (default) needs Triton on CUDA, a C++ compiler on CPU.
        self.backend = backend or os.environ.get("ACESTEP_DIT_COMPILE_BACKEND") or "inductor"
        self.compiled = False
        self.broken = False  # a compile or capture failed: eager for the life of the process
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool = None  # a torch.cuda.graph_pool_handle, made at the first capture
        self.graphs_allowed = True  # the engine clears this when the DiT waits on the CPU

    @property
    def active(self) -> str:
        """The path actually in use: ``off`` after a failure."""
        return "off" if self.broken else self.mode

    def reset(self) -> None:
        """Forget captured graphs and their pool (the weights moved, or memory is being given back)."""
        self._graphs.clear()
        self._pool = None

    def __call__(self, **inputs) -> tuple[torch.Tensor]:
        inputs.pop("return_dict", None)
        if self.active == "off":
            return self._eager(inputs)
        if not self.compiled and not self._compile_and_check(inputs):
            return self._eager(inputs)
        try:
            if self.active == "graphs" and self.graphs_allowed and inputs["hidden_states"].is_cuda:
                return (self._replay(inputs),)
            return self._eager(inputs)
        except torch._dynamo.exc.TorchDynamoException as exc:  # a recompile for a new shape failed
            logger.warning(f"DiT recompile failed ({type(exc).__name__}: {exc}); running eager")
            self._fall_back()
            return self._eager(inputs)

    def _eager(self, inputs: dict) -> tuple[torch.Tensor]:
        return self.transformer(**inputs, return_dict=False)

    def _blocks(self) -> list[torch.nn.Module]:
        return list(getattr(self.transformer, "layers", []))

    def _compile_and_check(self, inputs: dict) -> bool:
        """Compile the blocks and run them once (the compilation itself), guarded."""

        def compile_and_run():
            for block in self._blocks():
                # dynamic=None: the first length compiles static; a second length compiles one
                # dynamic graph for all later ones, so new durations do not each recompile.
                block.compile(backend=self.backend, fullgraph=False, dynamic=None)
            return self.transformer(**inputs, return_dict=False)

        result = guarded_capture("DiT compile", compile_and_run)
        if result is None:
            self._fall_back()
            return False
        self.compiled = True
        return True

    def _fall_back(self) -> None:
        self.broken = True
        self.reset()
        for block in self._blocks():
            block._compiled_call_impl = None  # nn.Module.compile's handle: back to the plain forward

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


class FastDecoder:
    """The VAE decoder compiled in place (its Snake activations fuse into single kernels), the
    first decode guarded like the DiT's; eager for good after any failure."""

    def __init__(self, vae: torch.nn.Module, enabled: bool, backend: str | None = None):
        self.decoder = vae.decoder
        self.enabled = enabled
        self.backend = backend or os.environ.get("ACESTEP_DIT_COMPILE_BACKEND") or "inductor"
        self.compiled = False

    def run(self, decode):
        """``decode()`` through the compiled decoder when enabled; its result."""
        if not self.enabled:
            return decode()
        if not self.compiled:

            def compile_and_run():
                # Dynamic lengths: the last tile of every duration differs, one graph serves all.
                self.decoder.compile(backend=self.backend, dynamic=True)
                return decode()

            result = guarded_capture("VAE decoder compile", compile_and_run)
            if result is not None:
                self.compiled = True
                return result
            self._fall_back()
            return decode()
        try:
            return decode()
        except torch._dynamo.exc.TorchDynamoException as exc:
            logger.warning(f"VAE decoder recompile failed ({type(exc).__name__}: {exc}); running eager")
            self._fall_back()
            return decode()

    def _fall_back(self) -> None:
        self.enabled = False
        self.decoder._compiled_call_impl = None

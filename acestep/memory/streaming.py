"""Streamed (group) offload: a component too large for the GPU runs one block at a time.

diffusers' group offloading hooks (``diffusers.hooks.apply_group_offloading``, block level) make
every block of the module's top-level ``ModuleList`` a group; the rest of the module (embeddings,
norms, projections) is one more group. A group's weights are on the compute device only while
it runs: on CUDA, the next block is copied from pinned RAM on a side stream while the current
one computes, and after a block ran its parameters point back at their pinned host copies. At
rest the whole module is in CPU RAM, so parking it is free and the hooks stay valid.

The hooks hold references to the module's tensors (the pinned copies are keyed by parameter):
whatever adds or removes parameters (a LoKr adapter; PEFT's own load and unload re-apply the
hooks themselves) must be followed by :meth:`StreamedModule.refresh` before the next forward.

torch and diffusers are imported inside the functions: plans are made without them. The private
diffusers names used here (hook names, the re-apply helper) are those of the pinned 0.42 line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# One block per group: diffusers' stream prefetch supports only this, and it keeps the fewest
# weights on the GPU (the block that runs and the one being prefetched).
BLOCKS_PER_GROUP = 1

# diffusers' names for the hooks group offloading registers (hooks/group_offloading.py).
_HOOK_NAMES = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def is_streamed(module: Any) -> bool:
    """Group offloading hooks are installed on ``module`` or one of its submodules."""
    return any(hook is not None for hook in _group_hooks(module))


def _group_hooks(module: Any) -> Iterator[Any]:
    for submodule in module.modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        if registry is not None:
            yield registry.get_hook(_HOOK_NAMES[0])


def _tensors(module: Any) -> list[Any]:
    return [*module.parameters(), *module.buffers()]


class StreamedModule:
    """One module run by group offload onto ``compute``; its weights wait in CPU RAM."""

    def __init__(self, module: Any, compute: str):
        import torch

        self.module = module
        self.compute = torch.device(compute)
        self._known: tuple[int, ...] = ()
        self._install()

    @property
    def uses_stream(self) -> bool:
        """Copies on a side CUDA stream from pinned RAM (elsewhere: plain synchronous moves)."""
        return self.compute.type == "cuda"

    def _install(self) -> None:
        from diffusers.hooks import apply_group_offloading

        stream = self.uses_stream
        apply_group_offloading(
            self.module,
            onload_device=self.compute,
            offload_device="cpu",
            offload_type="block_level",
            num_blocks_per_group=BLOCKS_PER_GROUP,
            # A copy on the side stream must not block the compute stream; record_stream lets the
            # allocator reuse a block's GPU memory only after the compute stream is done with it.
            non_blocking=stream,
            use_stream=stream,
            record_stream=stream,
            # Pinned once, at install: every later step copies by DMA with no pinning on the way.
            low_cpu_mem_usage=False,
        )
        self._known = self._fingerprint()

    def _fingerprint(self) -> tuple[int, ...]:
        return tuple(id(tensor) for tensor in _tensors(self.module))

    def refresh(self) -> bool:
        """Re-install the hooks when the module's parameters changed since (an adapter attached
        or removed); returns whether it did. Cheap when nothing changed: one pass over the
        parameter list."""
        if self._fingerprint() == self._known:
            return False
        self.remove()
        self._install()
        return True

    def rest(self) -> bool:
        """Every weight back in CPU RAM, with fresh hooks, after a forward that did not finish
        (a block left on the GPU, a half-traced prefetch order); returns whether it had to."""
        import torch

        if all(tensor.device.type == "cpu" for tensor in _tensors(self.module)):
            return False
        if self.compute.type == "cuda":
            torch.cuda.synchronize(self.compute)  # copies in flight land before their targets move
        for group in self._groups():
            group.offload_()  # the hooks know each tensor's pinned host copy
        self.remove()
        self._install()
        return True

    def _groups(self) -> list[Any]:
        groups: dict[int, Any] = {}
        for hook in _group_hooks(self.module):
            if hook is not None:
                groups.setdefault(id(hook.group), hook.group)
        return list(groups.values())

    def remove(self) -> None:
        """Take the hooks off; the weights stay where they are (in CPU RAM at rest)."""
        from diffusers.hooks import HookRegistry

        registry = HookRegistry.check_if_exists_or_initialize(self.module)
        for name in _HOOK_NAMES:
            registry.remove_hook(name, recurse=True)
        self._known = ()

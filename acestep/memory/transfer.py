"""Moving weights between the GPU and CPU RAM through reusable pinned (page-locked) host buffers.

A plain ``module.to("cpu")`` allocates pageable memory on every park and copies synchronously
through a staging buffer; back to the GPU it copies synchronously again. Pinned buffers, kept per
tensor and reused on every later park, let both directions run as DMA at full PCIe speed
(``non_blocking``), with one synchronise per module. The cost: the host copy stays allocated
while the weights are on the GPU (the RAM a park needs anyway). ``ACESTEP_PIN_MEMORY=0`` turns
it off (plain copies).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from acestep.settings import FALSE_WORDS
from acestep.settings import current as current_settings


def pinning_enabled(env=None) -> bool:
    env = current_settings() if env is None else env
    return (env.get("ACESTEP_PIN_MEMORY") or "").strip().lower() not in FALSE_WORDS  # on unless switched off


class HostCopies:
    """Host buffers for one engine's modules, keyed by module name and tensor order."""

    def __init__(self, pin: bool = True):
        self.pin = pin
        self.buffers: dict[str, list[torch.Tensor]] = {}

    def to_host(self, name: str, module: torch.nn.Module) -> None:
        """Every parameter and buffer of ``module`` into its host buffer (allocated once)."""
        slots = self.buffers.setdefault(name, [])
        index = 0

        def copy_out(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal index
            if is_traceable_wrapper_subclass(tensor):
                # A quantized weight (torchao): a copy into a plain buffer would drop its scales.
                return tensor.to("cpu")
            if any(tensor.data_ptr() == slot.data_ptr() for slot in slots[:index]):
                return tensor  # a tied weight, already moved under its first name
            if index == len(slots):
                slots.append(torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.pin))
            host = slots[index]
            if host.shape != tensor.shape or host.dtype != tensor.dtype:  # the module changed
                host = slots[index] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.pin)
            index += 1
            return host.copy_(tensor, non_blocking=self.pin)

        module._apply(copy_out)
        if self.pin and torch.cuda.is_available():
            torch.cuda.synchronize()  # the device copies must land before the GPU memory is reused

    def to_device(self, module: torch.nn.Module, device: torch.device) -> None:
        """Back to ``device``; asynchronous from pinned buffers, then one synchronise."""
        module._apply(lambda tensor: tensor.to(device, non_blocking=self.pin))
        if self.pin and device.type == "cuda":
            torch.cuda.synchronize(device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for slots in self.buffers.values() for t in slots)

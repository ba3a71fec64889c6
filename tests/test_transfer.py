"""Park/wake through reusable host buffers: values kept, buffers reused, tied weights stay tied."""

from __future__ import annotations

import pytest
import torch

from acestep.memory.transfer import HostCopies, pinning_enabled


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # one tensor under two names
        self.register_buffer("scale", torch.tensor([2.0]))


def _elsewhere(module: torch.nn.Module) -> None:
    """Give every tensor fresh storage, as a move to the GPU does (the host slots stay apart)."""
    module._apply(lambda t: t.clone())


@pytest.mark.parametrize("pin", [False, True])
def test_host_buffers_are_allocated_once_and_keep_the_values(pin):
    if pin and not torch.cuda.is_available():
        pytest.skip("pinned memory needs CUDA")
    torch.manual_seed(0)
    module = Tied()
    if pin:
        module.cuda()
    values = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    copies = HostCopies(pin=pin)
    copies.to_host("m", module)
    slots = copies.buffers["m"]
    assert len(slots) == 2  # the tied weight once, plus the buffer
    assert module.head.weight is module.embed.weight
    assert module.embed.weight.data_ptr() == slots[0].data_ptr()  # the weight lives in its slot
    first = [slot.data_ptr() for slot in slots]
    for round_trip in range(2):
        if pin:
            copies.to_device(module, torch.device("cuda"))
            assert module.embed.weight.is_cuda
        else:
            _elsewhere(module)
        assert module.embed.weight.data_ptr() != first[0]
        with torch.no_grad():
            module.scale.add_(round_trip)  # a change made while "on the device" must come back
        copies.to_host("m", module)
        assert [slot.data_ptr() for slot in copies.buffers["m"]] == first  # reused, not reallocated
    assert copies.nbytes() == (10 * 4 + 1) * 4
    assert torch.equal(module.embed.weight.detach(), values["embed.weight"])
    assert module.scale.item() == 3.0  # 2 + 0 + 1
    assert all(slot.is_pinned() == pin for slot in copies.buffers["m"])


def test_a_changed_module_gets_new_slots():
    module = Tied()
    copies = HostCopies(pin=False)
    copies.to_host("m", module)
    module.embed = torch.nn.Embedding(12, 4)
    module.head.weight = module.embed.weight
    _elsewhere(module)
    copies.to_host("m", module)
    assert copies.buffers["m"][0].shape == (12, 4)


def test_the_setting():
    assert pinning_enabled({})
    assert not pinning_enabled({"ACESTEP_PIN_MEMORY": "0"})
    assert not pinning_enabled({"ACESTEP_PIN_MEMORY": "off"})

"""Streamed (group) offload as a residency mode: the plan names streamed components; Residency
installs diffusers' group offloading hooks on them instead of moving them whole. On the CPU the
hooks run but nothing moves (onload and offload are both the CPU), so audio must not change by a
byte; the GPU memory saving is checked on CUDA only."""

from __future__ import annotations

import copy
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from acestep import AceStep
from acestep.engine.fast_dit import DitRunner
from acestep.engine.quantize import inner_tensors, int8_layout
from acestep.memory.residency import COMPONENTS, Place, Residency, ResidencyPlan, resident_plan
from acestep.memory.streaming import BLOCKS_PER_GROUP, StreamedModule, is_streamed
from acestep.request import GenerationRequest
from acestep.testing import make_tiny_lokr, make_tiny_lora

CPU_STREAMED = ResidencyPlan("cpu", dict.fromkeys(COMPONENTS, Place.CPU), streamed=("dit", "text_encoder"))
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Blocks(torch.nn.Module):
    """The shape group offloading streams: a top-level ModuleList of blocks, plus layers around it."""

    def __init__(self, width: int = 16, depth: int = 3):
        super().__init__()
        self.proj_in = torch.nn.Linear(8, width)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.proj_out = torch.nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.proj_out(x)


def _blocks(seed: int = 0, **kwargs) -> Blocks:
    torch.manual_seed(seed)
    return Blocks(**kwargs).eval()


# -- the plan ----------------------------------------------------------------------------------


def test_a_streamed_component_waits_on_the_cpu_and_the_plan_shows_it():
    assert resident_plan("cuda").streamed == () and resident_plan("cuda").as_dict()["streamed"] == []
    plan = ResidencyPlan("cuda", dict.fromkeys(COMPONENTS, Place.GPU), streamed=("dit",))
    assert plan.idle["dit"] is Place.CPU and plan.idle["vae"] is Place.GPU
    assert plan.as_dict()["streamed"] == ["dit"]
    with pytest.raises(ValueError, match="cannot stream vae"):
        ResidencyPlan("cuda", dict.fromkeys(COMPONENTS, Place.CPU), streamed=("vae",))


# -- the streaming layer on a tiny module -------------------------------------------------------


def test_hooks_run_the_same_forward_and_come_off_cleanly():
    module, x = _blocks(), torch.randn(2, 8)
    with torch.no_grad():
        expected = module(x)
        stream = StreamedModule(module, "cpu")
        assert BLOCKS_PER_GROUP == 1 and is_streamed(module) and not stream.uses_stream
        hooked = {m._diffusers_hook.get_hook("group_offloading").group for m in module.layers}
        assert len(hooked) == len(module.layers)  # one group per block
        assert torch.equal(module(x), expected)
        assert not stream.rest() and not stream.refresh()  # at rest, nothing changed
        stream.remove()
        assert not is_streamed(module) and torch.equal(module(x), expected)


def test_new_parameters_reinstall_the_hooks():
    module, x = _blocks(), torch.randn(2, 8)
    stream = StreamedModule(module, "cpu")
    before = module.layers[0]._diffusers_hook.get_hook("group_offloading").group
    module.layers[0].register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))  # like an adapter
    assert stream.refresh()
    group = module.layers[0]._diffusers_hook.get_hook("group_offloading").group
    assert group is not before and any(p is module.layers[0].extra for p in group.modules[0].parameters())
    with torch.no_grad():
        assert torch.equal(module(x), _blocks()(x))


def test_residency_streams_instead_of_moving_and_parks_and_releases():
    module, x = _blocks(), torch.randn(2, 8)
    expected = module(x).detach()
    residency = Residency({"transformer": module}, CPU_STREAMED)
    residency.settle()
    assert is_streamed(module) and residency.as_dict()["dit"] == "cpu"
    stream = residency.streams["transformer"]
    with torch.no_grad(), residency.use("dit"):
        assert torch.equal(module(x), expected)
    residency.park()
    residency.settle()
    assert residency.streams["transformer"] is stream and is_streamed(module)
    with torch.no_grad(), residency.use("dit"):
        assert torch.equal(module(x), expected)
    residency.release()
    assert not is_streamed(module) and residency.streams == {}
    assert torch.equal(module(x), expected)


def test_a_freed_engines_streamed_module_is_collected():
    """Hooks and module refer to each other: freeing needs the gc pass the unload path runs."""
    module = _blocks()
    residency = Residency({"transformer": module}, CPU_STREAMED)
    residency.settle()
    gone = weakref.ref(module)
    del module, residency
    gc.collect()
    assert gone() is None


def test_int8_weights_stream_and_keep_their_subclass():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    module, x = _blocks().to(torch.bfloat16), torch.randn(2, 8, dtype=torch.bfloat16)
    quantize_(module, Int8WeightOnlyConfig())
    kind = type(module.layers[0].weight)
    with torch.no_grad():
        expected = module(x)
        stream = StreamedModule(module, "cpu")
        assert torch.equal(module(x), expected) and type(module.layers[0].weight) is kind
        stream.remove()
        assert torch.equal(module(x), expected)


@pytest.mark.skipif(int8_layout() != "Int8Tensor", reason="diffusers restores torchao 0.16+'s Int8Tensor")
def test_int8_weights_survive_the_swaps_of_the_stream_path():
    """On CUDA, diffusers moves a torchao weight with ``swap_tensors`` (onload) and puts its pinned
    host copy's inner tensors back (offload); here both with distinct CPU copies."""
    from diffusers.hooks.group_offloading import _restore_torchao_tensor, _swap_torchao_tensor
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    module, x = _blocks().to(torch.bfloat16), torch.randn(2, 8, dtype=torch.bfloat16)
    quantize_(module, Int8WeightOnlyConfig())
    weight = module.layers[1].weight
    with torch.no_grad():
        expected = module(x)
        host = copy.deepcopy(weight.detach())
        _swap_torchao_tensor(weight, copy.deepcopy(host))  # "onload": a fresh copy swapped in
        assert module.layers[1].weight is weight and torch.equal(module(x), expected)
        _restore_torchao_tensor(weight, host)  # "offload": back to the host copy's tensors
        restored, kept = inner_tensors(weight)[0], inner_tensors(host)[0]
        assert restored.data_ptr() == kept.data_ptr() and torch.equal(module(x), expected)


def test_the_fast_path_is_refused_for_a_streamed_dit(caplog):
    module = _blocks()
    runner = DitRunner(module, "compile")
    assert runner.active == "compile" and not runner.refused
    StreamedModule(module, "cpu")
    assert runner.active == "off" and "streamed" in runner.refused and not runner.broken


# -- a whole engine on the CPU ------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream_adapters")
    make_tiny_lora(folder / "drums", layout="diffusers", variant="base", rank=4, alpha=8, seed=1)
    make_tiny_lokr(folder / "kr", variant="base", dim=4, seed=1)
    return folder


def _engine(checkpoint, adapter_dir, plan=None, **kwargs) -> AceStep:
    engine = AceStep.from_pretrained(checkpoint, device="cpu", plan=plan, **kwargs)
    engine.adapters.directory = adapter_dir
    return engine


@pytest.fixture(scope="module")
def plain(diffusers_base, adapter_dir):
    return _engine(diffusers_base, adapter_dir)


@pytest.fixture(scope="module")
def streamed(diffusers_base, adapter_dir):
    return _engine(diffusers_base, adapter_dir, CPU_STREAMED)


def audio(engine: AceStep, tmp_path: Path, lora=None) -> np.ndarray:
    request = GenerationRequest(
        caption="tight drums",
        audio_duration=3.0,
        seed=7,
        batch_size=1,
        inference_steps=2,
        audio_format="wav32",
        lora=lora,
    )
    result = engine.generate(request, tmp_path / f"job{len(list(tmp_path.iterdir()))}")
    return sf.read(result.items[0].path, dtype="float32")[0]


@pytest.fixture(scope="module")
def reference(plain, tmp_path_factory) -> np.ndarray:
    return audio(plain, tmp_path_factory.mktemp("reference"))


def test_a_streamed_engine_gives_the_same_audio(plain, streamed, reference, tmp_path):
    assert is_streamed(streamed.components.transformer) and is_streamed(streamed.components.text_encoder)
    assert not is_streamed(plain.components.transformer)
    assert np.array_equal(audio(streamed, tmp_path), reference)
    streamed.park()
    streamed.wake()
    assert is_streamed(streamed.components.transformer) and streamed.placement()["dit"] == "cpu"
    assert np.array_equal(audio(streamed, tmp_path), reference)


@pytest.mark.parametrize("lora", ["drums", "kr"])
def test_adapters_run_inside_a_streamed_dit(plain, streamed, reference, tmp_path, lora):
    try:
        with_adapter = audio(streamed, tmp_path, lora)
        assert np.array_equal(with_adapter, audio(plain, tmp_path, lora))
        assert not np.array_equal(with_adapter, reference)
    finally:
        plain.adapters.unload()
        streamed.adapters.unload()
    assert np.array_equal(audio(streamed, tmp_path), reference)  # the hooks follow the unload too


def test_an_int8_dit_streams_to_the_same_audio(diffusers_base, adapter_dir, tmp_path, monkeypatch):
    from acestep.memory.quantization import QuantizationPlan

    # The reference quantizes and writes the cache; the streamed engine reads it: same audio.
    monkeypatch.setenv("ACESTEP_QUANTIZE_CACHE", str(tmp_path / "quantized"))
    int8 = QuantizationPlan(dit="int8")
    reference = _engine(diffusers_base, adapter_dir, quantization=int8)
    if int8_layout() == "Int8Tensor":  # the layout torchao's safetensors support can save
        assert list((tmp_path / "quantized").glob("*.dit.*.safetensors")), "the reference wrote no entry"
    engine = _engine(diffusers_base, adapter_dir, CPU_STREAMED, quantization=int8)
    assert np.array_equal(audio(engine, tmp_path), audio(reference, tmp_path))


# -- on a GPU -----------------------------------------------------------------------------------


@cuda_only
def test_streaming_keeps_only_a_few_blocks_on_the_gpu():
    module = _blocks(width=1024, depth=8).half()
    x = torch.randn(4, 8, dtype=torch.half)
    whole = sum(p.numel() * p.element_size() for p in module.parameters())
    with torch.no_grad():
        expected = copy.deepcopy(module).cuda()(x.cuda()).cpu()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        stream = StreamedModule(module, "cuda")
        assert stream.uses_stream
        for _ in range(2):  # the first forward traces the block order; the second prefetches
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = module(x.cuda())
            torch.cuda.synchronize()
            assert torch.cuda.max_memory_allocated() - base < whole / 2
            assert torch.equal(out.cpu(), expected)
            assert all(p.device.type == "cpu" and p.is_pinned() for p in module.parameters())


@cuda_only
def test_a_failed_forward_leaves_nothing_on_the_gpu():
    module, x = _blocks(width=64, depth=4), torch.randn(2, 8)
    expected = module(x).detach()
    stream = StreamedModule(module, "cuda")
    module.layers[2].register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        module(x.cuda())
    module.layers[2]._forward_pre_hooks.clear()
    assert stream.rest()
    assert all(p.device.type == "cpu" for p in module.parameters())
    with torch.no_grad():
        assert torch.allclose(module(x.cuda()).cpu(), expected, atol=1e-5)


@cuda_only
def test_int8_weights_stream_on_the_gpu():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    module, x = _blocks(width=256, depth=4).to(torch.bfloat16), torch.randn(2, 8, dtype=torch.bfloat16)
    quantize_(module, Int8WeightOnlyConfig())
    kind = type(module.layers[0].weight)
    with torch.no_grad():
        expected = copy.deepcopy(module).cuda()(x.cuda()).cpu()
        StreamedModule(module, "cuda")
        for _ in range(2):
            assert torch.equal(module(x.cuda()).cpu(), expected)
            weights = [layer.weight for layer in module.layers]
            assert all(type(w) is kind and inner_tensors(w)[0].device.type == "cpu" for w in weights)

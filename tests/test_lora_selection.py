"""What a server does with a request's adapters before queueing it: the ``lora`` / ``lora_scale``
fields' rules, and ``LoraSelection`` (the default adapters, their cap, and the model check)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from acestep.lora.catalog import LoraError, LoraNotFound
from acestep.lora.selection import DefaultFull, LoraSelection
from acestep.request import GenerationRequest
from acestep.testing import make_tiny_lora


@pytest.mark.parametrize(
    ("fields", "adapters"),
    [
        ({}, ()),
        ({"lora": "drums"}, (("drums", 1.0),)),
        ({"lora": "drums, voice", "lora_scale": "0.5"}, (("drums", 0.5), ("voice", 0.5))),
        ({"loras": ["drums", "voice"], "lora_scales": [0.5, 2]}, (("drums", 0.5), ("voice", 2.0))),
        ({"lora": "none"}, ()),
        ({"lora": "NONE", "lora_scale": 3}, ()),
        ({"lora": "v1.5 drums"}, (("v1.5 drums", 1.0),)),
    ],
)
def test_lora_fields(fields, adapters):
    assert GenerationRequest(**fields).adapters == adapters


def test_empty_and_none_mean_different_things():
    assert GenerationRequest(lora="").lora is None  # an empty form field: no preference
    assert GenerationRequest(lora="none").lora == []  # no adapter, whatever the default


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"lora": "../drums"}, "not paths"),
        ({"lora": "/etc/passwd"}, "not paths"),
        ({"lora": "a,b,a"}, "twice"),
        ({"lora": "a,b,c,d,e"}, "at most 4"),
        ({"lora": "a", "lora_scale": -1}, "between 0 and 4"),
        ({"lora": "a", "lora_scale": "loud"}, "a number"),
        ({"lora": "a,b", "lora_scale": [1, 2, 3]}, "3 values for 2 adapters"),
        ({"lora": {"name": "a"}}, "adapter name"),
    ],
)
def test_bad_lora_fields(fields, needle):
    with pytest.raises(ValidationError, match=needle):
        GenerationRequest(**fields)


@pytest.fixture
def selection(tmp_path):
    for index, name in enumerate(("a", "b", "c", "d", "e")):
        make_tiny_lora(tmp_path / name, variant="base", rank=2, seed=index)
    make_tiny_lora(tmp_path / "fast", variant="turbo", rank=2, seed=9)
    return LoraSelection("base", directory=tmp_path)


def test_the_default_is_written_into_requests_that_name_none(selection):
    plain = GenerationRequest(seed=3)
    assert selection.admit(plain) == (plain, [])
    selection.set_default("a", 0.5)
    admitted, notes = selection.admit(plain)
    assert admitted.adapters == (("a", 0.5),) and notes == []
    assert not admitted.wants_random_seed  # the request's own fields keep their "given" facts
    assert selection.admit(GenerationRequest(lora="none"))[0].adapters == ()
    assert selection.admit(GenerationRequest(lora="b"))[0].adapters == (("b", 1.0),)
    assert selection.admit(GenerationRequest(lora_scale=2))[0].adapters == (("a", 2.0),)
    selection.set_enabled(False)
    assert selection.admit(plain)[0].adapters == ()


def test_the_default_holds_at_most_what_a_request_may_name(selection):
    for name in "abcd":
        selection.set_default(name, 1.0)
    selection.set_default("a", 0.25)  # already there: only its scale changes
    with pytest.raises(DefaultFull, match="unload one first"):
        selection.set_default("e", 1.0)
    admitted, _ = selection.admit(GenerationRequest())
    assert admitted.adapters == (("b", 1.0), ("c", 1.0), ("d", 1.0), ("a", 0.25))
    assert selection.clear_default(["b", "c"])["adapters"] == [
        {"name": "d", "scale": 1.0}, {"name": "a", "scale": 0.25}
    ]  # fmt: skip


def test_adapters_are_checked_against_the_model(selection, tmp_path):
    with pytest.raises(LoraError, match="trained on the turbo DiT; this model is base"):
        selection.admit(GenerationRequest(lora="fast"))
    with pytest.raises(LoraNotFound):
        selection.admit(GenerationRequest(lora="ghost"))
    # A cluster: the default applies where it fits, and the job says where it did not.
    cluster = LoraSelection(None, directory=tmp_path)
    cluster.set_default("fast", 1.0)
    cluster.set_default("a", 1.0)
    on_base, notes = cluster.admit(GenerationRequest(), "base")
    assert on_base.adapters == (("a", 1.0),)
    assert notes == ["default LoRA 'fast' (turbo) not used on this base model"]
    assert cluster.admit(GenerationRequest(), "turbo")[0].adapters == (("fast", 1.0),)
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(LoraError, match="default LoRA cannot be used.*POST /v1/lora/unload"):
        cluster.admit(GenerationRequest(), "base")

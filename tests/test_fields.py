"""The field table (``acestep.fields``): each request field is declared once, and the REST lookup,
the LM options, the ``acestep generate`` flags and the ``/lego`` form are read from it."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Iterator

import pytest
from pydantic import AliasChoices, ValidationError

import acestep.tasks
from acestep import errors, fields, settings
from acestep.fields import table
from acestep.fields.spec import Flag
from acestep.request import GenerationRequest
from acestep.serving import lm_params, params


def _generate_parser() -> argparse.ArgumentParser:
    from acestep.cli import generate

    root = argparse.ArgumentParser(prog="acestep")
    generate._generate_parser(root.add_subparsers())
    return root._subparsers._group_actions[0].choices["generate"]  # type: ignore[union-attr]


def _reload_faces() -> None:
    """Re-derive everything read from the table (the modules hold derived tuples)."""
    for name in (
        "acestep.fields.table",
        "acestep.fields",
        "acestep.serving.params",
        "acestep.serving.lm_params",
        "acestep.cli.lm_options",
        "acestep.cli.generate",
        "acestep.serving.routes_lego",
    ):
        importlib.reload(importlib.import_module(name))


@pytest.fixture
def patch(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A monkeypatch whose changes to the table or tasks are undone, and the derived modules
    re-derived, after the test."""
    yield monkeypatch
    monkeypatch.undo()
    _reload_faces()


def test_every_name_belongs_to_exactly_one_field():
    names = [name for spec in fields.FIELDS for name in spec.names]
    assert len(names) == len(set(names))
    assert set(fields.BY_NAME) == set(names)


def test_every_target_is_a_request_field_and_every_flag_sets_one():
    request_fields = set(GenerationRequest.model_fields)
    for spec in fields.FIELDS:
        assert spec.target is None or spec.target in request_fields, spec.name
        if spec.flag is not None:
            assert spec.target is not None, spec.name


def test_the_requests_own_aliases_are_the_tables():
    """GenerationRequest keeps a few upstream names as pydantic aliases (the library accepts them
    too); each must be a name the table gives the same field."""
    for name, info in GenerationRequest.model_fields.items():
        alias = info.validation_alias
        if alias is None:
            continue
        assert isinstance(alias, AliasChoices)
        spec = next(s for s in fields.FIELDS if s.target == name)
        assert set(alias.choices) <= {*spec.names, name}, name


def test_a_field_added_to_the_table_reaches_rest_cli_and_lm_options(patch):
    new = dataclasses.replace(
        table.LM_KNOBS[0],
        aliases=("lmTemperature", "temperature_of_the_lm"),
        flag=Flag(("--lm-heat",), {"type": float, "default": None, "help": "hotter"}),
    )
    patch.setattr(table, "LM_KNOBS", (new, *table.LM_KNOBS[1:]))
    patch.setattr(table, "FIELDS", (*table.GENERATION, *table.LM_FEATURES, *table.LM_KNOBS))
    importlib.reload(importlib.import_module("acestep.fields"))
    for name in ("acestep.serving.params", "acestep.serving.lm_params", "acestep.cli.lm_options"):
        importlib.reload(importlib.import_module(name))
    rest = importlib.import_module("acestep.serving.params")
    sent = rest.parse_release_params({"param_obj": {"temperature_of_the_lm": "0.5"}, "thinking": True})
    assert sent.lm_options["lm_temperature"] == 0.5
    assert (
        importlib.import_module("acestep.serving.lm_params").lm_fields(sent.lm_options)["lm_temperature"]
        == 0.5
    )
    args = _generate_parser().parse_args(["--lm-heat", "0.25"])
    assert args.lm_temperature == 0.25


def test_a_generation_field_added_to_the_table_gets_a_flag_and_a_rest_alias(patch):
    shift = next(s for s in table.GENERATION if s.name == "shift")
    new = dataclasses.replace(shift, aliases=("timestepShift",))
    patch.setattr(table, "GENERATION", tuple(new if s is shift else s for s in table.GENERATION))
    patch.setattr(table, "FIELDS", (*table.GENERATION, *table.LM_FEATURES, *table.LM_KNOBS))
    importlib.reload(importlib.import_module("acestep.fields"))
    rest = importlib.reload(importlib.import_module("acestep.serving.params"))
    assert rest.parse_release_params({"metas": {"timestepShift": "2.5"}}).fields["shift"] == 2.5
    cli = importlib.reload(importlib.import_module("acestep.cli.generate"))
    assert "shift" in cli.REQUEST_ARGS
    assert _generate_parser().parse_args(["--shift", "4"]).shift == 4.0


def test_the_lego_form_bounds_follow_tasks(patch):
    from acestep.serving import routes_lego

    form = routes_lego.LEGO_FORM
    assert (form["bpm"]["minimum"], form["bpm"]["maximum"]) == (acestep.tasks.MIN_BPM, acestep.tasks.MAX_BPM)
    assert form["batch_size"]["maximum"] == acestep.tasks.MAX_BATCH_SIZE
    patch.setattr(acestep.tasks, "MAX_BATCH_SIZE", 3)
    patch.setattr(acestep.tasks, "MAX_BPM", 240)
    importlib.reload(table)
    importlib.reload(importlib.import_module("acestep.fields"))
    form = importlib.reload(routes_lego).LEGO_FORM
    assert form["batch_size"]["maximum"] == 3
    assert form["bpm"]["maximum"] == 240


def test_the_request_refuses_what_the_table_bounds():
    bpm = fields.BY_NAME["bpm"].bounds
    batch = fields.BY_NAME["batch_size"].bounds
    assert bpm is not None and batch is not None
    GenerationRequest(bpm=bpm[0], batch_size=batch[1])
    with pytest.raises(ValidationError):
        GenerationRequest(bpm=bpm[1] + 1)
    with pytest.raises(ValidationError):
        GenerationRequest(batch_size=batch[1] + 1)


def test_lm_request_fields_are_the_tables():
    assert lm_params.lm_fields({"analysis_only": True, "lm_backend": "pt", "thinking": True}) == {
        "lm_cfg_scale": 2.5,
        "thinking": True,
    }


@pytest.mark.parametrize("word", sorted(settings.TRUE_WORDS | settings.FALSE_WORDS))
def test_one_set_of_true_false_words(word):
    as_setting = settings.parse_bool_setting("X", word.upper())
    as_field = params.parse_release_params({"instrumental": word.upper()}).fields["instrumental"]
    assert as_setting is as_field is (word in settings.TRUE_WORDS)


def test_a_word_outside_the_set_is_refused_by_both():
    with pytest.raises(ValueError):
        settings.parse_bool_setting("X", "maybe")
    with pytest.raises(params.ParamError, match="instrumental must be a boolean"):
        params.parse_release_params({"instrumental": "maybe"})


def test_one_validation_message():
    with pytest.raises(ValidationError) as bad_field:
        GenerationRequest(bpm="fast", batch_size=99)
    message = errors.validation_message(bad_field.value)
    assert message.startswith("bpm: bpm must be a number between 30 and 300")
    assert "; batch_size: " in message and "Value error" not in message
    with pytest.raises(ValidationError) as whole:
        GenerationRequest(task_type="cover")
    assert errors.validation_message(whole.value) == "request: task 'cover' requires src_audio"

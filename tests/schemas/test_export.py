"""The committed JSON Schema files match the models and accept what the models accept."""

from __future__ import annotations

import json

import jsonschema
import pytest

from schemas.export import JSON_DIR, render_schemas
from schemas.messages import MESSAGE_MODELS
from tests.factories import event_dict


def test_committed_schemas_are_current() -> None:
    rendered = render_schemas()
    on_disk = {p.name for p in JSON_DIR.glob("*.schema.json")}
    assert on_disk == set(rendered), "run `fleetpulse schemas export` and commit schemas/json/"
    for name, text in rendered.items():
        assert (JSON_DIR / name).read_text() == text, (
            f"{name} is stale: run `fleetpulse schemas export` and commit it"
        )


@pytest.mark.parametrize("stem", sorted(MESSAGE_MODELS))
def test_schema_files_are_valid_json_schema(stem: str) -> None:
    schema = json.loads((JSON_DIR / f"{stem}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


def _raw_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((JSON_DIR / "raw_metric_event.v1.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_raw_schema_accepts_a_valid_event() -> None:
    assert list(_raw_validator().iter_errors(event_dict())) == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"cpu_usage": 100.5},
        {"memory_usage": -1},
        {"network_rx": -5},
        {"network_tx": "12"},
        {"server_id": "short"},
        {"processes": [{"pid": 1, "name": "x", "cpu_usage": 1, "memory_usage": 1}] * 51},
    ],
)
def test_raw_schema_rejects_what_the_model_rejects(overrides: dict[str, object]) -> None:
    assert list(_raw_validator().iter_errors(event_dict(**overrides))), overrides

"""Writes the JSON Schema of every message model to `schemas/json/`.

Run `fleetpulse schemas export` after changing a model; a test fails while the committed
files differ from the models.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.messages import MESSAGE_MODELS

JSON_DIR = Path(__file__).parent / "json"


def render_schemas() -> dict[str, str]:
    """File name → file text for every message model."""
    out = {}
    for stem, model in MESSAGE_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://fleetpulse.dev/schemas/{stem}.schema.json"
        out[f"{stem}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def export(directory: Path = JSON_DIR) -> list[Path]:
    """Write the schema files and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written

"""Write the JSON Schema of every message into ``schemas/json/`` (``python -m schemas.generate``).

Services in other languages validate what they publish against these files;
``tests/unit/test_messages.py`` fails when they drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel, TypeAdapter

from schemas.messages import ALL_MESSAGE_TYPES, Event

JSON_DIR = Path(__file__).resolve().parent / "json"


def schemas() -> dict[str, dict[str, object]]:
    """File name -> JSON Schema, for every message type and the event union."""
    out: dict[str, dict[str, object]] = {}
    for model in ALL_MESSAGE_TYPES:
        assert issubclass(model, BaseModel)
        out[f"{model.__name__}.json"] = model.model_json_schema(mode="serialization")
    out["Event.json"] = TypeAdapter(Event).json_schema(mode="serialization")
    return out


def render(schema: dict[str, object]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for name, schema in schemas().items():
        (JSON_DIR / name).write_text(render(schema))
        print(f"wrote {JSON_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

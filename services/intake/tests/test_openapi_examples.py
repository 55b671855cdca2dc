"""Issue 9 asks for an OpenAPI document "with examples for every endpoint": each request body (in
every content type a route takes), each successful answer in JSON, XML or HTML, and each path
parameter shows an example, so a portal developer can copy one. Files (photos, PDFs) are bytes and
have none."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from civicsignals.intake.app import create_app
from civicsignals.intake.settings import IntakeSettings

BINARY = re.compile(r"^(image/|application/pdf$)")


def _with_refs(node: Any, schemas: dict[str, Any]) -> str:
    """The node's JSON, with the component schemas it names (examples often sit on the model)."""
    text = json.dumps(node)
    named = set(re.findall(r"#/components/schemas/([\w.-]+)", text))
    return text + "".join(json.dumps(schemas.get(name, {})) for name in sorted(named))


def test_every_operation_shows_examples(tmp_path: Path) -> None:
    document = create_app(IntakeSettings(data_dir=tmp_path)).openapi()
    schemas = document.get("components", {}).get("schemas", {})
    missing = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                if '"example' not in _with_refs(content, schemas):
                    missing.append(f"{where}: request body {media}")
            for status, answer in operation.get("responses", {}).items():
                for media, content in answer.get("content", {}).items():
                    shown = '"example' in _with_refs(content, schemas)
                    if status.startswith("2") and not BINARY.match(media) and not shown:
                        missing.append(f"{where}: {status} {media}")
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and '"example' not in json.dumps(parameter):
                    missing.append(f"{where}: path parameter {parameter['name']}")
    assert not missing, "\n".join(missing)

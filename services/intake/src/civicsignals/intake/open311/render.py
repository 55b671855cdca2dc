"""Open311 documents in XML and JSON, the way the GeoReport v2 specification writes them.

JSON is the "Spark convention" mapping of the XML: a list document (``<services>``,
``<service_requests>``, ``<errors>`` …) is a JSON array of objects, one per child element; a
nested list (``attributes``, ``values``) is an array inside its object. Empty values are an empty
element in XML and ``null`` in JSON; booleans are ``true``/``false`` in both. The XML is built with
the standard library's ElementTree (we only ever write XML, never parse a client's), schemaless and
without a namespace, preceded by the declaration with ``encoding="utf-8"`` as the spec requires.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi.responses import Response

Format = Literal["json", "xml"]

XML_MEDIA_TYPE = "text/xml; charset=utf-8"
JSON_MEDIA_TYPE = "application/json; charset=utf-8"

# A nested list's element name -> the name of each of its items.
_ITEM_NAMES = {"attributes": "attribute", "values": "value"}


def w3_time(value: datetime | None) -> str | None:
    """A W3C date-time in UTC with ``Z``, as the spec's examples write them."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _append(parent: ET.Element, name: str, value: Any) -> None:
    element = ET.SubElement(parent, name)
    if value is None:
        return
    if isinstance(value, list):
        item_name = _ITEM_NAMES.get(name, name.rstrip("s"))
        for item in value:
            _fill(ET.SubElement(element, item_name), item)
        return
    if isinstance(value, dict):
        _fill(element, value)
        return
    element.text = _text(value)


def _fill(element: ET.Element, item: Any) -> None:
    if isinstance(item, dict):
        for key, value in item.items():
            _append(element, key, value)
    else:
        element.text = _text(item)


def to_xml(
    root_name: str, body: list[dict[str, Any]] | dict[str, Any], item_name: str | None = None
) -> bytes:
    root = ET.Element(root_name)
    if isinstance(body, list):
        for item in body:
            _fill(ET.SubElement(root, item_name or root_name.rstrip("s")), item)
    else:
        _fill(root, body)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(
        root, encoding="utf-8", xml_declaration=False
    )


def document(
    fmt: Format,
    root_name: str,
    body: list[dict[str, Any]] | dict[str, Any],
    *,
    item_name: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    if fmt == "xml":
        return Response(
            to_xml(root_name, body, item_name),
            status_code=status_code,
            media_type=XML_MEDIA_TYPE,
            headers=headers,
        )
    return Response(
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
        status_code=status_code,
        media_type=JSON_MEDIA_TYPE,
        headers=headers,
    )


def errors(
    fmt: Format, status_code: int, descriptions: list[str], headers: dict[str, str] | None = None
) -> Response:
    """The spec's error array: one ``{code, description}`` per problem, code = the HTTP status."""
    body = [{"code": status_code, "description": description} for description in descriptions]
    return document(fmt, "errors", body, item_name="error", status_code=status_code, headers=headers)

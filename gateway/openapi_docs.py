"""OpenAPI operations for what Litestar cannot infer from a handler's signature.

* Request bodies of handlers that parse their multipart form themselves (bracket keys,
  string booleans): documented from the same msgspec struct that validates the fields,
  plus the binary file part.
* 200 responses whose body depends on the request: one URL answers JSON, plain text,
  audio bytes or server-sent events according to ``stream``, ``response_format`` or
  ``stream_format``. Litestar documents one media type per status (``application/json``
  with an empty schema for a stream); these list every media type. Their schemas come
  from msgspec, from the structs that encode the wire, and are inlined because Litestar
  rebuilds the components section from its own registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import msgspec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    RequestBody,
    Schema,
)

from .errors import ErrorResponse


def _form_schema(form_type: type[msgspec.Struct], file_field: str = "file") -> Schema:
    (schema,), components = msgspec.json.schema_components([form_type], ref_template="{name}")
    body = components[form_type.__name__]
    properties = {file_field: Schema(type="string", format="binary", description="The audio file.")}
    for name, prop in body.get("properties", {}).items():
        properties[name] = Schema(**_schema_kwargs(prop))
    return Schema(
        type="object",
        properties=properties,
        required=[file_field, *body.get("required", [])],
    )


def _schema_kwargs(prop: dict) -> dict:
    kwargs: dict = {}
    if "anyOf" in prop:
        kwargs["one_of"] = [Schema(**_schema_kwargs(p)) for p in prop["anyOf"]]
    for key in ("type", "enum", "default", "minimum", "maximum", "title", "description"):
        if key in prop:
            kwargs[key] = prop[key]
    if "items" in prop:
        kwargs["items"] = Schema(**_schema_kwargs(prop["items"]))
    return kwargs


#: What a 200 may carry: media type -> a wire type, a tuple of them (any of), or a schema dict.
Content = Mapping[str, Any]

BINARY: dict = {"type": "string", "format": "binary"}
TEXT: dict = {"type": "string"}


def event_stream(*event_types: type[msgspec.Struct], done: bool = False) -> dict:
    """The schema of one server-sent event, as OpenAPI 3.2 models a ``text/event-stream``.

    Each event is an object whose ``data`` is a string of JSON (``contentMediaType``) that
    ``contentSchema`` describes: one of ``event_types``, or the error envelope that ends a
    stream which failed after its 200. With ``done``, the stream ends with ``data: [DONE]``.
    """
    payload = wire_schema(*event_types, ErrorResponse)
    data: dict = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": payload,
    }
    if done:
        data = {"anyOf": [{"const": "[DONE]"}, data]}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": data, "event": {"type": "string"}, "id": {"type": "string"}},
        "description": (
            "Server-sent events, `data:` lines only, each holding one JSON object; a failure"
            ' after the 200 is reported as a final `{"error": ...}` event'
            + (", and the stream ends with `data: [DONE]`." if done else ".")
        ),
    }


def wire_schema(*wire_types: Any) -> dict:
    """msgspec's JSON schema for ``wire_types`` (any of them), references resolved in place.

    The wire structs are not recursive, so inlining terminates. Discriminator mappings
    point at ``$defs`` entries that no longer exist once inlined; the ``type`` property
    of each member (a single-value enum) still tells them apart, so they are dropped.
    """
    if len(wire_types) > 1:
        return {"anyOf": [wire_schema(wire_type) for wire_type in wire_types]}
    (schema,), defs = msgspec.json.schema_components(wire_types, ref_template="{name}")

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"]])
            return {k: resolve(v) for k, v in node.items() if k != "discriminator"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def _media(schema: Any) -> OpenAPIMediaType:
    if isinstance(schema, dict):
        return OpenAPIMediaType(schema=schema)
    return OpenAPIMediaType(
        schema=wire_schema(*(schema if isinstance(schema, tuple) else (schema,)))
    )


def documented_operation(
    *,
    form: type[msgspec.Struct] | None = None,
    file_field: str = "file",
    ok: Content | None = None,
    ok_description: str = "OK",
) -> type[Operation]:
    """An Operation class with a multipart ``form`` body and/or the 200 ``ok`` content."""
    body = _form_schema(form, file_field) if form is not None else None
    ok_content = {media: _media(schema) for media, schema in (ok or {}).items()}

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            if body is not None:
                self.request_body = RequestBody(
                    required=True,
                    content={"multipart/form-data": OpenAPIMediaType(schema=body)},
                )
            if ok_content:
                self.responses = {
                    **(self.responses or {}),
                    "200": OpenAPIResponse(description=ok_description, content=ok_content),
                }

    return DocumentedOperation

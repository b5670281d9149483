"""OpenAPI request bodies for handlers that parse their multipart form themselves.

Transcription handlers read the form by hand (bracket keys, string booleans), so Litestar
cannot infer their request body. This documents it from the same msgspec struct that
validates the fields, plus the binary ``file`` part.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema


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


def multipart_operation(
    form_type: type[msgspec.Struct], file_field: str = "file"
) -> type[Operation]:
    schema = _form_schema(form_type, file_field)

    @dataclass
    class MultipartOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                required=True,
                content={"multipart/form-data": OpenAPIMediaType(schema=schema)},
            )

    return MultipartOperation

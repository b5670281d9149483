"""Validate payloads against schemas of the official OpenAI OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012


def _nullable_to_json_schema(node):
    """The spec says 3.1 but still marks optional values with 3.0's ``nullable: true``,
    which JSON Schema ignores; rewrite it as the 3.1 spelling (a ``null`` alternative)."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_to_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("type"), str) and "enum" not in node:
            node["type"] = [node["type"], "null"]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


class OpenAISpec:
    def __init__(self, document: dict) -> None:
        document = _nullable_to_json_schema(document)
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource("urn:openai", resource)

    @classmethod
    def load(cls, path: Path) -> "OpenAISpec":
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with path.open("rb") as handle:
            return cls(yaml.load(handle, Loader=loader))

    def validate(self, instance: object, schema_name: str) -> None:
        """Raise jsonschema.ValidationError unless ``instance`` matches components/schemas/NAME."""
        if schema_name not in self.document["components"]["schemas"]:
            raise KeyError(f"no schema {schema_name!r} in the OpenAI spec")
        schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        validator.validate(instance)

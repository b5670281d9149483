"""Validate payloads against schemas of the official OpenAI OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012


class OpenAISpec:
    def __init__(self, document: dict) -> None:
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

"""Validators built from the vendors' own OpenAPI documents in `../shared/specs`.

A request body an adapter sent is checked against the schema its vendor documents
for that path and method, with every `$ref` resolved inside the document.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:referloop:spec"


@functools.lru_cache(maxsize=8)
def load_spec(path: Path) -> dict[str, Any]:
    """Read an OpenAPI document (YAML or JSON), once per run."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        loaded: dict[str, Any] = json.loads(text)
        return loaded
    # The documents are large: the C loader, when PyYAML has it, is much faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    parsed: dict[str, Any] = yaml.load(text, loader)
    return parsed


def _registry(spec: dict[str, Any]) -> Registry[Any]:
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def body_validator(
    spec: dict[str, Any],
    path: str,
    method: str,
    media_type: str = "application/json",
) -> Draft202012Validator:
    """A validator for the request body of `method path` in `spec`.

    Raises:
        KeyError: the document has no such operation or media type.
    """
    operation = spec["paths"][path][method.lower()]
    body = operation["requestBody"]
    if "$ref" in body:
        body = _resolve(spec, body["$ref"])
    content = body["content"][media_type]
    pointer = _pointer("paths", path, method.lower(), "requestBody")
    if "$ref" in operation["requestBody"]:
        pointer = operation["requestBody"]["$ref"].lstrip("#/")
    ref = f"{SPEC_URI}#/{pointer}/content/{_pointer(media_type)}/schema"
    assert "schema" in content, f"{method} {path} documents no body schema"
    return Draft202012Validator({"$ref": ref}, registry=_registry(spec))


def schema_validator(spec: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator for `components/schemas/<name>` of `spec`."""
    ref = f"{SPEC_URI}#/components/schemas/{_pointer(name)}"
    return Draft202012Validator({"$ref": ref}, registry=_registry(spec))


def parameter_names(spec: dict[str, Any], path: str, method: str) -> set[str]:
    """The names of the parameters `method path` documents (query, path, header)."""
    operation = spec["paths"][path][method.lower()]
    found = set()
    for parameter in [
        *spec["paths"][path].get("parameters", []),
        *operation.get("parameters", []),
    ]:
        if "$ref" in parameter:
            parameter = _resolve(spec, parameter["$ref"])
        found.add(parameter["name"])
    return found


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
